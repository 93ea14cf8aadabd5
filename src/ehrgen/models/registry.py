"""Every model behind one name: what ``ehrgen benchmark`` and evaluation build.

A registry entry turns a size preset (``tiny``, ``small``, ``paper``) into an unfitted
model implementing :class:`ehrgen.models.base.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["MODELS", "build_model"]


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
