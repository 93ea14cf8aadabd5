"""One model-folder format for every model: what a trained generator is on disk.

A folder holds::

    config.json        the architecture (the model's own config dataclass)
    tokenizer.json     the code vocabulary
    schema.json        the training cohort's schema
    model.safetensors  the weights (no pickle anywhere)
    model_card.md      what the model is, how it was trained, how to treat it
    time_values.safetensors  optional: the weights of the model of visit gaps and
                       lab values (:mod:`ehrgen.models.time_values`)
    ehrgen.json        written last: format and library versions, the model's name,
                       training facts, the training population in aggregate, the
                       length calibration, the model's own JSON state, and for a
                       differentially private model its privacy statement

Each file is written atomically and ``ehrgen.json`` last, so a folder without it is
incomplete and :func:`read_model_folder` refuses it. Checkpoints are whole folders too:
any of them loads.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ehrgen._io import atomic_file, write_json
from ehrgen.data import CohortSchema
from ehrgen.errors import SchemaError
from ehrgen.models.population import Population
from ehrgen.models.time_values.model import WEIGHTS_FILE as TIME_VALUES_FILE
from ehrgen.privacy.statement import PrivacyStatement
from ehrgen.tokens import CodeTokenizer

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILES",
    "Fitted",
    "LengthCalibration",
    "ModelFolder",
    "TrainingFacts",
    "read_model_folder",
    "write_model_folder",
]

logger = logging.getLogger(__name__)

#: Version 2: one format for every model (version 1 had one per model).
FORMAT_VERSION = 2
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "schema.json",
    "model.safetensors",
    "ehrgen.json",
)
T = TypeVar("T")


@dataclass(frozen=True)
class TrainingFacts:
    """What training saw and did: sizes, settings and the trainer's outcome.

    Aggregate numbers only, never a patient's record.
    """

    train_patients: int
    # None for a DP model: exact counts of the private cohort are not released.
    train_visits: int | None
    train_events: int | None
    val_patients: int
    training: dict[str, Any]
    steps: int
    epochs_completed: int
    best_epoch: int | None
    best_val_perplexity: float | None
    stopped_early: bool
    train_tokens: int | None  # None for a DP model, as the sizes above
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingFacts:
        return cls(**data)


@dataclass(frozen=True)
class LengthCalibration:
    """A bias on the end-of-patient logit per number of visits so far, fitted so
    that generated visits per patient follow ``cohort`` (``n_patients`` patients)."""

    end_bias: tuple[float, ...]
    cohort: str = "training cohort"
    n_patients: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "end_bias": list(self.end_bias)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LengthCalibration:
        return cls(**{**data, "end_bias": tuple(float(b) for b in data["end_bias"])})


@dataclass
class Fitted:
    """A trained model's learned state: everything its folder holds.

    Attributes:
        tokenizer: the code vocabulary.
        schema: the training cohort's schema.
        network: the trained ``torch.nn.Module``.
        population: the training population in aggregate.
        facts: training facts (None for a checkpoint written mid-training).
        length_calibration: see :class:`LengthCalibration` (None: uncalibrated).
        state: the model's own typed state (task settings, decile edges,
            standardisation...): an object with ``to_dict()`` or a JSON-ready mapping,
            parsed back by the model's ``_state_from_dict``.
        privacy: the (ε, δ) statement of a differentially private model (None:
            not private).
        time_values: the :class:`~ehrgen.models.time_values.TimeValueModel` of
            visit gaps and lab values (None: gaps from the population, no values).
    """

    tokenizer: CodeTokenizer
    schema: CohortSchema
    network: Any
    population: Population
    facts: TrainingFacts | None = None
    length_calibration: LengthCalibration | None = None
    state: Any = None
    privacy: PrivacyStatement | None = None
    time_values: Any = None


@dataclass(frozen=True)
class ModelFolder:
    """A model folder read back, before the weights are loaded."""

    path: Path
    model: str
    config: Any
    tokenizer: CodeTokenizer
    schema: CohortSchema
    population: Population
    facts: TrainingFacts | None
    length_calibration: LengthCalibration | None
    state: dict[str, Any]
    privacy: PrivacyStatement | None = None
    time_values: Any = None  # a TimeValueModel with its weights loaded, or None


def write_model_folder(
    path: Path, model_name: str, config: Any, fitted: Fitted, card: str
) -> None:
    """Write every file of a model folder atomically, ``ehrgen.json`` last."""
    import torch
    import transformers
    from safetensors.torch import save_model

    from ehrgen import __version__

    path.mkdir(parents=True, exist_ok=True)
    (path / "ehrgen.json").unlink(missing_ok=True)  # the completion marker goes last
    write_json(path / "config.json", config.to_dict())
    fitted.tokenizer.save(path / "tokenizer.json")
    write_json(path / "schema.json", fitted.schema.to_dict())
    with atomic_file(path / "model.safetensors", overwrite=True) as tmp:
        save_model(fitted.network, str(tmp))  # shared (tied) tensors kept once
    with atomic_file(path / "model_card.md", overwrite=True) as tmp:
        tmp.write_text(card, encoding="utf-8")
    time_values = fitted.time_values
    if time_values is None:
        (path / TIME_VALUES_FILE).unlink(missing_ok=True)
    else:
        time_values.save_weights(path)
    calibration = fitted.length_calibration
    write_json(
        path / "ehrgen.json",
        {
            "format_version": FORMAT_VERSION,
            "model": model_name,
            "ehrgen_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "training": None if fitted.facts is None else fitted.facts.to_dict(),
            "population": fitted.population.to_dict(),
            "length_calibration": None
            if calibration is None
            else calibration.to_dict(),
            "state": _state_dict(fitted.state),
            "privacy": None if fitted.privacy is None else fitted.privacy.to_dict(),
            "time_values": None if time_values is None else time_values.to_dict(),
        },
    )


def _state_dict(state: Any) -> dict[str, Any]:
    """A model's typed state as JSON: its ``to_dict()``, or the mapping itself."""
    if state is None:
        return {}
    return dict(state.to_dict() if hasattr(state, "to_dict") else state)


