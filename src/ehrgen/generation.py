"""Sampling settings and the batched, KV-cached, grammar-constrained visit sampler.

A visit is decoded for many patients at once. The sampler knows a model only through
the small :class:`Decoder` interface: ``start`` reads each row's context once (an
encoder-decoder encodes it; a decoder-only model reads it as a causal prefix), then
``next_logits`` gives the logits of the next token after each token written, with the
model's key/value cache when ``GenerationConfig.use_cache`` is on, so each step costs
one position, not the whole prefix. PromptEHR's network and the GPT-2 baseline
implement it; this module imports no model.

Every step is constrained by the grammar of a visit
(:class:`~ehrgen.tokens.grammar.VisitGrammar`), so every output is well formed: a
visit opens with ``<v>`` (or the patient ends with ``<eos>``, when allowed); each
modality writes at most one block, opened and closed by its tokens, holding 1 to
``max_codes_per_modality`` distinct codes of that modality; ``</v>`` ends a visit that
holds a code. Forced codes (visit completion) are written in place of samples when
their block is open, and their modality must be written. Each patient stops on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.tokens.grammar import VisitGrammar

if TYPE_CHECKING:
    from ehrgen.tokens.grammar import VisitState
    from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["DEFAULT_MAX_VISITS", "Decoder", "GenerationConfig", "VisitSampler"]

DEFAULT_MAX_VISITS = 20  # the visit cap of a model that does not know its cohort's


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(ConfigMixin):
    """How to sample.

    Example:
        >>> GenerationConfig(temperature=0.8, top_p=0.95).top_p
        0.95
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    # Greedy decoding: always the most likely allowed token (temperature ignored).
    greedy: bool = False
    # None: the longest history of the model's training cohort (kept with the model;
    # 20 for a model saved without it), so lifelong records are not cut short.
    max_visits: int | None = None
    max_codes_per_modality: int = 20
    batch_size: int = 64
    # The key/value cache; off only to measure what it saves.
    use_cache: bool = True
    # Apply the model's end-of-patient calibration, when it has one (see
    # PromptEHR.calibrate_length): visits per patient then follow the training cohort.
    calibrated_length: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        check(self.temperature > 0, name, "temperature", "positive", self.temperature)
        ok = self.top_k is None or (isinstance(self.top_k, int) and self.top_k > 0)
        check(ok, name, "top_k", "a positive int or None", self.top_k)
        ok = self.top_p is None or 0 < self.top_p <= 1
        check(ok, name, "top_p", "in (0, 1] or None", self.top_p)
        check_positive_ints(self, "max_codes_per_modality", "batch_size")
        visits = self.max_visits
        ok = visits is None or (
            isinstance(visits, int) and not isinstance(visits, bool) and visits > 0
        )
        check(ok, name, "max_visits", "a positive int or None", visits)

    def with_visit_cap(self, longest: int | None) -> GenerationConfig:
        """This config with ``max_visits`` set, from ``longest`` (the training
        cohort's longest history) when it is None."""
        if self.max_visits is not None:
            return self
        return self.replace(max_visits=longest or DEFAULT_MAX_VISITS)


@runtime_checkable
class Decoder(Protocol):
    """What the sampler needs from a model: the next-token logits of a batch.

    A decoding ``state`` is the model's own object (encoder output, tokens read, key/
    value cache); the sampler only passes it back.
    """

    def start(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        prefix: torch.Tensor,
        *,
        use_cache: bool,
    ) -> Any:
        """Read each row's context and prepare to decode.

        Args:
            sources: per row, the token ids of its context (history).
            categorical, numerical: (B, ·) baseline features (may be (B, 0) for a model
                that reads them from its context).
            prefix: (B, L) tokens written after the start of the output, before the
                first sampled one (``<k>`` to decode one modality block; L may be 0).
            use_cache: keep a key/value cache and feed one token per step.
        """
        ...

    def next_logits(self, state: Any, tokens: torch.Tensor | None) -> torch.Tensor:
        """(B, V') float logits of the next token (V' >= the tokenizer's vocabulary;
        extra columns are ignored), after ``tokens`` (B,) were written, or after the
        prefix when ``tokens`` is None (the first call)."""
        ...


