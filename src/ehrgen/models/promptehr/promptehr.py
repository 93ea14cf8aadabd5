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

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import FittedState, check_model_folder_free, load_weights
from ehrgen.models.population import Population
from ehrgen.models.promptehr import fitting
from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.models.promptehr.persistence import (
    Fitted,
    check_versions,
    read_json,
    read_model_files,
    write_model_files,
)
from ehrgen.tokens.tokenizer import CodeTokenizer

if TYPE_CHECKING:
    from ehrgen.models.base import CodeScores
    from ehrgen.models.promptehr.modeling import PromptBart
    from ehrgen.models.promptehr.tasks import TaskConfig
    from ehrgen.training import TrainingConfig

__all__ = ["PromptEHR"]

logger = logging.getLogger(__name__)


class PromptEHR(FittedState):
    """Prompt-conditioned BART for longitudinal, multimodal patient records.

    Args:
        config: the architecture (default :meth:`PromptEHRConfig.small`).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> model = PromptEHR(PromptEHRConfig.tiny()).fit(
        ...     demo_cohort(16, seed=0), training=TrainingConfig(epochs=1, batch_size=8)
        ... )
        >>> model.tokenizer_.vocab_size > 0
        True
    """

    def __init__(self, config: PromptEHRConfig | None = None) -> None:
        self.config = config or PromptEHRConfig.small()
        self._fitted: Fitted | None = None

    # ---- learned state (sklearn-style names ending in _)

    @property
    def schema_(self) -> CohortSchema:
        """The training cohort's schema (modalities, baseline features)."""
        return self._check_fitted().schema

    @property
    def model_(self) -> PromptBart:
        """The trained network."""
        return self._check_fitted().model

    # ---- training

    def fit(
        self,
        train: Cohort,
        val: Cohort | None = None,
        training: TrainingConfig | None = None,
        *,
        tasks: TaskConfig | None = None,
        output_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        min_count: int = 1,
        max_codes_per_modality: int | dict[str, int] | None = None,
        progress: bool = False,
    ) -> PromptEHR:
        """Train on ``train``; pick the best epoch by perplexity on ``val``.

        Args:
            train: the training cohort.
            val: a validation cohort (same schema); without it the last weights are
                kept and no early stopping happens.
            training: optimisation settings (default :class:`TrainingConfig`).
            tasks: training examples and corruption rates (default ``TaskConfig``).
            output_dir: where checkpoints, the best weights and ``metrics.jsonl`` go
                (a temporary folder when None).
            resume_from: a ``checkpoints/step-N`` folder of an earlier run of the same
                cohort: training continues from it (tokenizer and weights included).
            min_count, max_codes_per_modality: vocabulary limits (see
                :meth:`CodeTokenizer.fit`).
            progress: show a progress bar.

        Returns:
            self, fitted.
        """
        from ehrgen.models.promptehr.tasks import TaskConfig
        from ehrgen.training import TrainingConfig

        training = training or TrainingConfig()
        tasks = tasks or TaskConfig()
        fitting.check_cohorts(train, val)
        if resume_from is not None:
            tokenizer, schema, config = read_model_files(Path(resume_from))
            self.config = config
            fitting.check_schema(train, schema, Path(resume_from))
        else:
            tokenizer = CodeTokenizer.fit(train, min_count, max_codes_per_modality)
            schema = train.schema
        tasks = fitting.fit_positions(tasks, self.config, schema)
        with contextlib.ExitStack() as stack:
            if output_dir is None:
                output_dir = stack.enter_context(tempfile.TemporaryDirectory())
            model = self._new_network(tokenizer, schema, train, training.seed)
            fitted = Fitted(tokenizer, schema, model, {})
            result = fitting.train(
                fitted,
                self.config,
                train,
                val,
                training,
                tasks,
                Path(output_dir),
                resume_from,
                progress,
            )
        fitted.info = {
            **fitting.training_info(train, val, training, tasks, result),
            "population": Population.from_cohort(train).to_dict(),
        }
        self._fitted = fitted
        return self

    def _new_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema, train: Cohort, seed: int
    ) -> PromptBart:
        import torch

        from ehrgen.models.promptehr.modeling import PromptBart

        # Weights are drawn from a seeded generator state that does not leak out.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PromptBart(
                self.config,
                tokenizer,
                [len(c) for c in schema.categorical.values()],
                len(schema.numerical),
            )
        values = (
            np.stack([train.static[n] for n in schema.numerical], axis=1)
            if (schema.numerical)
            else np.zeros((len(train), 0), np.float32)
        )
        for featurizer in (model.encoder_prompts, model.decoder_prompts):
            featurizer.set_standardisation(
                torch.as_tensor(fitting.nan_stat(np.nanmean, values)),
                torch.as_tensor(fitting.nan_stat(np.nanstd, values)),
            )
        return model

    # ---- scoring

    def perplexity(self, cohort: Cohort, batch_size: int = 64) -> float:
        """Teacher-forced perplexity of every target token of ``cohort``: each visit
        given the ones before it (the end-of-patient target included) and each
        modality of each visit given the rest, without corruption. The figure
        training validates on; lpl and mpl per modality live in ``ehrgen.evaluation``.
        """
        import torch
        from torch.utils.data import DataLoader

        from ehrgen.models.promptehr import tasks as task_lib

        fitted = self._check_fitted()
        fitting.check_schema(cohort, fitted.schema, Path("PromptEHR"))
        data = task_lib.TokenizedCohort.from_cohort(cohort, fitted.tokenizer)
        tasks = task_lib.TaskConfig.from_dict(fitted.info.get("tasks", {}))
        tasks = fitting.fit_positions(tasks, self.config, fitted.schema)
        dataset = task_lib.ExampleDataset(
            data, task_lib.validation_slots(data), tasks, 0, 0, corrupt=False
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=lambda batch: task_lib.collate(batch, fitted.tokenizer.pad_id),
        )
        loss, tokens = 0.0, 0
        fitted.model.eval()
        with torch.no_grad():
            for batch in loader:
                out = fitted.model(batch)
                loss, tokens = loss + float(out.loss_sum), tokens + int(out.n_tokens)
        return math.exp(loss / max(tokens, 1))

    # ---- scoring

    #: scoring protocols supported (see ``ehrgen.evaluation.perplexity``).
    protocols = ("chain", "set")

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

    def generate(
        self,
        n: int,
        conditions: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """``n`` synthetic patients from scratch.

        Args:
            n: how many patients.
            conditions: baseline features to impose, one mapping for all patients or
                one per patient (``{"gender": "F", "age": 70}``); features not given
                are drawn from the training population (aggregate marginals).
            generation: sampling settings (temperature, top-k, top-p, max visits...).
            seed: makes the output reproducible.
            progress: called with the number of patients finished after each batch.

        Example:
            >>> from ehrgen.data.demo import demo_cohort
            >>> from ehrgen.training import TrainingConfig
            >>> model = PromptEHR(PromptEHRConfig.tiny()).fit(
            ...     demo_cohort(16, seed=0), training=TrainingConfig(epochs=1)
            ... )
            >>> len(model.generate(3, conditions={"gender": "F"}, seed=0))
            3
        """
        from ehrgen.models.promptehr import synthesis

        return synthesis.generate(
            self._context(),
            n,
            conditions,
            generation or GenerationConfig(),
            _seed(seed),
            progress,
        )

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
        from ehrgen.models.promptehr import synthesis

        generation = generation or GenerationConfig()
        return synthesis.continue_patients(
            self._context(), cohort, n_visits, generation, _seed(seed), progress
        )

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
        from ehrgen.models.promptehr import synthesis

        generation = generation or GenerationConfig()
        return synthesis.impute_modality(
            self._context(),
            cohort,
            visit_index,
            modality,
            generation,
            _seed(seed),
            progress,
        )

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
        from ehrgen.models.promptehr import synthesis

        generation = generation or GenerationConfig()
        return synthesis.complete_visits(
            self._context(), cohort, visit_index, generation, _seed(seed), progress
        )

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
        from ehrgen.models.promptehr import synthesis

        generation = generation or GenerationConfig()
        return synthesis.generate_from_seeds(
            self._context(), cohort, n_per_seed, generation, _seed(seed), progress
        )

    def calibrate_length(
        self,
        cohort: Cohort,
        n_samples: int = 512,
        rounds: int = 2,
        generation: GenerationConfig | None = None,
        seed: int = 0,
    ) -> PromptEHR:
        """Calibrate when generated patients end, so that their numbers of visits
        follow ``cohort``'s (usually the training cohort).

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
        generation = generation or GenerationConfig()
        ctx = self._context()
        ctx.end_bias = None
        bias = synthesis.calibrate_end(
            ctx, np.diff(cohort.visit_offsets), generation, n_samples, rounds, seed
        )
        self._check_fitted().info["end_bias"] = [round(float(b), 4) for b in bias]
        return self

    def _context(self):
        from ehrgen.models.promptehr.synthesis import Context
        from ehrgen.models.promptehr.tasks import TaskConfig

        fitted = self._check_fitted()
        if "population" not in fitted.info:
            raise SchemaError(
                "This model has no summary of its training population, which "
                "generation needs; retrain it with this version of ehrgen."
            )
        tasks = TaskConfig.from_dict(fitted.info.get("tasks", {}))
        tasks = fitting.fit_positions(tasks, self.config, fitted.schema)
        fitted.model.eval()
        population = Population.from_dict(fitted.info["population"])
        bias = fitted.info.get("end_bias")
        return Context(
            fitted.model,
            fitted.tokenizer,
            population,
            tasks.max_source_length,
            None if bias is None else np.asarray(bias, dtype=float),
        )

    # ---- persistence

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder: ``config.json``, ``tokenizer.json``,
        ``schema.json``, ``model.safetensors``, ``ehrgen.json`` and ``model_card.md``.

        Each file is written atomically and ``ehrgen.json`` last, so a folder without
        it is incomplete and :meth:`from_pretrained` refuses it. No pickle is used.
        """
        fitted = self._check_fitted()
        path = Path(path)
        check_model_folder_free(path, overwrite)
        write_model_files(fitted, self.config, path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PromptEHR:
        """Load a folder written by :meth:`save_pretrained` (or a checkpoint)."""

        path = Path(path)
        tokenizer, schema, config = read_model_files(path)
        info = read_json(path / "ehrgen.json")
        check_versions(info, path)
        self = cls(config)
        model = self._empty_network(tokenizer, schema)
        load_weights(model, path)
        model.eval()
        self._fitted = Fitted(tokenizer, schema, model, info.get("training_info", {}))
        return self

    def _empty_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema
    ) -> PromptBart:
        from ehrgen.models.promptehr.modeling import PromptBart

        return PromptBart(
            self.config,
            tokenizer,
            [len(c) for c in schema.categorical.values()],
            len(schema.numerical),
        )

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"PromptEHR({state}, d_model={self.config.d_model})"


def _seed(seed: int | None) -> int:
    """A given seed, or a fresh one from the operating system."""
    return int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)