def read_model_folder(
    path: str | Path, model_name: str, config_from_dict: Callable[[Any], Any]
) -> ModelFolder:
    """Read and check a folder written by :func:`write_model_folder` for
    ``model_name``; every error names the file."""
    path = Path(path)
    if not path.is_dir():
        raise SchemaError(
            f"{path}: not a folder; expected a {model_name} model folder."
        )
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise SchemaError(
                f"{path / name}: missing; a model folder holds {list(MODEL_FILES)} "
                f"(written by save_pretrained)."
            )
    info = _read_json(path / "ehrgen.json", _check_info)
    if info["model"] != model_name:
        raise SchemaError(
            f"{path / 'ehrgen.json'}: this folder holds a {info['model']!r} model, "
            f"not {model_name!r}; load it with ehrgen.load_model(path)."
        )
    _warn_on_version_change(info, path)
    schema = _read_json(path / "schema.json", CohortSchema.from_dict)
    population = _parse(path / "ehrgen.json", Population.from_dict, info["population"])
    if population.schema != schema:
        raise SchemaError(
            f"{path / 'ehrgen.json'}: its population summary does not match "
            f"schema.json ({population.schema} vs {schema})."
        )
    facts, calibration = info.get("training"), info.get("length_calibration")
    privacy = info.get("privacy")
    time_values = info.get("time_values")
    if time_values is not None:
        time_values = _time_values(path, time_values, schema)
    return ModelFolder(
        path=path,
        model=model_name,
        config=_read_json(path / "config.json", config_from_dict),
        tokenizer=_parse(
            path / "tokenizer.json", CodeTokenizer.load, path / "tokenizer.json"
        ),
        schema=schema,
        population=population,
        facts=None
        if facts is None
        else _parse(path / "ehrgen.json", TrainingFacts.from_dict, facts),
        length_calibration=None
        if calibration is None
        else _parse(path / "ehrgen.json", LengthCalibration.from_dict, calibration),
        state=dict(info.get("state") or {}),
        privacy=None
        if privacy is None
        else _parse(path / "ehrgen.json", PrivacyStatement.from_dict, privacy),
        time_values=time_values,
    )


def _time_values(path: Path, data: Any, schema: CohortSchema) -> Any:
    """The time-and-value model a folder records, its weights loaded."""
    from ehrgen.models.time_values import TimeValueModel

    model = _parse(
        path / "ehrgen.json", lambda d: TimeValueModel.from_dict(d, schema), data
    )
    if not (path / TIME_VALUES_FILE).is_file():
        raise SchemaError(
            f"{path / TIME_VALUES_FILE}: missing; ehrgen.json records a model of "
            f"visit gaps and lab values whose weights this file holds."
        )
    model.load_weights(path)
    return model


