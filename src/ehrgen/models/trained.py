"""What every neural generator shares: fitting, learned state, folders, synthetic ids.

:class:`TrainedGenerator` is written once, so that a model file holds only what is
specific to the model. A subclass names itself (``name``, ``config_class``) and
implements a few hooks:

* ``_new_network(tokenizer, schema, train, state)``: an untrained network and the
  model's own typed state (drawn under the training seed, so weights are reproducible);
* ``_empty_network(tokenizer, schema, state)``: the network to load weights into;
* ``_loaders(fitted, train, val, training)``: the trainer's ``train_loader(epoch)`` and
  validation loader;
* ``_patient_sampler(fitted, generation, generator)``: samples the visits of a batch
  of patients from their baseline features (what :meth:`TrainedGenerator.generate`
  calls);
* ``_state_from_dict(data, tokenizer, schema)``: the typed state back from JSON;
* optionally ``_default_training()``, ``_initial_state(train)``,
  ``_training_module(fitted)`` (what the trainer optimises, when it wraps
  the network) and ``_architecture()`` (one line for the model card);
* for differentially private training (``TrainingConfig.dp``), a model sets
  ``supports_dp`` and implements ``_new_private_network(tokenizer, schema,
  population, state)`` (the network from the DP population summary, never from the
  patients) and ``_patient_batches(fitted, train, training)`` (a
  :class:`~ehrgen.privacy.sgd.PatientBatches`).

The base class does the rest: the cohort checks, the tokenizer (or the one of the
checkpoint resumed from), the population summary (once), the temporary output folder,
the shared :class:`~ehrgen.training.Trainer` with whole-folder checkpoints, the typed
:class:`~ehrgen.models.folder.Fitted` state and the model folder.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ehrgen.data import Cohort, CohortSchema, Patient, Visit
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.models.base import FittedState, check_model_folder_free, load_weights
from ehrgen.models.folder import (
    Fitted,
    TrainingFacts,
    model_card,
    read_model_folder,
    write_model_folder,
)
from ehrgen.models.population import Population
from ehrgen.tokens import CodeTokenizer

if TYPE_CHECKING:
    from ehrgen.generation import GenerationConfig
    from ehrgen.training import TrainingConfig, TrainingResult

__all__ = [
    "SYNTHETIC_ID_BASE",
    "TrainedGenerator",
    "check_patient_ids",
    "new_seed",
    "static_arrays",
    "synthetic_ids",
    "synthetic_metadata",
    "with_times_and_values",
]

#: Synthetic patients get the integer ids ``SYNTHETIC_ID_BASE + i``: far above the
#: ids of real cohorts (MIMIC's are below 10^8, OMOP person ids below 10^12), below
#: 2^53 so that no float conversion changes them, and refused in training cohorts,
#: so that a synthetic ``subject_id`` never equals a real patient's.
SYNTHETIC_ID_BASE = 10**15

logger = logging.getLogger(__name__)


def synthetic_ids(n: int, first: int = 0) -> list[str]:
    """Ids of synthetic patients ``first .. first + n - 1``, in the reserved range."""
    return [str(SYNTHETIC_ID_BASE + first + i) for i in range(n)]


def synthetic_metadata(n: int, source: str, first: int = 0) -> dict[str, Any]:
    """The metadata of new patients ``first .. first + n - 1``: who made them, and
    their id range ``[start, stop)`` (kept in MEDS ``metadata/ehrgen.json``)."""
    start = SYNTHETIC_ID_BASE + first
    return {"source": source, "synthetic_subject_ids": [start, start + n]}


def check_patient_ids(cohort: Cohort) -> None:
    """Refuse a training cohort holding an id of the reserved synthetic range."""
    for patient_id in cohort.patient_ids.tolist():
        if patient_id.isdigit() and int(patient_id) >= SYNTHETIC_ID_BASE:
            raise SchemaError(
                f"Patient {patient_id!r}, field 'patient_id': ids from "
                f"{SYNTHETIC_ID_BASE} up are reserved for synthetic patients, so that "
                f"they never equal a real patient's. Renumber the cohort's patients."
            )


def new_seed(seed: int | None) -> int:
    """A given seed, or a fresh one from the operating system."""
    return int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)


def check_count(n: Any, owner: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(
            f"The 'n' parameter of {owner} must be an int >= 1. Got {n!r} instead."
        )


class TrainedGenerator(FittedState):
    """The base of every neural generator (see the module docstring)."""

    #: the registry name, written in ``ehrgen.json``.
    name: ClassVar[str]
    #: the architecture config class (``from_dict`` reads ``config.json``).
    config_class: ClassVar[type]
    #: one sentence for the model card.
    summary: ClassVar[str] = ""
    protocols: tuple[str, ...] = ("set",)
    #: whether ``fit`` can train it with differential privacy (TrainingConfig.dp).
    supports_dp: ClassVar[bool] = False

    config: Any
    _fitted: Fitted | None = None

    # ---- learned state (scikit-learn style: names ending in _)

    @property
    def schema_(self) -> CohortSchema:
        """The training cohort's schema (modalities, baseline features)."""
        return self._check_fitted().schema

    @property
    def model_(self) -> Any:
        """The trained network."""
        return self._check_fitted().network

    @property
    def population_(self) -> Population:
        """The training population in aggregate (what generation draws from)."""
        return self._check_fitted().population

    @property
    def privacy_(self) -> Any:
        """The :class:`~ehrgen.privacy.PrivacyStatement` of a model trained with
        differential privacy: its (ε, δ) per patient and each part's share; None
        for a model trained without."""
        return self._check_fitted().privacy

    @property
    def time_values_(self) -> Any:
        """The :class:`~ehrgen.models.time_values.TimeValueModel` that gives
        generated patients their visit gaps and lab values (None: gaps from the
        population's quantiles, no values)."""
        return self._check_fitted().time_values

    @property
    def training_(self) -> TrainingFacts | None:
        """Training facts (sizes, settings, steps, best validation perplexity);
        None for a model loaded from a mid-training checkpoint."""
        return self._check_fitted().facts

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}({state})"

    # ---- hooks

    def _new_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema, train: Cohort, state: Any
    ) -> tuple[Any, Any]:
        raise NotImplementedError

    def _empty_network(
        self, tokenizer: CodeTokenizer, schema: CohortSchema, state: Any
    ) -> Any:
        raise NotImplementedError

    def _loaders(
        self, fitted: Fitted, train: Cohort, val: Cohort | None, training: Any
    ) -> tuple[Callable[[int], Any], Any]:
        raise NotImplementedError

    @classmethod
    def _config_from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The architecture config from a saved ``config.json``."""
        return cls.config_class.from_dict(data)

    @classmethod
    def _state_from_dict(
        cls, data: Mapping[str, Any], tokenizer: CodeTokenizer, schema: CohortSchema
    ) -> Any:
        return dict(data)

    def _training_module(self, fitted: Fitted) -> Any:
        """What the trainer optimises (the network, or a module wrapping it)."""
        return fitted.network

    def _network_of(self, module: Any) -> Any:
        """The network inside what :meth:`_training_module` returned."""
        return module

    def _architecture(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.config.to_dict().items())

    def _check_protocol(self, protocol: str, task: str, why: str = "") -> None:
        """A scoring protocol this model supports (NotImplementedError for a known
        one it does not, saying ``why``)."""
        from ehrgen.models.base import PROTOCOLS

        owner = f"{type(self).__name__}.score_{task}"
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"The 'protocol' parameter of {owner} must be one of "
                f"{list(PROTOCOLS)}. Got {protocol!r} instead."
            )
        if protocol not in self.protocols:
            raise NotImplementedError(
                f"The {protocol!r} protocol is not supported by {type(self).__name__} "
                f"({self.name}){': ' + why if why else ''}. Use one of "
                f"{list(self.protocols)}."
            )

    def _new_private_network(
        self,
        tokenizer: CodeTokenizer,
        schema: CohortSchema,
        population: Population,
        state: Any,
    ) -> tuple[Any, Any]:
        raise NotImplementedError

    def _patient_batches(self, fitted: Fitted, train: Cohort, training: Any) -> Any:
        raise NotImplementedError

    def _check_private_training(self) -> None:
        """Refuse settings DP training cannot honour, before any budget is spent."""

    def _default_training(self) -> TrainingConfig:
        """The optimisation settings ``fit`` uses when given none."""
        from ehrgen.training import TrainingConfig

        return TrainingConfig()

    def _initial_state(self, train: Cohort) -> Any:
        """The model's own state before training (None: made by ``_new_network``)."""
        return None

    # ---- fitting

    def fit(
        self,
        train: Cohort,
        val: Cohort | None = None,
        training: TrainingConfig | None = None,
        *,
        output_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        progress: bool = False,
        vocabulary: CodeTokenizer | None = None,
    ) -> Any:
        """Train on ``train`` with the shared :class:`~ehrgen.training.Trainer`.

        Args:
            train: the training cohort.
            val: a validation cohort (same schema): the epoch with the best
                validation perplexity is kept, and training stops early when it
                stops improving. Without it the last weights are kept.
            training: optimisation settings (the model's default when None).
            output_dir: where checkpoints (whole model folders), the best weights
                and ``metrics.jsonl`` go (a temporary folder when None).
            resume_from: a ``checkpoints/step-N`` folder of an earlier run on the
                same cohort: training continues from it (vocabulary, state and
                weights come from it).
            progress: show a progress bar.
            vocabulary: a public vocabulary (e.g. from a terminology, not from
                these patients) to use instead of the training cohort's codes;
                with differential privacy it spends no budget.

        Returns:
            self, fitted.
        """
        training = training or self._default_training()
        check_cohorts(train, val, type(self).__name__)
        check_patient_ids(train)
        if vocabulary is not None:
            check_vocabulary(vocabulary, train.schema)
        if training.dp is not None:
            return self._fit_private(
                train, training, output_dir, resume_from, progress, vocabulary
            )
        return self._fit(
            train, val, training, output_dir, resume_from, progress, vocabulary
        )

    def _fit(self, train, val, training, output_dir, resume_from, progress, vocabulary):
        import torch

        state = self._initial_state(train)
        if resume_from is not None:
            folder = read_model_folder(resume_from, self.name, self._config_from_dict)
            self.config, tokenizer, schema = (
                folder.config,
                folder.tokenizer,
                folder.schema,
            )
            check_schema(train, schema, f"{resume_from}")
            state = self._state_from_dict(folder.state, tokenizer, schema)
        else:
            tokenizer = vocabulary or CodeTokenizer.fit(train)
            schema = train.schema
        with torch.random.fork_rng(devices=[]):  # seeded weights, global state kept
            torch.manual_seed(training.seed)
            network, state = self._new_network(tokenizer, schema, train, state)
        population = Population.from_cohort(train)
        fitted = Fitted(tokenizer, schema, network, population, state=state)
        loaders = self._loaders(fitted, train, val, training)
        self._train(fitted, loaders, training, output_dir, resume_from, progress)
        fitted.facts = training_facts(train, val, training, fitted.facts)
        fitted.time_values = _fit_time_values(train, val, training)
        self._fitted = fitted
        return self

    def _fit_private(self, train, training, output_dir, resume_from, progress,
                     vocabulary):  # fmt: skip
        """Fit with differential privacy: every part of the folder learned from
        the patients spends a share of ε (see :mod:`ehrgen.privacy`)."""
        import torch

        from ehrgen.privacy.release import private_population, private_vocabulary
        from ehrgen.privacy.sgd import secure_seed
        from ehrgen.privacy.statement import PrivacyStatement, plan_budget

        if not self.supports_dp:
            from ehrgen.models.registry import private_models

            raise ConfigError(
                f"{type(self).__name__} ({self.name}) cannot be trained with "
                f"differential privacy; models that can: {private_models()}."
            )
        self._check_private_training()
        dp = training.dp
        state = self._initial_state(train)
        if resume_from is not None:
            folder = read_model_folder(resume_from, self.name, self._config_from_dict)
            if folder.privacy is None:
                raise ConfigError(
                    f"{resume_from}: this checkpoint was trained without differential "
                    f"privacy; a DP run cannot continue it."
                )
            self.config, tokenizer, schema = (
                folder.config,
                folder.tokenizer,
                folder.schema,
            )
            check_schema(train, schema, f"{resume_from}")
            state = self._state_from_dict(folder.state, tokenizer, schema)
            population = folder.population
            parts = tuple(
                p for p in folder.privacy.parts if p.name != "training (DP-SGD)"
            )
            vocabulary_given = not any(p.name == "vocabulary" for p in parts)
            plan = plan_budget(dp, len(train), vocabulary_given)
        else:
            plan = plan_budget(dp, len(train), vocabulary is not None)
            rng = np.random.default_rng(secure_seed())
            schema, parts = train.schema, ()
            if vocabulary is not None:
                tokenizer = vocabulary
            else:
                tokenizer, part = private_vocabulary(
                    train, plan.vocabulary, dp.max_codes_per_patient, rng
                )
                check_private_vocabulary(tokenizer, part, len(train))
                parts += (part,)
            population, part = private_population(
                train, plan.population, dp.numerical_bounds, rng
            )
            parts += (part,)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training.seed)  # initial weights: data-independent
            network, state = self._new_private_network(
                tokenizer, schema, population, state
            )
        privacy = PrivacyStatement(dp.epsilon, parts)
        fitted = Fitted(
            tokenizer, schema, network, population, state=state, privacy=privacy
        )
        batches = self._patient_batches(fitted, train, training)
        self._train(
            fitted, (batches, None), training, output_dir, resume_from, progress,
            dp_budget=plan.sgd,
        )  # fmt: skip
        result = fitted.facts
        fitted.privacy = PrivacyStatement(dp.epsilon, (*parts, result.privacy))
        fitted.facts = training_facts(train, None, training, result)
        self._fitted = fitted
        return self

    def _train(self, fitted, loaders, training, output_dir, resume_from, progress,
               dp_budget=None) -> None:  # fmt: skip
        """Run the shared trainer; leaves its result in ``fitted.facts``."""
        import torch

        from ehrgen.training import Trainer

        def save_checkpoint(module: Any, folder: Path) -> None:
            checkpoint = replace(fitted, network=self._network_of(module))
            write_model_folder(
                folder, self.name, self.config, checkpoint, self._card(checkpoint)
            )

        def load_checkpoint(module: Any, folder: Path) -> None:
            load_weights(self._network_of(module), folder)

        with contextlib.ExitStack() as stack:
            if output_dir is None:
                output_dir = stack.enter_context(tempfile.TemporaryDirectory())
            trainer = Trainer(
                training, Path(output_dir), save_checkpoint, load_checkpoint, progress
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(training.seed)  # dropout and other draws
                module = self._training_module(fitted)
                result = trainer.fit(
                    module, *loaders, resume_from=resume_from, dp_budget=dp_budget
                )
        fitted.network.eval()
        fitted.facts = result

    # ---- persistence

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder (see :mod:`ehrgen.models.folder`): no pickle,
        every file atomic, ``ehrgen.json`` last."""
        fitted, path = self._check_fitted(), Path(path)
        check_model_folder_free(path, overwrite)
        write_model_folder(path, self.name, self.config, fitted, self._card(fitted))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Any:
        """Load a folder written by :meth:`save_pretrained` (or a checkpoint)."""
        folder = read_model_folder(path, cls.name, cls._config_from_dict)
        self = cls(folder.config)
        state = cls._state_from_dict(folder.state, folder.tokenizer, folder.schema)
        network = self._empty_network(folder.tokenizer, folder.schema, state)
        load_weights(network, folder.path)
        self._fitted = Fitted(
            folder.tokenizer,
            folder.schema,
            network.eval(),
            folder.population,
            folder.facts,
            folder.length_calibration,
            state,
            folder.privacy,
            folder.time_values,
        )
        return self

    def _card(self, fitted: Fitted) -> str:
        return model_card(
            type(self).__name__, self.summary, fitted, self._architecture()
        )

    # ---- generation

    def generate(
        self,
        n: int,
        conditions: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
        first_id: int = 0,
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
            first_id: the number of the first patient (its id is
                ``SYNTHETIC_ID_BASE + first_id``), so that cohorts generated apart
                (one per process) never share an id.

        Returns:
            A cohort whose patient ids lie in the reserved synthetic range
            (:data:`SYNTHETIC_ID_BASE` up), recorded in its metadata, with visit
            times drawn from the training population's gaps.
        """
        import torch

        fitted = self._check_fitted()
        generation = self._generation(generation)
        seed = new_seed(seed)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed % 2**63)
        statics = self._statics(n, conditions, rng, f"{type(self).__name__}.generate")
        sample = self._patient_sampler(fitted, generation, generator)
        visits: list[list[Visit]] = []
        size = self._patients_per_call(generation)
        for start in range(0, n, size):
            chunk = statics[start : start + size]
            visits += sample(chunk)
            if progress:
                progress(len(chunk))
        return self._synthetic_cohort(statics, visits, rng, first_id=first_id)

    def _generation(self, generation: GenerationConfig | None) -> GenerationConfig:
        """The sampling settings, the visit cap defaulting to the training cohort's
        longest history."""
        from ehrgen.generation import GenerationConfig

        generation = generation or GenerationConfig()
        return generation.with_visit_cap(self._check_fitted().population.max_visits)

    def _patients_per_call(self, generation: GenerationConfig) -> int:
        """How many patients :meth:`generate` hands the sampler at a time: one batch,
        unless the sampler keeps its batch full by itself."""
        return generation.batch_size

    def _patient_sampler(
        self, fitted: Fitted, generation: GenerationConfig, generator: Any
    ) -> Callable[[Sequence[Mapping[str, Any]]], list[list[Visit]]]:
        """A function from a batch of baseline features to each patient's
        sampled visits (times are added by :meth:`generate`)."""
        raise NotImplementedError

    # ---- generation helpers

    def _statics(
        self, n: int, conditions: Any, rng: np.random.Generator, owner: str
    ) -> list[dict[str, Any]]:
        """Baseline features of ``n`` patients: the conditions, then the training
        population's marginals for the rest."""
        from ehrgen.models.population import per_patient

        check_count(n, owner)
        population = self._check_fitted().population
        return population.sample_static(per_patient(conditions, n, owner), rng)

    def _synthetic_cohort(
        self,
        statics: Sequence[Mapping[str, Any]],
        visits: Sequence[Sequence[Any]],
        rng: np.random.Generator,
        metadata: Mapping[str, Any] | None = None,
        first_id: int = 0,
    ) -> Cohort:
        """A cohort of new patients: ids in the reserved synthetic range, the
        first visit's time from the population, then gaps and lab values from the
        model's time-and-value model (or, without one, gaps from the population's
        quantiles and no values). ``visits`` holds each patient's
        :class:`~ehrgen.data.Visit` objects (their times are replaced)."""
        fitted = self._check_fitted()
        times = fitted.population.sample_times([len(v) for v in visits], rng)
        ids = synthetic_ids(len(visits), first_id)
        patients = []
        for p, (static, history) in enumerate(zip(statics, visits)):
            if times is not None:
                history = [Visit(v.events, t) for v, t in zip(history, times[p])]
            patients.append(Patient(ids[p], dict(static), tuple(history)))
        metadata = {
            **synthetic_metadata(len(ids), type(self).__name__, first_id),
            **(metadata or {}),
        }
        cohort = Cohort.from_patients(patients, fitted.schema, metadata=metadata)
        return with_times_and_values(cohort, fitted.time_values, rng)