class VisitSampler:
    """Decode visits (or single modality blocks) for a batch of patients.

    Args:
        decoder: the model, through the :class:`Decoder` interface.
        tokenizer: its tokenizer.
        config: sampling settings.
        generator: the source of randomness (a seeded ``torch.Generator``).
    """

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: CodeTokenizer,
        config: GenerationConfig,
        generator: torch.Generator,
    ) -> None:
        self.decoder, self.tok, self.config = decoder, tokenizer, config
        self.generator = generator
        self.grammar = VisitGrammar(tokenizer)

    def max_steps(self) -> int:
        """The most tokens one visit may take (the longest well-formed visit)."""
        return self.grammar.max_visit_length(self.config.max_codes_per_modality)

    # ---- public entry points

    @torch.no_grad()
    def visits(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        allow_end: np.ndarray,
        forced: Sequence[Mapping[int, Sequence[int]]] | None = None,
        end_bias: np.ndarray | None = None,
    ) -> list[list[int] | None]:
        """One visit per row (``None`` where the row chose ``<eos>``).

        Args:
            sources: the context of each row (see :meth:`Decoder.start`).
            categorical, numerical: (B, ·) baseline features of each row.
            allow_end: (B,) whether ``<eos>`` (end of patient) may be chosen.
            forced: per row, modality index -> token ids that the visit must contain.
            end_bias: (B,) added to the logit of ``<eos>`` (length calibration).
        """
        state = self.grammar.start(
            len(sources),
            max_codes=self.config.max_codes_per_modality,
            allow_end=allow_end,
            forced=forced,
            end_bias=end_bias,
        )
        prefix = torch.zeros(len(sources), 0, dtype=torch.long)
        rows = self._run(sources, categorical, numerical, prefix, state)
        return [None if row[:1] == [self.tok.eos_id] else row for row in rows]

    @torch.no_grad()
    def blocks(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        modality: int,
    ) -> list[list[int]]:
        """The codes of one modality per row, decoded after ``<k>`` (the cross-modal
        prompt); each list holds at least one code."""
        n, close = len(sources), self.tok.close_ids[self.tok.modalities[modality]]
        state = self.grammar.start_block(
            n, modality, max_codes=self.config.max_codes_per_modality
        )
        prefix = torch.full((n, 1), self.tok.open_ids[self.tok.modalities[modality]])
        rows = self._run(sources, categorical, numerical, prefix, state)
        return [[t for t in row if t != close] for row in rows]

    # ---- decoding loop

    def _run(self, sources, categorical, numerical, prefix, state) -> list[list[int]]:
        """Sample until every row is done (or the longest visit is written)."""
        grammar, vocab = self.grammar, self.tok.vocab_size
        decoding = self.decoder.start(
            sources, categorical, numerical, prefix, use_cache=self.config.use_cache
        )
        longest = int(state.forced_left().max()) if state.forced.numel() else 0
        steps = grammar.max_visit_length(
            max(self.config.max_codes_per_modality, longest)
        )
        written: list[list[int]] = [[] for _ in sources]
        token = None
        for _ in range(steps):
            logits = self.decoder.next_logits(decoding, token)[:, :vocab].float()
            token = self._choose(grammar.constrain(state, logits.cpu()), state)
            for row in torch.nonzero(~state.done).flatten().tolist():
                written[row].append(int(token[row]))
            grammar.advance(state, token)
            if bool(state.done.all()):
                break
        return written

    def _choose(self, logits: torch.Tensor, state: VisitState) -> torch.Tensor:
        """Forced token where one is due, else a sample from the allowed tokens."""
        if self.config.greedy:
            sampled = logits.argmax(-1)
        else:
            sampled = _sample(logits, self.config, self.generator)
        return self.grammar.choose(state, sampled)


def _sample(
    logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator
) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) sampling over (B, V) logits."""
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        ordered, index = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        # Drop tokens once the mass before them already reaches top_p.
        drop = (cumulative - torch.softmax(ordered, -1)) >= config.top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, ordered)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
