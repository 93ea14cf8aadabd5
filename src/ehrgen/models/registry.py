"""Every model behind one name: what ``ehrgen train --model``, ``ehrgen benchmark``
and :func:`load_model` build.

A registry entry names the module and class of a model (imported on first use, so that
``import ehrgen`` stays free of torch) and how a size preset (``tiny``, ``small``,
``paper``) becomes its config.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehrgen.errors import ConfigError, did_you_mean

__all__ = [
    "MODELS",
    "PRESETS",
    "ModelEntry",
    "build_model",
    "load_model",
    "model_class",
    "private_models",
]

PRESETS = ("tiny", "small", "paper")


@dataclass(frozen=True)
class ModelEntry:
    """Where a registered model lives and how its presets are made.

    Attributes:
        module, cls: the model's module and class name.
        config: the name of its config class (in the same module).
        changes: config fields set on top of the preset (a variant of a model).
    """

    module: str
    cls: str
    config: str
    changes: dict[str, Any] = field(default_factory=dict)

    def model_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)

    def build(self, preset: str) -> Any:
        module = importlib.import_module(self.module)
        config_class = getattr(module, self.config)
        # A model without its own preset of that name uses its default sizes.
        make = getattr(config_class, preset, None) or config_class
        return getattr(module, self.cls)(make().replace(**self.changes))


MODELS: dict[str, ModelEntry] = {
    "promptehr": ModelEntry(
        "ehrgen.models.promptehr.promptehr", "PromptEHR", "PromptEHRConfig"
    ),
    "promptehr-one-pass": ModelEntry(
        "ehrgen.models.promptehr.promptehr",
        "PromptEHR",
        "PromptEHRConfig",
        {"objective": "one-pass"},
    ),
    "promptehr-noprompt": ModelEntry(
        "ehrgen.models.promptehr.promptehr",
        "PromptEHR",
        "PromptEHRConfig",
        {"use_prompts": False},
    ),
    "lstm-mlp": ModelEntry(
        "ehrgen.models.baselines.lstm_mlp", "LSTMMLP", "LSTMMLPConfig"
    ),
    "lstm-medgan": ModelEntry(
        "ehrgen.models.baselines.lstm_medgan", "LSTMMedGAN", "LSTMMedGANConfig"
    ),
    "synteg": ModelEntry("ehrgen.models.baselines.synteg", "SynTEG", "SynTEGConfig"),
    "gpt2": ModelEntry(
        "ehrgen.models.baselines.gpt2", "GPT2Baseline", "GPT2BaselineConfig"
    ),
    "halo": ModelEntry("ehrgen.models.baselines.halo", "HALO", "HALOConfig"),
}


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(
            f"Unknown model {name!r}; known models are {list(MODELS)}."
            f"{did_you_mean(name, MODELS)}"
        )
    return MODELS[name]


def model_class(name: str) -> type:
    """The class of a registered model."""
    return _entry(name).model_class()


def private_models() -> list[str]:
    """The registered models that can be trained with differential privacy."""
    return [name for name, e in MODELS.items() if e.model_class().supports_dp]


def build_model(name: str, preset: str = "small") -> Any:
    """An unfitted model by registry name and size preset.

    Example:
        >>> build_model("promptehr", "tiny").config.d_model
        32
    """
    entry = _entry(name)
    if preset not in PRESETS:
        raise ConfigError(
            f"Unknown preset {preset!r}; use one of {list(PRESETS)}."
            f"{did_you_mean(preset, PRESETS)}"
        )
    return entry.build(preset)


def load_model(path: str | Path) -> Any:
    """A fitted model from its folder, whichever model wrote it (its ``ehrgen.json``
    names it).

    Example:
        >>> import tempfile
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> model = build_model("lstm-mlp", "tiny").fit(
        ...     demo_cohort(8, seed=0), training=TrainingConfig(epochs=1)
        ... )
        >>> folder = model.save_pretrained(tempfile.mkdtemp() + "/model")
        >>> type(load_model(folder)).__name__
        'LSTMMLP'
    """
    from ehrgen.models.folder import model_name_of

    name = model_name_of(path)
    if name not in MODELS:
        raise ConfigError(
            f"{Path(path) / 'ehrgen.json'}: unknown model {name!r}; this version of "
            f"ehrgen loads {list(MODELS)}."
        )
    return model_class(name).from_pretrained(path)
