"""Every model behind one name: what ``ehrgen benchmark`` and evaluation build.

A registry entry turns a size preset (``tiny``, ``small``, ``paper``) into an unfitted
model implementing :class:`ehrgen.models.base.Generator`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["MODELS", "build_model", "load_model"]


def _promptehr(preset: str, prompts: bool = True) -> Any:
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig

    return PromptEHR(PromptEHRConfig.preset(preset, use_prompts=prompts))


def _lstm_mlp(preset: str) -> Any:
    from ehrgen.models.baselines.lstm_mlp import LSTMMLP, LSTMMLPConfig

    return LSTMMLP(LSTMMLPConfig.tiny() if preset == "tiny" else LSTMMLPConfig())


def _gpt2(preset: str) -> Any:
    from ehrgen.models.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig

    presets = {
        "tiny": GPT2BaselineConfig.tiny,
        "small": GPT2BaselineConfig.small,
        "paper": GPT2BaselineConfig.paper,
    }
    return GPT2Baseline(presets[preset]())


MODELS: dict[str, Callable[[str], Any]] = {
    "promptehr": _promptehr,
    "promptehr-noprompt": lambda preset: _promptehr(preset, prompts=False),
    "lstm-mlp": _lstm_mlp,
    "gpt2": _gpt2,
}


def build_model(name: str, preset: str = "small") -> Any:
    """An unfitted model by registry name and size preset.

    Example:
        >>> build_model("promptehr", "tiny").config.d_model
        32
    """
    if name not in MODELS:
        raise ConfigError(
            f"Unknown model {name!r}; known models are {list(MODELS)}."
            f"{did_you_mean(name, MODELS)}"
        )
    if preset not in ("tiny", "small", "paper"):
        raise ConfigError(f"Unknown preset {preset!r}; use tiny, small or paper.")
    return MODELS[name](preset)


def _loader(name: str) -> Callable[[Path], Any]:
    if name == "promptehr":
        from ehrgen.models.promptehr import PromptEHR

        return PromptEHR.from_pretrained
    if name == "lstm-mlp":
        from ehrgen.models.baselines.lstm_mlp import LSTMMLP

        return LSTMMLP.from_pretrained
    from ehrgen.models.baselines.gpt2 import GPT2Baseline

    return GPT2Baseline.from_pretrained


def load_model(path: str | Path) -> Any:
    """A fitted model from its folder, whichever model wrote it (its ``ehrgen.json``
    names it)."""
    path = Path(path)
    info_path = path / "ehrgen.json"
    if not info_path.is_file():
        raise ConfigError(
            f"{path} is not a model folder: it has no ehrgen.json. Train one with "
            f"`ehrgen train` or save one with save_pretrained."
        )
    try:
        name = json.loads(info_path.read_text(encoding="utf-8")).get("model")
    except (ValueError, AttributeError) as error:
        raise ConfigError(
            f"{info_path}: not a valid model description ({error})."
        ) from None
    if name not in ("promptehr", "lstm-mlp", "gpt2"):
        raise ConfigError(
            f"{info_path}: unknown model {name!r}; this version of ehrgen loads "
            f"promptehr, lstm-mlp and gpt2 folders."
        )
    return _loader(name)(path)