def with_times_and_values(
    cohort: Cohort, time_values: Any, rng: np.random.Generator
) -> Cohort:
    """Synthetic patients with gaps and lab values sampled by ``time_values`` (a
    :class:`~ehrgen.models.time_values.TimeValueModel`), unchanged without one."""
    return cohort if time_values is None else time_values.annotate(cohort, rng)


def _fit_time_values(train: Cohort, val: Cohort | None, training: TrainingConfig):
    """The time-and-value model of ``training.time_values`` (None when off or when
    the cohort has neither real times nor lab values)."""
    if training.time_values is None:
        return None
    from ehrgen.models.time_values import fit_time_values

    config = training.time_values.replace(seed=training.seed)
    model = fit_time_values(train, config, val)
    if model is not None:
        summary = model.held_out_summary()
        logger.info("Visit gaps and lab values: %r%s.", model,
                    f" ({summary})" if summary else "")  # fmt: skip
    return model


def static_arrays(
    statics: Sequence[Mapping[str, Any]], schema: CohortSchema
) -> tuple[Any, Any]:
    """Baseline features as the (n, ·) tensors a cohort stores: category indices
    (-1: missing) and raw numbers (NaN: missing)."""
    import torch

    categorical = np.full((len(statics), len(schema.categorical)), -1, np.int64)
    numerical = np.full((len(statics), len(schema.numerical)), np.nan, np.float32)
    for i, static in enumerate(statics):
        for j, (name, categories) in enumerate(schema.categorical.items()):
            if name in static:
                categorical[i, j] = categories.index(static[name])
        for j, name in enumerate(schema.numerical):
            numerical[i, j] = float(static.get(name, np.nan))
    return torch.from_numpy(categorical), torch.from_numpy(numerical)


