"""Fitting PromptEHR: its data loaders, sequence-length caps and prompt statistics
(the rest of fitting is the shared layer's, ``ehrgen.models.trained``)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from ehrgen.data import Cohort, CohortSchema
from ehrgen.models.folder import Fitted
from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.tokens.encoded import TokenizedCohort

if TYPE_CHECKING:
    from ehrgen.models.promptehr.tasks import TaskConfig
    from ehrgen.training import TrainingConfig

logger = logging.getLogger(__name__)


def loaders(
    fitted: Fitted, train: Cohort, val: Cohort | None, training: TrainingConfig
):
    """The trainer's ``train_loader(epoch)`` and validation loader. Each epoch's
    examples and order follow from (seed, epoch), so a resumed run sees the same."""
    from torch.utils.data import DataLoader

    from ehrgen.models.promptehr import tasks as task_lib
    from ehrgen.tokens.batching import length_grouped_order, source_lengths

    tasks: TaskConfig = fitted.state
    if fitted.network.objective == "one-pass":
        return _patient_loaders(fitted, train, val, training)
    data = task_lib.TokenizedCohort.from_cohort(train, fitted.tokenizer)
    pad = fitted.tokenizer.pad_id

    def collate(examples):
        return task_lib.collate(examples, pad)

    def train_loader(epoch: int) -> DataLoader:
        slots = task_lib.example_slots(data, epoch, training.seed, tasks)
        order = length_grouped_order(
            source_lengths(data, slots, tasks.max_source_length),
            training.batch_size,
            np.random.default_rng([training.seed, epoch, 7]),
        )
        dataset = task_lib.ExampleDataset(
            data, slots[order], tasks, training.seed, epoch
        )
        return DataLoader(
            dataset,
            batch_size=training.batch_size,
            collate_fn=collate,
            num_workers=training.num_workers,
        )

    if val is None:
        return train_loader, None
    val_data = task_lib.TokenizedCohort.from_cohort(val, fitted.tokenizer)
    dataset = task_lib.ExampleDataset(
        val_data,
        task_lib.validation_slots(val_data, training.seed),
        tasks,
        training.seed,
        0,
        corrupt=False,
    )
    return train_loader, DataLoader(
        dataset, batch_size=training.batch_size, collate_fn=collate
    )


def _patient_loaders(
    fitted: Fitted, train: Cohort, val: Cohort | None, training: TrainingConfig
):
    """The one-pass objective's loaders: one item per patient (``one_pass``)."""
    from torch.utils.data import DataLoader

    from ehrgen.models.promptehr import one_pass
    from ehrgen.tokens.batching import budgeted_batches
    from ehrgen.tokens.encoded import TokenizedCohort

    tasks: TaskConfig = fitted.state
    pad = fitted.tokenizer.pad_id
    data = TokenizedCohort.from_cohort(train, fitted.tokenizer)
    lengths = patient_lengths(data, tasks)
    # Label tokens of a full step (batch_size visits), about: a visit's tokens, a
    # cloze block for cloze_rate of the visits, the end of each patient.
    labels = lengths.sum() * (1 + tasks.cloze_rate / 3) + len(lengths)
    per_step = training.batch_size * float(labels) / max(data.visit_counts.sum(), 1)

    def collate(items):
        return one_pass.collate_patients(items, pad)

    def collate_train(items):
        return one_pass.collate_patients(items, pad, per_step)

    def train_loader(epoch: int) -> DataLoader:
        # A step holds about batch_size target visits (whole patients), as a step
        # of the paper's objective holds batch_size targets.
        batches = budgeted_batches(
            lengths,
            np.diff(data.visit_offsets),
            training.batch_size,
            np.random.default_rng([training.seed, epoch, 7]),
        )
        dataset = one_pass.PatientDataset(
            data, np.arange(len(lengths)), tasks, training.seed, epoch
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate_train,
            num_workers=training.num_workers,
        )

    if val is None:
        return train_loader, None
    val_data = TokenizedCohort.from_cohort(val, fitted.tokenizer)
    dataset = one_pass.PatientDataset(
        val_data, np.arange(len(val_data)), tasks, training.seed, corrupt=False
    )
    return train_loader, DataLoader(
        dataset, batch_size=training.batch_size, collate_fn=collate
    )


def patient_batches(fitted: Fitted, train: Cohort, training: TrainingConfig):
    """DP-SGD's view of the one-pass data: each patient's rows as one batch."""
    from ehrgen.models.promptehr import one_pass
    from ehrgen.privacy.sgd import PatientBatches

    tasks: TaskConfig = fitted.state
    pad = fitted.tokenizer.pad_id
    data = TokenizedCohort.from_cohort(train, fitted.tokenizer)
    epochs: dict[int, one_pass.PatientDataset] = {}

    def batch(patient: int, epoch: int):
        if epoch not in epochs:  # one epoch's corruptions at a time
            epochs.clear()
            epochs[epoch] = one_pass.PatientDataset(
                data, np.arange(len(train)), tasks, training.seed, epoch
            )
        return one_pass.collate_patients([epochs[epoch][patient]], pad)

    return PatientBatches(len(train), batch)


def moments_from_quantiles(population, schema: CohortSchema):
    """Mean and standard deviation of each numerical feature, estimated from the
    population summary's quantiles (what a DP model may read)."""
    means, stds = [], []
    for name in schema.numerical:
        quantiles = np.asarray(population.numerical.get(name) or [0.0], np.float64)
        means.append(quantiles.mean())
        stds.append(quantiles.std())
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def patient_lengths(data, tasks: TaskConfig) -> np.ndarray:
    """(P,) the encoder tokens of each patient (before windows and cloze copies)."""
    from ehrgen.models.promptehr.one_pass import visit_lengths

    per_visit = np.concatenate([[0], np.cumsum(visit_lengths(data, tasks))])
    return np.diff(per_visit[data.visit_offsets])


def fit_positions(
    tasks: TaskConfig, config: PromptEHRConfig, schema: CohortSchema
) -> TaskConfig:
    """Cap sequence lengths so that prompts plus tokens fit the position table: a
    visit (at most ``max_target_length`` tokens, plus a ``<mask>`` per modality block
    from span infilling) must fit a source row after its ``<bos>``."""
    room = config.max_position_embeddings - len(schema.features)
    limits = {
        "max_source_length": room,
        "max_target_length": room - 1 - len(schema.modalities),
    }
    changes = {
        name: limit for name, limit in limits.items() if getattr(tasks, name) > limit
    }
    if changes:
        logger.debug(
            "Capping %s (max_position_embeddings %d).",
            ", ".join(f"{k} at {v}" for k, v in changes.items()),
            config.max_position_embeddings,
        )
    return tasks.replace(**changes)


def nan_stat(fn, values: np.ndarray) -> np.ndarray:
    if values.shape[1] == 0:
        return np.zeros(0, np.float32)
    with np.errstate(all="ignore"), _quiet_runtime_warnings():
        out = fn(values, axis=0)
    return np.nan_to_num(out.astype(np.float32), nan=0.0)


@contextlib.contextmanager
def _quiet_runtime_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