def model_name_of(path: str | Path) -> str:
    """The registry name recorded in a model folder's ``ehrgen.json``."""
    path = Path(path)
    info_path = path / "ehrgen.json"
    if not info_path.is_file():
        raise SchemaError(
            f"{path} is not a model folder: it has no ehrgen.json. Train one with "
            f"`ehrgen train` or save one with save_pretrained."
        )
    return _read_json(info_path, _check_info)["model"]


def _check_info(info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise ValueError("expected a JSON object")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"model format {info.get('format_version')!r}; this ehrgen reads format "
            f"{FORMAT_VERSION} (retrain the model, or use the ehrgen that wrote it)"
        )
    for key in ("model", "population"):
        if key not in info:
            raise ValueError(f"no {key!r} entry")
    return info


def _read_json(path: Path, parse: Callable[[Any], T]) -> T:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaError(f"{path}: unreadable or corrupt JSON ({error}).") from None
    return _parse(path, parse, data)


def _parse(path: Path, parse: Callable[[Any], T], data: Any) -> T:
    try:
        return parse(data)
    except SchemaError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise SchemaError(f"{path}: invalid ({error}).") from None


def _warn_on_version_change(info: Mapping[str, Any], path: Path) -> None:
    import torch

    from ehrgen import __version__

    for name, saved, current in (
        ("ehrgen", info.get("ehrgen_version"), __version__),
        ("torch", info.get("torch_version"), torch.__version__),
    ):
        if saved != current:
            logger.warning(
                "%s was saved with %s %s; running %s.", path, name, saved, current
            )


def model_card(title: str, summary: str, fitted: Fitted, architecture: str) -> str:
    """The ``model_card.md`` text shared by every model."""
    facts = fitted.facts
    n_params = sum(p.numel() for p in fitted.network.parameters())
    vocab = ", ".join(f"{m} {len(c):,}" for m, c in fitted.tokenizer.codes.items())
    features = ", ".join(fitted.schema.features) or "none"
    if facts is None:
        training = "- Not trained to completion (a checkpoint)."
    else:
        ppl = facts.best_val_perplexity
        ppl_text = f"{ppl:.2f}" if ppl is not None and math.isfinite(ppl) else "n/a"
        sizes = (
            ""
            if facts.train_visits is None or facts.train_events is None
            else f", {facts.train_visits:,} visits, {facts.train_events:,} events"
        )
        training = (
            f"- Training cohort: {facts.train_patients:,} patients{sizes}\n"
            f"- Validation cohort: {facts.val_patients:,} patients\n"
            f"- Steps: {facts.steps:,}; epochs completed: {facts.epochs_completed}\n"
            f"- Best validation perplexity (the model's own training loss): {ppl_text}"
        )
    calibration = fitted.length_calibration
    length = (
        "- Visits per patient: decided by the model alone (not calibrated)."
        if calibration is None
        else f"- Visits per patient: **calibrated to the {calibration.cohort}** "
        f"({calibration.n_patients:,} patients): a bias on the end-of-patient "
        f"decision per visit count. Visit-count figures compared with that cohort "
        f"are calibrated, not learned."
    )
    length += "\n" + _time_values_line(fitted)
    privacy = _NOT_PRIVATE if fitted.privacy is None else fitted.privacy.markdown()
    return f"""# {title} model card

{summary}

## Model
- Parameters: {n_params:,} ({architecture})
- Vocabulary: {vocab}
- Baseline features used: {features}

## Training
{training}

## Generation
{length}

## Privacy
{privacy}
"""


def _time_values_line(fitted: Fitted) -> str:
    model = fitted.time_values
    if model is None:
        return (
            "- Visit times: the first visit's date and the gaps drawn from the "
            "training population's quantiles; no lab values."
        )
    summary = model.held_out_summary()
    figures = f" {summary[0].upper()}{summary[1:]}." if summary else ""
    gaps = "visit gaps" if model.gap_bins is not None else "no visit gaps"
    return (
        f"- Visit times and lab values: a model trained beside the generator "
        f"samples {gaps} and the values of {len(model.labs)} labs given each "
        f"patient's codes ({model.n_classes} quantile bins each).{figures}"
    )


_NOT_PRIVATE = """This model was trained on real patient records without differential
privacy. Its weights can memorise rare combinations of codes and leak them: treat the
model itself as sensitive data, and release synthetic data only after the privacy
evaluation (membership and attribute inference, nearest-neighbour distances) shows
an acceptable risk."""
