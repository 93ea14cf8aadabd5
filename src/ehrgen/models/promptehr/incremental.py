"""Generation that never re-reads a history: the one-pass model's encoder cache.

Under the one-pass objective the encoder is block-causal by visit, so the encoder
states (and each layer's keys and values) of visits 1..t do not change when visit t+1
is appended. :class:`PatientCache` keeps them for a batch of patients; appending a
visit runs the encoder over that visit's tokens only, and the decoder of the next
visit reads the cached states (its cross-attention keys and values are cached too).
The decoder prompts see the encoder's prompts and ``<bos>`` only, so their keys and
values are computed once per patient. :meth:`PatientCache.decoder` is the sampler's
:class:`~ehrgen.generation.Decoder` for some rows of the batch; it decodes with the
decoder's own key/value cache within a visit.

Greedy decoding with the cache gives what the uncached path (each history encoded
again) gives, as long as the history fits ``max_source_length``; past it, the cache
is rebuilt from the newest visits that fit half the budget, as training's windows
do, where the uncached path keeps as many as fit the whole budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ehrgen.models.promptehr import blockwise

__all__ = ["PatientCache"]


class PatientCache:
    """Encoder keys, values and states of a batch of patients' visits so far.

    Args:
        net: a one-pass :class:`~ehrgen.models.promptehr.modeling.PromptBart`.
        categorical, numerical: (B, ·) baseline features of each row.
        max_source_length: encoder tokens (``<bos>`` included) kept per row.
    """

    def __init__(
        self,
        net: Any,
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        max_source_length: int,
    ) -> None:
        self.net, self.budget = net, max_source_length
        device = net.bart.shared.weight.device
        self.categorical = categorical.to(device)
        self.numerical = numerical.to(device)
        self._start()

    @property
    def rows(self) -> int:
        return self.categorical.shape[0]

    @torch.no_grad()
    def _start(self) -> None:
        """Encode every row's prompts and ``<bos>``; the decoder prompts' keys and
        values (they see those only)."""
        net, rows = self.net, self.rows
        used = net._used(self.categorical, self.numerical)
        prompts = net.encoder_prompts(*used)
        device = prompts.device
        bos = torch.full((rows, 1), net.bos_id, device=device)
        embeds = torch.cat([prompts, net.embed(bos)], 1)
        width = embeds.shape[1]
        positions = torch.arange(width, device=device).expand(rows, -1)
        hidden = blockwise.embed(net.bart.encoder, embeds, positions, False)
        everything = torch.ones(rows, width, width, dtype=torch.bool, device=device)
        states, self.keys_values = blockwise.encoder_layers(
            net.bart.encoder, hidden, everything
        )
        self.cross = blockwise.cross_keys_values(net.bart.decoder, states)
        self.seen = torch.ones(rows, width, dtype=torch.bool, device=device)
        self.lengths = np.full(rows, 1, dtype=np.int64)  # tokens after the prompts
        self.visits = np.zeros(rows, dtype=np.int64)  # visits encoded
        # The decoder prompts, once: causal among themselves, level 0 of the encoder.
        n_prompts = net.n_prompts
        decoder_prompts = net.decoder_prompts(*used)
        positions = torch.arange(n_prompts, device=device)
        hidden = blockwise.embed(
            net.bart.decoder, decoder_prompts, positions.expand(rows, -1), False
        )
        causal = positions[None, :] <= positions[:, None]
        self.prompt_keys_values = blockwise.decoder_layers(
            net.bart.decoder,
            hidden,
            causal.expand(rows, -1, -1),
            self.cross,
            torch.ones(rows, n_prompts, width, dtype=torch.bool, device=device),
        )[1]

    @torch.no_grad()
    def append(self, rows: Sequence[int], visits: Sequence[Sequence[int]]) -> None:
        """Encode one new visit (``<v> ... </v>`` ids) for each of ``rows``."""
        if not len(rows):
            return
        net, device = self.net, self.seen.device
        if any(self.lengths[r] + len(v) > self.budget for r, v in zip(rows, visits)):
            raise _Overflow
        index = torch.as_tensor(np.asarray(rows), device=device)
        width = max(len(v) for v in visits)
        ids = torch.full((len(rows), width), net.pad_id, device=device)
        new_seen = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, visit in enumerate(visits):
            ids[i, : len(visit)] = torch.as_tensor(list(visit), device=device)
            new_seen[i, : len(visit)] = True
        start = torch.as_tensor(self.lengths[list(rows)] + net.n_prompts, device=device)
        positions = start[:, None] + torch.arange(width, device=device)
        hidden = blockwise.embed(net.bart.encoder, net.embed(ids), positions, False)
        # A new visit sees every cached position of its row and itself (bidirectional).
        keys = torch.cat([self.seen[index], new_seen], 1)
        mask = keys[:, None, :].expand(-1, width, -1)
        past = [(k[index], v[index]) for k, v in self.keys_values]
        states, new = blockwise.encoder_layers(net.bart.encoder, hidden, mask, past)
        cross = blockwise.cross_keys_values(net.bart.decoder, states)
        self.keys_values = [
            _scatter_append(old, fresh, index, self.rows)
            for old, fresh in zip(self.keys_values, new)
        ]
        self.cross = [
            _scatter_append(old, fresh, index, self.rows)
            for old, fresh in zip(self.cross, cross)
        ]
        grown = torch.zeros(self.rows, width, dtype=torch.bool, device=device)
        grown[index] = new_seen
        self.seen = torch.cat([self.seen, grown], 1)
        self.lengths[list(rows)] += [len(v) for v in visits]
        self.visits[list(rows)] += 1

    def extend(
        self,
        rows: Sequence[int],
        visits: Sequence[Sequence[int]],
        histories: Sequence[Sequence[Sequence[int]]],
    ) -> None:
        """Append ``visits`` to ``rows``; when a row would outgrow the budget,
        rebuild the cache from each row's newest visits of ``histories`` (all rows,
        in row order, the new visits included) that fit half the budget."""
        try:
            self.append(rows, visits)
        except _Overflow:
            half = [_newest_fitting(h, (self.budget - 1) // 2) for h in histories]
            self.extend_all(half)

    def extend_all(self, histories: Sequence[Sequence[Sequence[int]]]) -> None:
        """Start again from every row's given visits (one history per row, in row
        order; the newest that fit the budget)."""
        self._start()
        kept = [_newest_fitting(h, self.budget - 1) for h in histories]
        for step in range(max((len(h) for h in kept), default=0)):
            chosen = [r for r, h in enumerate(kept) if len(h) > step]
            self.append(chosen, [kept[r][step] for r in chosen])

    def decoder(self, rows: Sequence[int]) -> _CachedDecoder:
        """The sampler's decoder for ``rows`` of this batch (their next visit)."""
        return _CachedDecoder(self, torch.as_tensor(np.asarray(rows, dtype=np.int64)))


