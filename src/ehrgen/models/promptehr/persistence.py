"""PromptEHR model folders: write and read them, with no pickle.

A folder holds ``config.json``, ``tokenizer.json``, ``schema.json``,
``model.safetensors``, ``model_card.md`` and ``ehrgen.json`` (format and library
versions, training facts, the training population in aggregate). Each file is written
atomically and ``ehrgen.json`` last: a folder without it is incomplete.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrgen._io import atomic_file, write_json
from ehrgen.data import CohortSchema
from ehrgen.errors import SchemaError
from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = [
    "MODEL_FILES",
    "Fitted",
    "read_json",
    "read_model_files",
    "write_model_files",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "schema.json",
    "model.safetensors",
    "ehrgen.json",
)


@dataclass
class Fitted:
    """A trained PromptEHR's state: what a model folder holds."""

    tokenizer: CodeTokenizer
    schema: CohortSchema
    model: Any  # PromptBart
    info: dict[str, Any]


def write_model_files(fitted: Fitted, config: PromptEHRConfig, path: Path) -> None:
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
        save_model(fitted.model, str(tmp))
    with atomic_file(path / "model_card.md", overwrite=True) as tmp:
        tmp.write_text(_model_card(fitted, config), encoding="utf-8")
    write_json(
        path / "ehrgen.json",
        {
            "format_version": FORMAT_VERSION,
            "model": "promptehr",
            "ehrgen_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "training_info": fitted.info,
        },
    )


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SchemaError(
            f"{path}: missing; a PromptEHR model folder holds {list(MODEL_FILES)} "
            f"(written by save_pretrained)."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaError(f"{path}: corrupt JSON ({error}).") from None


def read_model_files(
    path: Path,
) -> tuple[CodeTokenizer, CohortSchema, PromptEHRConfig]:
    if not path.is_dir():
        raise SchemaError(f"{path}: not a folder; expected a PromptEHR model folder.")
    for name in MODEL_FILES:
        if not (path / name).exists():
            raise SchemaError(
                f"{path / name}: missing; a PromptEHR model folder holds "
                f"{list(MODEL_FILES)} (written by save_pretrained)."
            )
    config = PromptEHRConfig.from_dict(read_json(path / "config.json"))
    schema = CohortSchema.from_dict(read_json(path / "schema.json"))
    tokenizer = CodeTokenizer.load(path / "tokenizer.json")
    return tokenizer, schema, config


def check_versions(info: dict[str, Any], path: Path) -> None:
    import torch

    from ehrgen import __version__

    if info.get("format_version") != FORMAT_VERSION:
        raise SchemaError(
            f"{path / 'ehrgen.json'}: model format {info.get('format_version')!r}; "
            f"this ehrgen reads format {FORMAT_VERSION}."
        )
    for name, saved, current in (
        ("ehrgen", info.get("ehrgen_version"), __version__),
        ("torch", info.get("torch_version"), torch.__version__),
    ):
        if saved != current:
            logger.warning(
                "%s was saved with %s %s; running %s.", path, name, saved, current
            )


def _model_card(fitted: Fitted, config: PromptEHRConfig) -> str:
    info = fitted.info
    n_params = sum(p.numel() for p in fitted.model.parameters())
    ppl = info.get("best_val_perplexity")
    ppl_text = f"{ppl:.2f}" if isinstance(ppl, float) and math.isfinite(ppl) else "n/a"
    vocab = ", ".join(f"{m} {len(c):,}" for m, c in fitted.tokenizer.codes.items())
    features = ", ".join(fitted.schema.features) or "none"
    return f"""# PromptEHR model card

A prompt-conditioned BART (ehrgen) that generates synthetic longitudinal patient
records.

## Model
- Parameters: {n_params:,} (d_model {config.d_model}, {config.encoder_layers}+\
{config.decoder_layers} layers)
- Vocabulary: {vocab}
- Baseline features used as prompts: {features}

## Training
- Training cohort: {info.get("train_patients", "?")} patients, \
{info.get("train_visits", "?")} visits, {info.get("train_events", "?")} events
- Validation cohort: {info.get("val_patients", 0)} patients
- Steps: {info.get("steps", "?")}; epochs completed: {info.get("epochs_completed", "?")}
- Best validation perplexity (all target tokens): {ppl_text}

## Privacy
This model was trained on real patient records. Its weights can memorise rare
combinations of codes and leak them: treat the model itself as sensitive data, and
release synthetic data only after the privacy evaluation (membership and attribute
inference, nearest-neighbour distances) shows an acceptable risk.
"""