def check_cohorts(train: Cohort, val: Cohort | None, owner: str) -> None:
    """A non-empty training cohort, and a validation cohort of the same schema."""
    if len(train) == 0:
        raise SchemaError(
            f"The training cohort is empty: {owner} needs patients to fit."
        )
    if val is not None:
        if len(val) == 0:
            raise SchemaError("The validation cohort is empty; pass val=None instead.")
        check_schema(val, train.schema, "The validation cohort")


def check_schema(cohort: Cohort, schema: CohortSchema, where: str) -> None:
    """The cohort must have the schema the model was trained on."""
    if cohort.schema != schema:
        raise SchemaError(
            f"{where}: the model was trained on a cohort with schema {schema}; the "
            f"cohort given has {cohort.schema}. Use a cohort of the same modalities "
            f"and baseline features."
        )


def check_vocabulary(vocabulary: CodeTokenizer, schema: CohortSchema) -> None:
    """A given vocabulary must cover exactly the cohort's modalities."""
    if tuple(vocabulary.modalities) != tuple(schema.modalities):
        raise SchemaError(
            f"The vocabulary has modalities {list(vocabulary.modalities)}; the cohort "
            f"has {list(schema.modalities)}. Give codes for exactly its modalities."
        )


def check_private_vocabulary(tokenizer: CodeTokenizer, part: Any, n: int) -> None:
    """A DP vocabulary must keep codes: say how many patients a code needed."""
    needed = part.details["threshold_patients"]
    empty = [m for m, codes in tokenizer.codes.items() if not codes]
    advice = (
        f"with {n:,} patients and ε = {part.epsilon:.3g} for the vocabulary, a code "
        f"needs about {needed:,.0f} patients holding it. Give a public vocabulary "
        f"(vocabulary=, --vocabulary), more patients, or a larger ε."
    )
    if len(empty) == len(tokenizer.codes):
        raise ConfigError(f"The differentially private vocabulary is empty: {advice}")
    if empty:
        logger.warning("The DP vocabulary has no %s code: %s", ", ".join(empty), advice)


def training_facts(
    train: Cohort, val: Cohort | None, training: TrainingConfig, result: TrainingResult
) -> TrainingFacts:
    private = training.dp is not None  # exact sizes of a private cohort stay out
    return TrainingFacts(
        train_patients=len(train),
        train_visits=None if private else train.n_visits,
        train_events=None if private else train.n_events,
        val_patients=len(val) if val is not None else 0,
        training=training.to_dict(),
        steps=result.steps,
        epochs_completed=result.epochs_completed,
        best_epoch=result.best_epoch,
        best_val_perplexity=result.best_val_perplexity,
        stopped_early=result.stopped_early,
        train_tokens=None if private else result.train_tokens,
        seconds=round(result.seconds, 2),
    )
