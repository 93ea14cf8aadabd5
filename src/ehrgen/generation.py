"""Sampling settings and the batched, KV-cached, grammar-constrained visit sampler.

A visit is decoded for many patients at once. The encoder runs once per visit (over
each patient's history and prompts); the decoder then emits one token per step with
its key/value cache, so each step costs one position, not the whole prefix.

Every step is constrained by the grammar of a visit, so every output is well formed:

* a visit opens with ``<v>`` (or the patient ends with ``<eos>``, when allowed);
* modality blocks follow the schema's order, each opened and closed by its tokens;
* inside a block only that modality's codes may come, each at most once, and at most
  ``max_codes_per_modality`` of them; a block closes only after one code;
* ``</v>`` ends a visit that holds at least one code.

Forced codes (visit completion) are emitted in place of samples when their block is
open, and their modality cannot be skipped. Each patient stops on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ehrgen._config import ConfigMixin, check, check_positive_ints

if TYPE_CHECKING:
    from ehrgen.models.promptehr.modeling import PromptBart
    from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["GenerationConfig", "VisitSampler"]

# Decoding phases of a row.
_BEFORE, _BETWEEN, _INSIDE, _DONE = 0, 1, 2, 3


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
    max_visits: int = 20
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
        check_positive_ints(self, "max_visits", "max_codes_per_modality", "batch_size")


@dataclass
class SampledVisit:
    """One row's output: the visit's tokens (``<v>`` ... ``</v>``), or ``None`` when
    the patient ended (``<eos>``)."""

    tokens: list[int] | None


class VisitSampler:
    """Decode visits (or single modality blocks) for a batch of patients.

    Args:
        model: the trained network.
        tokenizer: its tokenizer.
        config: sampling settings.
        generator: the source of randomness (a seeded ``torch.Generator``).
    """

    def __init__(
        self,
        model: PromptBart,
        tokenizer: CodeTokenizer,
        config: GenerationConfig,
        generator: torch.Generator,
    ) -> None:
        self.model, self.tok, self.config = model, tokenizer, config
        self.generator = generator
        self.device = next(model.parameters()).device
        names = tokenizer.modalities
        self.n_modalities = len(names)
        self.open_ids = torch.tensor([tokenizer.open_ids[m] for m in names])
        self.close_ids = torch.tensor([tokenizer.close_ids[m] for m in names])
        self.token_modality = torch.as_tensor(
            tokenizer.token_modality, dtype=torch.long
        )
        vocab = tokenizer.vocab_size
        self.open_modality = torch.full((vocab,), -1, dtype=torch.long)
        self.open_modality[self.open_ids] = torch.arange(self.n_modalities)
        self.close_modality = torch.full((vocab,), -1, dtype=torch.long)
        self.close_modality[self.close_ids] = torch.arange(self.n_modalities)

    # ---- public entry points

    @torch.no_grad()
    def visits(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        allow_end: np.ndarray,
        forced: Sequence[dict[int, list[int]]] | None = None,
        end_bias: np.ndarray | None = None,
    ) -> list[list[int] | None]:
        """One visit per row (``None`` where the row chose ``<eos>``).

        Args:
            sources: encoder token ids per row (``<bos>`` history ``<eos>``).
            categorical, numerical: (B, ·) baseline features of each row.
            allow_end: (B,) whether ``<eos>`` (end of patient) may be chosen.
            forced: per row, modality index -> token ids that the visit must contain.
            end_bias: (B,) added to the logit of ``<eos>`` (length calibration).
        """
        state = _State.start(len(sources), self.tok.vocab_size, self.n_modalities)
        state.allow_end = torch.as_tensor(np.asarray(allow_end, dtype=bool))
        if end_bias is not None:
            state.end_bias = torch.as_tensor(np.asarray(end_bias, dtype=np.float32))
        if forced is not None:
            state.set_forced(forced, self.n_modalities)
        prefix = torch.full((len(sources), 1), self.tok.bos_id, dtype=torch.long)
        rows = self._run(sources, categorical, numerical, prefix, state)
        out: list[list[int] | None] = []
        for tokens in rows:
            out.append(None if tokens[:1] == [self.tok.eos_id] else tokens)
        return out

    @torch.no_grad()
    def blocks(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        modality: int,
    ) -> list[list[int]]:
        """The codes of one modality per row, decoded after ``<bos> <k>`` (the
        cross-modal prompt); each list holds at least one code."""
        n = len(sources)
        state = _State.start(n, self.tok.vocab_size, self.n_modalities)
        state.phase[:] = _INSIDE
        state.open[:] = modality
        state.single_block = True
        prefix = torch.tensor([[self.tok.bos_id, int(self.open_ids[modality])]] * n)
        rows = self._run(sources, categorical, numerical, prefix, state)
        return [[t for t in row if t != int(self.close_ids[modality])] for row in rows]

    # ---- decoding loop

    def _run(self, sources, categorical, numerical, prefix, state) -> list[list[int]]:
        model, device = self.model, self.device
        input_ids, mask = _pad_right(sources, self.tok.pad_id)
        categorical, numerical = categorical.to(device), numerical.to(device)
        states, enc_mask = model.encode(
            input_ids.to(device), mask.to(device), categorical, numerical
        )
        emitted: list[list[int]] = [[] for _ in range(len(sources))]
        decoder_input, cache = prefix.to(device), None
        history = prefix.to(device)
        for _ in range(self._max_steps()):
            step_input = decoder_input if self.config.use_cache else history
            hidden, cache = model.decode(
                step_input,
                None,
                states,
                enc_mask,
                categorical,
                numerical,
                cache=cache if self.config.use_cache else None,
                use_cache=self.config.use_cache,
            )
            logits = hidden[:, -1].float() @ model.bart.shared.weight.float().T
            logits = (logits + model.final_logits_bias.float()).cpu()
            token = self._choose(logits, state)
            for row in torch.nonzero(state.phase != _DONE).flatten().tolist():
                emitted[row].append(int(token[row]))
            state.advance(token, self)
            if bool((state.phase == _DONE).all()):
                break
            decoder_input = token.unsqueeze(1).to(device)
            history = torch.cat([history, decoder_input], 1)
        return emitted

    def _max_steps(self) -> int:
        per_block = self.config.max_codes_per_modality + 2
        return 2 + self.n_modalities * per_block

    def _choose(self, logits: torch.Tensor, state: _State) -> torch.Tensor:
        """Forced token where one is due, else a sample from the allowed tokens."""
        allowed = self._allowed(state)
        if state.end_bias is not None:
            logits[:, self.tok.eos_id] += state.end_bias
        logits = logits.masked_fill(~allowed, float("-inf"))
        if self.config.greedy:
            token = logits.argmax(-1)
        else:
            token = _sample(logits, self.config, self.generator)
        forced = state.due_forced()
        token = torch.where(forced >= 0, forced, token)
        return torch.where(state.phase == _DONE, self.tok.pad_id, token)

    def _allowed(self, state: _State) -> torch.Tensor:
        """(B, V) the tokens the grammar allows next."""
        n, vocab, tok = len(state.phase), self.tok.vocab_size, self.tok
        allowed = torch.zeros(n, vocab, dtype=torch.bool)
        before = state.phase == _BEFORE
        allowed[before, tok.visit_open_id] = True
        allowed[before & state.allow_end, tok.eos_id] = True
        between = state.phase == _BETWEEN
        index = torch.arange(self.n_modalities)
        pending = state.pending_modality()  # (B,) first modality with forced codes left
        limit = torch.where(pending >= 0, pending, self.n_modalities - 1)
        may_open = (index > state.last.unsqueeze(1)) & (index <= limit.unsqueeze(1))
        may_open &= between.unsqueeze(1)
        allowed[:, self.open_ids] = may_open
        allowed[between & (state.in_visit > 0) & (pending < 0), tok.visit_close_id] = (
            True
        )
        inside = state.phase == _INSIDE
        same = self.token_modality.unsqueeze(0) == state.open.unsqueeze(1)  # (B, V)
        room = state.in_block < self.config.max_codes_per_modality
        allowed |= same & ~state.used & (inside & room).unsqueeze(1)
        rows = torch.nonzero(inside & (state.in_block > 0)).flatten()
        allowed[rows, self.close_ids[state.open[rows]]] = True
        allowed[state.phase == _DONE, tok.pad_id] = True  # finished rows idle on <pad>
        # A row with no allowed token (a full vocabulary block) may close it.
        stuck = inside & ~allowed.any(1)
        allowed[stuck, self.close_ids[state.open[stuck].clamp(min=0)]] = True
        return allowed


@dataclass
class _State:
    """Per-row grammar state of the batch being decoded."""

    phase: torch.Tensor  # (B,) _BEFORE / _BETWEEN / _INSIDE / _DONE
    last: torch.Tensor  # (B,) index of the last closed modality, -1 for none
    open: torch.Tensor  # (B,) index of the open modality, -1 for none
    in_block: torch.Tensor  # (B,) codes in the open block
    in_visit: torch.Tensor  # (B,) codes in the visit
    used: torch.Tensor  # (B, V) codes already in the visit
    allow_end: torch.Tensor  # (B,)
    forced: torch.Tensor  # (B, M, K) forced token ids, -1 padded
    forced_next: torch.Tensor  # (B, M) how many forced codes were emitted
    single_block: bool = False
    end_bias: torch.Tensor | None = None  # (B,) added to the <eos> logit

    @classmethod
    def start(cls, n: int, vocab: int, n_modalities: int) -> _State:
        minus = torch.full((n,), -1, dtype=torch.long)
        return cls(
            phase=torch.full((n,), _BEFORE, dtype=torch.long),
            last=minus.clone(),
            open=minus.clone(),
            in_block=torch.zeros(n, dtype=torch.long),
            in_visit=torch.zeros(n, dtype=torch.long),
            used=torch.zeros(n, vocab, dtype=torch.bool),
            allow_end=torch.zeros(n, dtype=torch.bool),
            forced=torch.full((n, n_modalities, 0), -1, dtype=torch.long),
            forced_next=torch.zeros(n, n_modalities, dtype=torch.long),
        )

    def set_forced(
        self, forced: Sequence[dict[int, list[int]]], n_modalities: int
    ) -> None:
        width = max((len(v) for row in forced for v in row.values()), default=0)
        table = torch.full((len(forced), n_modalities, width), -1, dtype=torch.long)
        for b, row in enumerate(forced):
            for m, ids in row.items():
                table[b, m, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        self.forced = table

    def forced_left(self) -> torch.Tensor:
        """(B, M) forced codes not yet emitted."""
        total = (self.forced >= 0).sum(-1)
        return total - self.forced_next

    def pending_modality(self) -> torch.Tensor:
        """(B,) the first modality after ``last`` with forced codes left, or -1."""
        n_modalities = self.forced_next.shape[1]
        left = (self.forced_left() > 0) & (
            torch.arange(n_modalities).unsqueeze(0) > self.last.unsqueeze(1)
        )
        first = (
            torch.where(left, torch.arange(n_modalities), n_modalities).min(1).values
        )
        return torch.where(first < n_modalities, first, -1)

    def due_forced(self) -> torch.Tensor:
        """(B,) the forced token due now (inside a block with forced codes left)."""
        due = torch.full_like(self.phase, -1)
        if self.forced.shape[-1] == 0:
            return due
        rows = torch.nonzero((self.phase == _INSIDE) & (self.open >= 0)).flatten()
        if len(rows):
            m = self.open[rows]
            k = self.forced_next[rows, m]
            has = k < (self.forced[rows, m] >= 0).sum(-1)
            value = self.forced[rows, m, k.clamp(max=self.forced.shape[-1] - 1)]
            due[rows[has]] = value[has]
        return due

    def advance(self, token: torch.Tensor, sampler: VisitSampler) -> None:
        """Update every row after it emitted ``token``."""
        tok = sampler.tok
        live = self.phase != _DONE
        opened = live & (token == tok.visit_open_id)
        self.phase[opened] = _BETWEEN
        self.phase[live & ((token == tok.eos_id) | (token == tok.visit_close_id))] = (
            _DONE
        )
        modality = sampler.open_modality[token]
        entering = live & (modality >= 0)
        self.phase[entering], self.open[entering] = _INSIDE, modality[entering]
        self.in_block[entering] = 0
        code = live & (sampler.token_modality[token] >= 0)
        rows = torch.nonzero(code).flatten()
        self.used[rows, token[rows]] = True
        self.in_block[code] += 1
        self.in_visit[code] += 1
        if self.forced.shape[-1]:
            m = self.open[rows]
            matches = self.forced[rows, m] == token[rows].unsqueeze(1)
            self.forced_next[rows[matches.any(1)], m[matches.any(1)]] += 1
        closing = live & (sampler.close_modality[token] >= 0)
        self.last[closing], self.open[closing] = self.open[closing], -1
        self.phase[closing] = _DONE if self.single_block else _BETWEEN


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


def _pad_right(
    rows: Sequence[np.ndarray], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(np.asarray(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
