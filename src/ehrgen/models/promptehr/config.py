"""The architecture of a PromptEHR model: ``PromptEHRConfig`` and its presets.

Fields handed to :class:`transformers.BartConfig` keep BART's names. The vocabulary
size, special token ids and prompt layout are not here: they follow from the tokenizer
and the cohort schema saved beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehrgen._config import ConfigMixin, check, check_positive_ints

__all__ = ["PromptEHRConfig"]

_ACTIVATIONS = ("gelu", "relu", "silu", "gelu_new", "tanh")
OBJECTIVES = ("one-pass", "paper")


@dataclass(frozen=True, kw_only=True)
class PromptEHRConfig(ConfigMixin):
    """Architecture of the prompt-conditioned BART.

    Example:
        >>> PromptEHRConfig.tiny().d_model
        32
        >>> PromptEHRConfig.paper().encoder_layers
        6
    """

    d_model: int = 128
    encoder_layers: int = 3
    decoder_layers: int = 3
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 512
    decoder_ffn_dim: int = 512
    dropout: float = 0.1
    # Dropping attention weights keeps CPU and GPU attention off their fused kernels,
    # which never hold the (length x length) weights: measured 3.7x slower and 3x
    # the memory on the demo cohort's longest patients (docs/benchmarks.md).
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    # Positions cover the prompt vectors too (one per baseline feature).
    max_position_embeddings: int = 1024
    init_std: float = 0.02
    # sqrt(d_model) scaling of token embeddings, as BART does.
    scale_embedding: bool = True
    # d0 of METHOD.md: the hidden width of the prompt featurizer, (x W0 + b) W1.
    prompt_hidden_dim: int = 64
    # False: no conditional prompts at all (the paper's ablation, "promptehr-noprompt").
    use_prompts: bool = True
    # How the network learns and reads a patient: "paper" (one (history, target)
    # example per target, a bidirectional encoder, ``tasks``) or "one-pass" (a
    # visit-block-causal encoder and every target of a patient in one pass,
    # ``one_pass``). "paper" stays the default until "one-pass" wins at equal
    # wall-clock time (docs/benchmarks.md, "One-pass objective").
    objective: str = "paper"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive_ints(
            self,
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
            "prompt_hidden_dim",
        )
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            check(
                self.d_model % heads == 0,
                name,
                f"{side}_attention_heads",
                f"a divisor of d_model ({self.d_model})",
                heads,
            )
        for field in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, field)
            check(0.0 <= value < 1.0, name, field, "in [0, 1)", value)
        check(self.init_std > 0, name, "init_std", "positive", self.init_std)
        ok = self.objective in OBJECTIVES
        check(ok, name, "objective", f"one of {list(OBJECTIVES)}", self.objective)
        check(
            self.activation_function in _ACTIVATIONS,
            name,
            "activation_function",
            f"one of {list(_ACTIVATIONS)}",
            self.activation_function,
        )

    # ---- presets

    @classmethod
    def tiny(cls, **changes: Any) -> PromptEHRConfig:
        """A few thousand parameters: for tests and docs; trains in seconds."""
        sizes = _both_sides(layers=1, heads=2, ffn=64)
        no_dropout = {"dropout": 0.0, "attention_dropout": 0.0}
        small = {"d_model": 32, "max_position_embeddings": 512, "prompt_hidden_dim": 16}
        return cls(**small, **sizes, **no_dropout).replace(**changes)

    @classmethod
    def small(cls, **changes: Any) -> PromptEHRConfig:
        """A few million parameters: the CPU default."""
        return cls().replace(**changes)

    @classmethod
    def paper(cls, **changes: Any) -> PromptEHRConfig:
        """BART-base sizes, as in the paper: 6+6 layers, d_model 768, 12 heads."""
        sizes = _both_sides(layers=6, heads=12, ffn=3072)
        bart_base = {"d_model": 768, "attention_dropout": 0.1, "prompt_hidden_dim": 128}
        return cls(**bart_base, **sizes).replace(**changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> PromptEHRConfig:
        """A preset by name: ``tiny``, ``small`` or ``paper``."""
        presets = {"tiny": cls.tiny, "small": cls.small, "paper": cls.paper}
        check(name in presets, cls.__name__, "preset", f"one of {list(presets)}", name)
        return presets[name](**changes)

    def bart_kwargs(self) -> dict[str, Any]:
        """The fields that :class:`transformers.BartConfig` takes, by BART's names."""
        data = self.to_dict()
        for own in ("prompt_hidden_dim", "use_prompts", "objective"):
            data.pop(own)
        return data


def _both_sides(layers: int, heads: int, ffn: int) -> dict[str, int]:
    """The same depth, heads and feed-forward width for the encoder and decoder."""
    return {
        f"{side}_{name}": value
        for side in ("encoder", "decoder")
        for name, value in (("layers", layers), ("attention_heads", heads),
                            ("ffn_dim", ffn))
    }  # fmt: skip
