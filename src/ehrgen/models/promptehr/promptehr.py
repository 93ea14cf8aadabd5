"""PromptEHR, the user-facing model: fit on a cohort, save, load.

Reproduced from the paper (METHOD.md): a BART encoder-decoder over serialised visits,
conditioned on baseline features through prompt embeddings on both sides; trained to
recover the next visit (longitudinal imputation) and a removed modality (cross-modal
imputation) from corrupted context. Where we differ from the reference implementation:
a code-only vocabulary trained from scratch (nothing downloaded); logits restricted by
the grammar of a visit rather than one head per modality; training also learns the
first visit from demographics alone and an end-of-patient target, so that patients can
be generated from scratch with the model deciding their length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import ConfigError
from ehrgen.generation import GenerationConfig
from ehrgen.models.folder import LengthCalibration
from ehrgen.models.promptehr import fitting
from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.models.trained import TrainedGenerator, check_schema, new_seed
from ehrgen.tokens import CodeTokenizer

if TYPE_CHECKING:
    from ehrgen.models.base import CodeScores
    from ehrgen.models.promptehr.modeling import PromptBart
    from ehrgen.models.promptehr.tasks import TaskConfig

__all__ = ["PromptEHR"]

logger = logging.getLogger(__name__)


class PromptEHR(TrainedGenerator):
    """Prompt-conditioned BART for longitudinal, multimodal patient records.

    Fitting, saving, loading and generation from scratch are the shared layer's
    (:class:`~ehrgen.models.trained.TrainedGenerator`); this class adds the network,
    its training examples, scoring and the flexible modes of the paper (continue a
    patient, impute a modality, complete a visit, start from seed patients).

    Args:
        config: the architecture (default :meth:`PromptEHRConfig.small`).
        tasks: the training examples and their corruptions (default
            :class:`~ehrgen.models.promptehr.tasks.TaskConfig`).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> model = PromptEHR(PromptEHRConfig.tiny()).fit(
        ...     demo_cohort(16, seed=0), training=TrainingConfig(epochs=1, batch_size=8)
        ... )
        >>> len(model.generate(3, conditions={"gender": "F"}, seed=0))
        3
    """

    name = "promptehr"
    config_class = PromptEHRConfig
    summary = (
        "A prompt-conditioned BART (ehrgen's PromptEHR) that generates synthetic "
        "longitudinal patient records."
    )
    #: scoring protocols supported (see ``ehrgen.evaluation.perplexity``).
    protocols = ("chain", "set")
    #: DP training needs the one-pass objective (a patient is one training item).
    supports_dp = True

    def __init__(
        self, config: PromptEHRConfig | None = None, tasks: TaskConfig | None = None
    ) -> None:
        from ehrgen.models.promptehr.tasks import TaskConfig

        self.config = config or PromptEHRConfig.small()
        self.tasks = tasks or TaskConfig()
        self._fitted = None

    @property
    def tasks_(self) -> TaskConfig:
        """The training examples' settings (sequence lengths, corruption rates)."""
        return self._check_fitted().state

    # ---- training

    # ---- hooks of the shared layer (ehrgen.models.trained)

    def _initial_state(self, train: Cohort) -> TaskConfig:
        return self.tasks

    def _new_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema, train: Cohort, state: Any
    ) -> tuple[PromptBart, TaskConfig]:
        values = (
            np.stack([train.static[n] for n in schema.numerical], axis=1)
            if schema.numerical
            else np.zeros((len(train), 0), np.float32)
        )
        mean = fitting.nan_stat(np.nanmean, values)
        std = fitting.nan_stat(np.nanstd, values)
        return self._standardised_network(tokenizer, schema, state, mean, std)

    def _new_private_network(self, tokenizer, schema, population, state):
        # The standardisation of numerical features comes from the DP population
        # summary (its quantiles), never from the patients themselves.
        mean, std = fitting.moments_from_quantiles(population, schema)
        return self._standardised_network(tokenizer, schema, state, mean, std)

    def _standardised_network(self, tokenizer, schema, state, mean, std):
        import torch

        model = self._empty_network(tokenizer, schema, state)
        for featurizer in (model.encoder_prompts, model.decoder_prompts):
            featurizer.set_standardisation(torch.as_tensor(mean), torch.as_tensor(std))
        return model, fitting.fit_positions(state, self.config, schema)

    def _patient_batches(self, fitted, train, training):
        return fitting.patient_batches(fitted, train, training)

    def _check_private_training(self) -> None:
        if self.config.objective != "one-pass":
            raise ConfigError(
                "Differentially private training needs PromptEHR's one-pass "
                "objective, where a patient is one training item: use "
                "PromptEHRConfig(objective='one-pass') (ehrgen train switches to it "
                "by itself)."
            )

    def _empty_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema, state: Any
    ) -> PromptBart:
        from ehrgen.models.promptehr.modeling import PromptBart

        return PromptBart(
            self.config,
            tokenizer,
            [len(c) for c in schema.categorical.values()],
            len(schema.numerical),
        )

    def _loaders(self, fitted, train, val, training):
        return fitting.loaders(fitted, train, val, training)

    @classmethod
    def _config_from_dict(cls, data) -> PromptEHRConfig:
        # A config saved without an objective predates the one-pass objective.
        return PromptEHRConfig.from_dict({"objective": "paper", **data})

    @classmethod
    def _state_from_dict(cls, data, tokenizer, schema) -> TaskConfig:
        from ehrgen.models.promptehr.tasks import TaskConfig

        return TaskConfig.from_dict(data)

    def _architecture(self) -> str:
        c = self.config
        return f"d_model {c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers"

    # ---- scoring

    def perplexity(self, cohort: Cohort, batch_size: int = 64) -> float:
        """Teacher-forced perplexity of every target token of ``cohort``: each visit
        given the ones before it (the end-of-patient target included) and each
        modality of each visit given the rest, without corruption. The figure
        training validates on; lpl and mpl per modality live in ``ehrgen.evaluation``.
        """
        import torch
        from torch.utils.data import DataLoader

        from ehrgen.models.promptehr import one_pass
        from ehrgen.models.promptehr import tasks as task_lib

        fitted = self._check_fitted()
        check_schema(cohort, fitted.schema, "PromptEHR.perplexity")
        data = task_lib.TokenizedCohort.from_cohort(cohort, fitted.tokenizer)
        tasks, pad = fitted.state, fitted.tokenizer.pad_id
        if fitted.network.objective == "one-pass":
            dataset = one_pass.PatientDataset(
                data, np.arange(len(data)), tasks, 0, corrupt=False
            )
            collate = one_pass.collate_patients
            batch_size = max(batch_size // 8, 1)  # a patient holds many targets
        else:
            dataset = task_lib.ExampleDataset(
                data, task_lib.validation_slots(data), tasks, 0, 0, corrupt=False
            )
            collate = task_lib.collate
        loader = DataLoader(
            dataset, batch_size=batch_size, collate_fn=lambda b: collate(b, pad)
        )
        loss, tokens = 0.0, 0
        fitted.network.eval()
        with torch.no_grad():
            for batch in loader:
                out = fitted.network(batch)
                loss, tokens = loss + float(out.loss_sum), tokens + int(out.n_tokens)
        return math.exp(loss / max(tokens, 1))

    def score_longitudinal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Log-probability of each true code of visit t >= 2 given visits 1..t-1 and
        the baseline features (for lpl)."""
        from ehrgen.models.promptehr.scoring import score

        return score(self._context(), cohort, "longitudinal", protocol)

    def score_cross_modal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Log-probability of each true code of modality k in visit t given visits
        1..t-1 and visit t's other modalities (for mpl)."""
        from ehrgen.models.promptehr.scoring import score

        return score(self._context(), cohort, "cross_modal", protocol)

    # ---- generation

    def _patients_per_call(self, generation: GenerationConfig) -> int:
        from ehrgen.models.promptehr import synthesis

        return synthesis.patients_per_call(self._context(), generation)

    def _patient_sampler(self, fitted, generation, generator):
        from ehrgen.models.promptehr import synthesis

        ctx = self._context()

        def sample(statics):
            return synthesis.sample_patients(ctx, statics, generation, generator)

        return sample

    def continue_patients(
        self,
        cohort: Cohort,
        n_visits: int,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """Each patient of ``cohort`` with ``n_visits`` more visits (longitudinal
        imputation)."""
        args = (cohort, n_visits)
        return self._mode("continue_patients", args, generation, seed, progress)

    def impute_modality(
        self,
        cohort: Cohort,
        visit_index: int,
        modality: str,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """``modality`` of visit ``visit_index`` (negative counts from the end)
        decoded from the rest of the record (cross-modal imputation)."""
        args = (cohort, visit_index, modality)
        return self._mode("impute_modality", args, generation, seed, progress)

    def complete_visits(
        self,
        cohort: Cohort,
        visit_index: int,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """Visit ``visit_index`` of each patient completed: its codes kept, the rest
        of the visit decoded around them."""
        args = (cohort, visit_index)
        return self._mode("complete_visits", args, generation, seed, progress)

    def generate_from_seeds(
        self,
        cohort: Cohort,
        n_per_seed: int = 1,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """The reference implementation's mode: each real patient's baseline features
        and first visit start ``n_per_seed`` synthetic patients. The output contains
        those real first visits: it leaks much more than :meth:`generate`."""
        args = (cohort, n_per_seed)
        return self._mode("generate_from_seeds", args, generation, seed, progress)

    def _mode(
        self,
        name: str,
        args: tuple[Any, ...],
        generation: GenerationConfig | None,
        seed: int | None,
        progress: Callable[[int], None] | None,
    ) -> Cohort:
        """Run the flexible mode ``name`` of :mod:`.synthesis` with this model."""
        from ehrgen.models.promptehr import synthesis

        run = getattr(synthesis, name)
        generation = self._generation(generation)
        return run(self._context(), *args, generation, new_seed(seed), progress)

    def calibrate_length(
        self,
        cohort: Cohort,
        n_samples: int = 512,
        rounds: int = 2,
        generation: GenerationConfig | None = None,
        seed: int = 0,
        cohort_name: str = "training cohort",
    ) -> PromptEHR:
        """Calibrate when generated patients end, so that their numbers of visits
        follow ``cohort``'s (usually the training cohort, named by ``cohort_name``
        in the model card, ``ehrgen.json`` and evaluation reports).

        A model that has seen one end-of-patient decision per training patient
        often ends patients too early or too late; this learns a bias on the
        ``<eos>`` logit per number of visits so far from ``rounds`` batches of
        ``n_samples`` generated patients. It is kept with the model (saved by
        :meth:`save_pretrained`) and applied by every generation mode unless
        ``GenerationConfig(calibrated_length=False)``. Returns self.
        """
        from ehrgen.models.promptehr import synthesis

        if len(cohort) == 0:
            raise ConfigError("calibrate_length needs a cohort with patients.")
        if self._check_fitted().privacy is not None:
            raise ConfigError(
                "This model was trained with differential privacy; calibrating it on "
                "a cohort's visit counts would release them outside its (ε, δ) "
                "statement. Its patients' lengths are the model's own."
            )
        generation = self._generation(generation)
        ctx = self._context()
        ctx.end_bias = None
        bias = synthesis.calibrate_end(
            ctx, np.diff(cohort.visit_offsets), generation, n_samples, rounds, seed
        )
        self._check_fitted().length_calibration = LengthCalibration(
            tuple(round(float(b), 4) for b in bias), cohort_name, len(cohort)
        )
        return self

    def _context(self):
        from ehrgen.models.promptehr.synthesis import Context

        fitted = self._check_fitted()
        fitted.network.eval()
        calibration = fitted.length_calibration
        return Context(
            fitted.network,
            fitted.tokenizer,
            fitted.population,
            fitted.state.max_source_length,
            None if calibration is None else np.asarray(calibration.end_bias, float),
            fitted.time_values,
        )