class _Overflow(Exception):
    """A row's history would outgrow ``max_source_length``."""


def _newest_fitting(history: Sequence[Sequence[int]], budget: int) -> list:
    """The newest visits of ``history`` whose tokens fit ``budget``."""
    kept, used = [], 0
    for visit in reversed(history):
        if used + len(visit) > budget:
            break
        kept.append(visit)
        used += len(visit)
    return kept[::-1]


def _scatter_append(old, fresh, index, rows: int):
    """Per-row cache (B, H, L, d) grown by L' positions, ``fresh`` (r, H, L', d) at
    rows ``index`` and zeros (unseen) elsewhere."""
    keys, values = old
    grown = []
    for past, new in ((keys, fresh[0]), (values, fresh[1])):
        shape = (rows, new.shape[1], new.shape[2], new.shape[3])
        block = new.new_zeros(shape)
        block[index] = new
        grown.append(torch.cat([past, block], 2))
    return grown[0], grown[1]


@dataclass
class _Decoding:
    rows: torch.Tensor
    cross: list
    cross_mask: torch.Tensor  # (r, S) encoder positions seen
    self_cache: list
    length: int  # decoder positions cached (prompts included)
    pending: torch.Tensor  # (r, L) tokens to read on the first call
    visits: torch.Tensor  # (r, 1) visits in each row's context


class _CachedDecoder:
    """:class:`~ehrgen.generation.Decoder` over a :class:`PatientCache` (the sources
    handed to :meth:`start` are ignored: the cache holds them)."""

    def __init__(self, cache: PatientCache, rows: torch.Tensor) -> None:
        self.cache, self.rows = cache, rows

    def start(self, sources, categorical, numerical, prefix, *, use_cache) -> _Decoding:
        cache, net = self.cache, self.cache.net
        device = cache.seen.device
        rows = self.rows.to(device)
        bos = torch.full((len(rows), 1), net.bos_id, dtype=torch.long)
        pending = torch.cat([bos, prefix.long()], 1).to(device)
        return _Decoding(
            rows,
            [(k[rows], v[rows]) for k, v in cache.cross],
            cache.seen[rows],
            [(k[rows], v[rows]) for k, v in cache.prompt_keys_values],
            net.n_prompts,
            pending,
            torch.as_tensor(cache.visits[self.rows.numpy()], device=device)[:, None],
        )

    @torch.no_grad()
    def next_logits(
        self, state: _Decoding, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        net = self.cache.net
        step = state.pending if tokens is None else tokens.long().unsqueeze(1)
        step = step.to(state.cross_mask.device)
        rows, length = step.shape
        index = torch.arange(state.length, state.length + length, device=step.device)
        embeds = net.embed_target(step, state.visits)
        hidden = blockwise.embed(
            net.bart.decoder, embeds, index.expand(rows, -1), False
        )
        total = state.length + length
        causal = torch.arange(total, device=step.device)[None, :] <= index[:, None]
        hidden, new = blockwise.decoder_layers(
            net.bart.decoder,
            hidden,
            causal.expand(rows, -1, -1),
            state.cross,
            state.cross_mask[:, None, :].expand(-1, length, -1),
            past=state.self_cache,
        )
        state.self_cache = [
            blockwise.concat(old, fresh) for old, fresh in zip(state.self_cache, new)
        ]
        state.length = total
        return net.unrestricted_logits(hidden[:, -1]).cpu()
