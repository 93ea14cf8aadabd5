"""The model class both GAN baselines share (LSTM+MedGAN, SynTEG): the hooks of the
shared layer, the Monte Carlo set scores, generation, and the refusal of the modes a
GAN cannot do (see :mod:`ehrgen.models.baselines.gan_common` for the training
schedule and the score's definition)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, UnsupportedModeError
from ehrgen.models.base import CodeScores
from ehrgen.models.baselines.gan_common import (
    GANEncoded,
    GANNetwork,
    gan_loaders,
    pretrain_steps,
)
from ehrgen.models.baselines.lstm_mlp import _visits
from ehrgen.models.trained import TrainedGenerator, check_schema, static_arrays
from ehrgen.training import TrainingConfig

__all__ = ["SUPPORTED_MODES", "GANGenerator"]

logger = logging.getLogger(__name__)

#: What a GAN baseline can do, for the errors of the modes it cannot.
SUPPORTED_MODES = ("generate (whole patients from baseline features)",)


class GANGenerator(TrainedGenerator):
    """The model class both GAN baselines share: the Trainer hooks, the Monte Carlo
    set scores, generation, and the refusal of the modes a GAN cannot do.

    A subclass sets ``name``, ``config_class``, ``network_class`` and ``summary``.
    """

    network_class: type[GANNetwork]
    protocols: tuple[str, ...] = ("set",)

    def __init__(self, config: Any = None) -> None:
        self.config = config or self.config_class()
        self._fitted = None

    # ---- hooks of the shared layer (ehrgen.models.trained)

    def _default_training(self) -> TrainingConfig:
        """Adam (no weight decay), learning rate 1e-3, no warm-up (validation
        never stops a GAN early; see the module docstring)."""
        return TrainingConfig(
            learning_rate=1e-3, weight_decay=0.0, warmup_epochs=0.0, patience=None
        )

    def _new_network(self, tokenizer, schema, train, state):
        network = self._empty_network(tokenizer, schema, state)
        network.calibrate(GANEncoded(train, tokenizer))
        return network, None

    def _empty_network(self, tokenizer, schema, state) -> GANNetwork:
        return self.network_class(self.config, tokenizer, schema)

    def _loaders(self, fitted, train, val, training):
        data = GANEncoded(train, fitted.tokenizer)
        return gan_loaders(data, val, fitted.tokenizer, training, self.config)

    def fit(self, train: Cohort, val: Cohort | None = None, training=None, **kwargs):
        """Train (see :meth:`TrainedGenerator.fit`); warn when the generator took
        fewer than 10 steps: the schedule follows the planned epochs, whose first
        ``pretrain_fraction`` pretrains, so a run cut short (``max_steps``, a time
        budget) may never reach the GAN, and a short one barely does."""
        super().fit(train, val, training, **kwargs)
        facts = self.training_
        settings = TrainingConfig.from_dict(facts.training)
        pretrain = pretrain_steps(len(train), settings, self.config)
        rounds = self.config.critic_steps + 1  # critic steps, then a generator step
        generator_steps = max(0, facts.steps - pretrain) // rounds
        if generator_steps < 10:
            cut = facts.epochs_completed < settings.epochs
            fix = ("it stopped before the planned epochs: plan fewer epochs for "
                   "this budget" if cut else "train for more epochs")  # fmt: skip
            logger.warning(
                "%s trained its generator for %d steps only: %d optimizer steps, "
                "of which the first %d pretrain (pretrain_fraction %s of the planned "
                "%d epochs); %s.",
                type(self).__name__, generator_steps, facts.steps, pretrain,
                self.config.pretrain_fraction, settings.epochs, fix,
            )  # fmt: skip
        return self

    # ---- scoring

    def score_longitudinal(
        self,
        cohort: Cohort,
        protocol: str = "set",
        *,
        samples: int | None = None,
        seed: int = 0,
    ) -> CodeScores:
        """Each true code of visit t >= 2 (index 1 on) given visits 1..t-1 and the
        baseline features: the Monte Carlo set score (module docstring) with
        ``samples`` noise draws (the config's ``score_samples`` when None) from
        ``seed``."""
        return self._score(cohort, "longitudinal", protocol, samples, seed)

    def score_cross_modal(
        self,
        cohort: Cohort,
        protocol: str = "set",
        *,
        samples: int | None = None,
        seed: int = 0,
    ) -> CodeScores:
        """Each true code of modality k of each visit given the earlier visits and
        the visit's other modalities: the Monte Carlo set score, each noise draw
        weighed by the probability it gives the other modalities."""
        return self._score(cohort, "cross_modal", protocol, samples, seed)

    def _score(self, cohort, task, protocol, samples, seed) -> CodeScores:
        self._check_protocol(protocol, task, "a GAN gives no code order")
        samples = self.config.score_samples if samples is None else samples
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ConfigError(
                f"The 'samples' parameter of {type(self).__name__}.score_{task} must "
                f"be an int >= 1. Got {samples!r} instead."
            )
        fitted = self._check_fitted()
        check_schema(cohort, fitted.schema, type(self).__name__)
        data = GANEncoded(cohort, fitted.tokenizer)
        columns = data.base.event_columns
        position = data.base.position
        network, n = fitted.network.eval(), len(cohort)
        first = 1 if task == "longitudinal" else 0
        events, values, n_unknown = [np.zeros(0, np.int64)], [np.zeros(0)], 0
        event_visit = cohort.event_visit
        for start in range(0, n, 64):
            batch = data.batch(np.arange(start, min(start + 64, n)))
            batch = {k: v.to(network.device) for k, v in batch.items()}
            scores = network.set_log_probs(batch, task, samples, seed).numpy()
            v0 = int(cohort.visit_offsets[start])
            a, b = cohort.event_offsets[v0], cohort.event_offsets[v0 + len(scores)]
            visit, column = event_visit[a:b], columns[a:b]
            scored = position[visit] >= first
            n_unknown += int((scored & (column < 0)).sum())
            keep = np.flatnonzero(scored & (column >= 0))
            events.append(keep + a)
            values.append(scores[visit[keep] - v0, column[keep]])
        events, values = np.concatenate(events), np.concatenate(values)
        visits, codes = event_visit[events], cohort.event_codes[events]
        return CodeScores(
            cohort.visit_patient[visits].astype(np.int64),
            position[visits].astype(np.int32),
            cohort.code_modality[codes].astype(np.int8),
            cohort.code_values[codes],
            values.astype(np.float64),
            tuple(cohort.schema.modalities),
            "set",
            task,
            self.name,
            n_unknown,
            mc_samples=samples,
        )

    # ---- generation

    def _patient_sampler(self, fitted, generation, generator):
        """Visits drawn code by code from the generator (module docstring);
        ``generation`` uses ``max_visits``, ``max_codes_per_modality``,
        ``temperature`` (divides the logits), ``greedy`` and ``batch_size``."""
        network = fitted.network.eval()

        def sample(statics):
            categorical, numerical = static_arrays(statics, fitted.schema)
            rows = network.sample(categorical, numerical, generation, generator)
            return [_visits(fitted.tokenizer, history) for history in rows]

        return sample

    # ---- modes a GAN cannot do

    def _refuse(self, mode: str) -> None:
        raise UnsupportedModeError(
            f"{type(self).__name__} ({self.name}) cannot {mode}: a GAN baseline "
            f"generates whole patients only. Supported: "
            f"{', '.join(SUPPORTED_MODES)}. Use a PromptEHR model for imputation."
        )

    def continue_patients(self, *args: Any, **kwargs: Any) -> Cohort:
        """Refused (see :meth:`_refuse`)."""
        self._refuse("continue patients (next-visit imputation)")

    def impute_modality(self, *args: Any, **kwargs: Any) -> Cohort:
        """Refused (see :meth:`_refuse`)."""
        self._refuse("impute a modality")

    def complete_visits(self, *args: Any, **kwargs: Any) -> Cohort:
        """Refused (see :meth:`_refuse`)."""
        self._refuse("complete visits")
