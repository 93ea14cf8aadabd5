"""Fitting PromptEHR: data loaders, the shared trainer, and the facts kept after."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import SchemaError
from ehrgen.models.base import load_weights
from ehrgen.models.population import Population
from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.models.promptehr.persistence import Fitted, write_model_files

if TYPE_CHECKING:
    from ehrgen.models.promptehr.tasks import TaskConfig
    from ehrgen.training import TrainingConfig, TrainingResult

logger = logging.getLogger(__name__)


def train(
    fitted: Fitted,
    config: PromptEHRConfig,
    train: Cohort,
    val: Cohort | None,
    training: TrainingConfig,
    tasks: TaskConfig,
    output_dir: Path,
    resume_from: str | Path | None,
    progress: bool,
) -> TrainingResult:
    import torch
    from torch.utils.data import DataLoader

    from ehrgen.models.promptehr import tasks as task_lib
    from ehrgen.tokens.batching import length_grouped_order, source_lengths
    from ehrgen.training import Trainer

    data = task_lib.TokenizedCohort.from_cohort(train, fitted.tokenizer)
    pad = fitted.tokenizer.pad_id

    def collate(examples):
        return task_lib.collate(examples, pad)

    def train_loader(epoch: int) -> DataLoader:
        slots = task_lib.example_slots(data, epoch, training.seed, tasks)
        # Shuffled here, from (seed, epoch), so that a resumed run sees the same order.
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

    val_loader = None
    if val is not None:
        val_data = task_lib.TokenizedCohort.from_cohort(val, fitted.tokenizer)
        dataset = task_lib.ExampleDataset(
            val_data,
            task_lib.validation_slots(val_data, training.seed),
            tasks,
            training.seed,
            0,
            corrupt=False,
        )
        val_loader = DataLoader(
            dataset, batch_size=training.batch_size, collate_fn=collate
        )

    # Checkpoints carry what generation needs, so that any of them can be used.
    partial_info = {
        "tasks": tasks.to_dict(),
        "population": Population.from_cohort(train).to_dict(),
    }

    def save_model(model, folder: Path) -> None:
        checkpoint = Fitted(fitted.tokenizer, fitted.schema, model, partial_info)
        write_model_files(checkpoint, config, folder)

    trainer = Trainer(training, output_dir, save_model, load_weights, progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        return trainer.fit(
            fitted.model, train_loader, val_loader, resume_from=resume_from
        )


def fit_positions(
    tasks: TaskConfig, config: PromptEHRConfig, schema: CohortSchema
) -> TaskConfig:
    """Cap sequence lengths so that prompts plus tokens fit the position table."""
    room = config.max_position_embeddings - len(schema.features)
    changes = {
        name: room
        for name in ("max_source_length", "max_target_length")
        if getattr(tasks, name) > room
    }
    if changes:
        logger.debug(
            "Capping %s at %d positions (max_position_embeddings).",
            ", ".join(changes),
            room,
        )
    return tasks.replace(**changes)


def check_cohorts(train: Cohort, val: Cohort | None) -> None:
    if len(train) == 0:
        raise SchemaError(
            "The training cohort is empty: PromptEHR needs patients to fit."
        )
    if val is not None:
        if len(val) == 0:
            raise SchemaError("The validation cohort is empty; pass val=None instead.")
        if val.schema != train.schema:
            raise SchemaError(
                f"The validation cohort's schema differs from the training cohort's: "
                f"{val.schema} vs {train.schema}."
            )


def check_schema(cohort: Cohort, schema: CohortSchema, where: Path) -> None:
    if cohort.schema != schema:
        raise SchemaError(
            f"{where}: the model was trained on a cohort with schema {schema}; the "
            f"cohort given has {cohort.schema}. Use a cohort of the same schema "
            f"(modalities and baseline features)."
        )


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


def training_info(train, val, training, tasks, result) -> dict[str, Any]:
    stats = train.stats()
    return {
        "train_patients": len(train),
        "train_visits": train.n_visits,
        "train_events": train.n_events,
        "val_patients": len(val) if val is not None else 0,
        "vocabulary": stats.vocabulary,
        "training": training.to_dict(),
        "tasks": tasks.to_dict(),
        "steps": result.steps,
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "best_val_perplexity": result.best_val_perplexity,
        "stopped_early": result.stopped_early,
        "train_tokens": result.train_tokens,
        "seconds": round(result.seconds, 2),
    }
