"""Generation for the one-pass model: encoder cache and continuous batching.

Under the one-pass objective the encoder is block-causal by visit, so the encoder
states (and every layer's keys and values) of visits 1..t never change when visit t+1
is appended: a visit is encoded once, when it closes, and a new visit costs its own
tokens whatever the length of the history. On top of that cache, each row of a batch
(a *slot*) moves on alone: when it closes a visit, the visit joins its cache and the
slot starts its next visit at the next step; when its patient ends, the next patient
waiting takes the slot. Every step decodes one token for every slot, so a batch stays
full until the last patients, where visit-synchronous decoding would make every row
wait, visit after visit, for the row with the longest visit.

All caches are preallocated per slot (no concatenation per step): the encoder's
keys and values and the decoder's cross-attention keys and values of each slot's
history, and the decoder's self-attention keys and values of the current visit (after
the decoder prompts', computed once per patient: they see the encoder's prompts and
``<bos>`` only). Given histories (continuing patients, starting from seeds) are
encoded once, in one block-causal pass. A history that outgrows
``max_source_length`` is encoded again from its newest visits that fit half the
budget, as training's windows do; without that, greedy decoding here writes what
encoding each history again writes (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ehrgen.generation import GenerationConfig, _sample
from ehrgen.models.promptehr import blockwise
from ehrgen.models.promptehr.one_pass import sees
from ehrgen.tokens.grammar import BEFORE, VisitGrammar

__all__ = ["stream_patients"]

# Caches grow in steps of this many positions: attention reads a whole cache (a
# contiguous block; a slice of a larger one is read 2-4x slower on the CPU), with
# the positions past each slot's length masked.
_ROOM_STEP = 32


@torch.no_grad()
def stream_patients(
    ctx: Any,
    categorical: torch.Tensor,
    numerical: torch.Tensor,
    generation: GenerationConfig,
    generator: torch.Generator,
    histories: Sequence[Sequence[Sequence[int]]] | None = None,
    min_new: int = 0,
    max_new: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:
    """Each patient's visits (token ids), decoded ``generation.batch_size`` patients
    at a time with continuous batching.

    Args:
        categorical, numerical: (N, ·) baseline features, one row per patient.
        histories: visits each patient already has (None: new patients); they are
            encoded once and kept at the start of the output.
        min_new: new visits before a patient may end.
        max_new: the most new visits (default ``generation.max_visits``).
    """
    n = categorical.shape[0]
    histories = [[list(v) for v in h] for h in histories or [[] for _ in range(n)]]
    slots = _Slots(ctx, min(generation.batch_size, n), generation)
    slots.features = (categorical, numerical)
    slots.min_new = min_new
    slots.max_new = generation.max_visits if max_new is None else max_new
    slots.load(
        np.arange(slots.size), list(range(slots.size)), categorical, numerical,
        histories,
    )  # fmt: skip
    waiting = slots.size  # the next patient to take a slot
    while slots.busy():
        token = slots.step(generator)
        finished = slots.advance(token, histories)
        if not finished:
            continue
        if progress:
            progress(len(finished))
        rows = finished[: n - waiting]
        if rows:
            patients = list(range(waiting, waiting + len(rows)))
            slots.load(np.array(rows), patients, categorical, numerical, histories)
            waiting += len(rows)
        slots.release(finished[len(rows) :])
    return histories


class _Slots:
    """The batch being decoded: per slot, its patient, caches and grammar state."""

    def __init__(self, ctx: Any, size: int, generation: GenerationConfig) -> None:
        self.ctx, self.net, self.size = ctx, ctx.model, size
        self.generation, self.tok = generation, ctx.tokenizer
        self.grammar = VisitGrammar(self.tok)
        net = self.net
        self.device = net.bart.shared.weight.device
        self.n_prompts = net.n_prompts
        self.budget = ctx.max_source_length
        encoder, decoder = net.bart.encoder, net.bart.decoder
        heads = encoder.layers[0].self_attn.num_heads
        width = net.config.d_model // heads
        self.heads, self.width = heads, width
        self.max_source = self.n_prompts + self.budget
        self.max_target = (
            self.n_prompts
            + 1
            + self.grammar.max_visit_length(generation.max_codes_per_modality)
        )
        self.encoder_kv = self._buffers(encoder.layers, _ROOM_STEP)
        self.cross_kv = self._buffers(decoder.layers, _ROOM_STEP)
        self.decoder_kv = self._buffers(decoder.layers, _ROOM_STEP)
        self.source_length = torch.zeros(size, dtype=torch.long, device=self.device)
        self.target_length = torch.zeros(size, dtype=torch.long, device=self.device)
        self.patient = np.full(size, -1)
        self.visits = np.zeros(size, dtype=np.int64)  # in the encoder's context
        self.total = np.zeros(size, dtype=np.int64)  # the patient's, given included
        self.new = np.zeros(size, dtype=np.int64)  # decoded here
        self.written: list[list[int]] = [[] for _ in range(size)]
        self.next_token = torch.full((size,), self.tok.bos_id, device=self.device)
        self.state = self.grammar.start(
            size, max_codes=generation.max_codes_per_modality
        )
        self.state.phase[:] = 3  # DONE until a patient takes the slot
        self.end_bias = None
        if generation.calibrated_length and ctx.end_bias is not None:
            self.state.end_bias = torch.zeros(size)
            self.end_bias = ctx.end_bias

    def _buffers(self, layers, room: int) -> list[blockwise.KeyValues]:
        """Per layer, zeroed keys and values for ``room`` positions of every slot
        (zero, not empty: masked positions still enter the products)."""
        shape = (self.size, self.heads, room, self.width)
        return [
            (torch.zeros(shape, device=self.device),
             torch.zeros(shape, device=self.device))
            for _ in layers
        ]  # fmt: skip

    def _make_room(self, names: Sequence[str], length: int, most: int) -> None:
        """Grow the caches ``names`` to hold ``length`` positions (at most ``most``),
        keeping what they hold."""
        room = getattr(self, names[0])[0][0].shape[2]
        if length <= room:
            return
        room = min(-(-length // _ROOM_STEP) * _ROOM_STEP, most)
        for name in names:
            old = getattr(self, name)
            new = self._buffers(old, room)
            for (keys, values), (k, v) in zip(new, old):
                keys[:, :, : k.shape[2]] = k
                values[:, :, : v.shape[2]] = v
            setattr(self, name, new)

    def _make_source_room(self, length: int) -> None:
        self._make_room(("encoder_kv", "cross_kv"), length, self.max_source)

    def busy(self) -> bool:
        return bool((self.patient >= 0).any())

    # ---- slots taking a patient

    def load(self, rows, patients, categorical, numerical, histories) -> None:
        """Give ``rows`` the ``patients`` (their features; histories may be empty)."""
        rows_t = torch.as_tensor(rows, device=self.device)
        used = self.net._used(categorical[patients], numerical[patients])
        used = tuple(u.to(self.device) for u in used)
        self._encode_history(rows, used, [histories[p] for p in patients])
        # The decoder prompts see the encoder's prompts and <bos> (level 0) only.
        prompts = self.net.decoder_prompts(*used)
        positions = torch.arange(self.n_prompts, device=self.device)
        hidden = blockwise.embed(
            self.net.bart.decoder, prompts, positions.expand(len(rows), -1), False
        )
        causal = positions[None, :] <= positions[:, None]
        level0 = self.n_prompts + 1
        cross = [(k[rows_t, :, :level0], v[rows_t, :, :level0])
                 for k, v in self.cross_kv]  # fmt: skip
        _, new = blockwise.decoder_layers(
            self.net.bart.decoder,
            hidden,
            causal.expand(len(rows), -1, -1),
            cross,
            torch.ones(len(rows), self.n_prompts, level0, dtype=torch.bool),
        )
        self._make_room(("decoder_kv",), self.n_prompts, self.max_target)
        for (keys, values), (k, v) in zip(self.decoder_kv, new):
            keys[rows_t, :, : self.n_prompts] = k
            values[rows_t, :, : self.n_prompts] = v
        self.patient[rows] = patients
        self.total[rows] = [len(histories[p]) for p in patients]
        self.new[rows] = 0
        self._start_visits(rows)

    def release(self, rows: Sequence[int]) -> None:
        """Leave ``rows`` idle: no patient is waiting for them."""
        self.patient[list(rows)] = -1

    def _encode_history(self, rows, used, histories) -> None:
        """Encode ``[prompts] <bos>`` and each row's history (the newest visits that
        fit the budget) in one block-causal pass; write the caches from position 0."""
        net, device, tok = self.net, self.device, self.tok
        kept = [_newest_fitting(h, self.budget - 1) for h in histories]
        ids = [[tok.bos_id, *(t for visit in h for t in visit)] for h in kept]
        width = max(len(i) for i in ids)
        token_ids = torch.full((len(rows), width), tok.pad_id, device=device)
        valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, row_ids in enumerate(ids):
            token_ids[i, : len(row_ids)] = torch.as_tensor(row_ids, device=device)
            valid[i, : len(row_ids)] = True
        prompts = net.encoder_prompts(*used)
        embeds = torch.cat([prompts, net.embed(token_ids)], 1)
        ones = valid.new_ones(len(rows), self.n_prompts)
        valid = torch.cat([ones, valid], 1)
        level = torch.cat(
            [ones.long() * 0, (token_ids == tok.visit_open_id).cumsum(1)], 1
        )
        group = torch.where(valid, 0, -1)
        positions = torch.arange(embeds.shape[1], device=device)
        hidden = blockwise.embed(
            net.bart.encoder, embeds, positions.expand(len(rows), -1), False
        )
        states, new = blockwise.encoder_layers(
            net.bart.encoder, hidden, sees(level, group, level, group)
        )
        cross = blockwise.cross_keys_values(net.bart.decoder, states)
        rows_t = torch.as_tensor(rows, device=device)
        length = embeds.shape[1]
        self._make_source_room(length)
        for buffers, fresh in ((self.encoder_kv, new), (self.cross_kv, cross)):
            for (keys, values), (k, v) in zip(buffers, fresh):
                keys[rows_t, :, :length] = k
                values[rows_t, :, :length] = v
        self.source_length[rows_t] = valid.sum(1)
        self.visits[rows] = [len(h) for h in kept]

    # ---- decoding

    def _start_visits(self, rows) -> None:
        """Rows about to write a visit (or end): fresh grammar, ``<bos>`` next."""
        state, rows_t = self.state, torch.as_tensor(rows, dtype=torch.long)
        state.phase[rows_t] = BEFORE
        state.open[rows_t] = -1
        state.opened[rows_t] = False
        state.in_block[rows_t] = 0
        state.in_visit[rows_t] = 0
        state.used[rows_t] = False
        may_end = (self.total[rows] > 0) & (self.new[rows] >= self.min_new)
        state.allow_end[rows_t] = torch.as_tensor(may_end)
        if self.end_bias is not None:
            index = np.minimum(self.total[rows], len(self.end_bias) - 1)
            state.end_bias[rows_t] = torch.as_tensor(
                self.end_bias[index], dtype=torch.float32
            )
        self.target_length[rows_t.to(self.device)] = self.n_prompts
        self.next_token[rows_t.to(self.device)] = self.tok.bos_id
        for r in np.atleast_1d(rows):
            self.written[int(r)] = []

    def step(self, generator: torch.Generator) -> torch.Tensor:
        """Feed each slot its next token; sample (or force) the one after."""
        net, device = self.net, self.device
        rows = torch.arange(self.size, device=device)
        position = self.target_length
        visits = torch.as_tensor(self.visits, device=device)[:, None]
        embeds = net.embed_target(self.next_token[:, None], visits)
        hidden = blockwise.embed(net.bart.decoder, embeds, position[:, None], False)
        self._make_room(("decoder_kv",), int(position.max()) + 1, self.max_target)
        target_room = self.decoder_kv[0][0].shape[2]
        source_room = self.cross_kv[0][0].shape[2]
        keys_seen = (
            torch.arange(target_room, device=device)[None, :] <= position[:, None]
        )
        source_seen = (
            torch.arange(source_room, device=device)[None, :]
            < self.source_length[:, None]
        )
        masks = (
            blockwise.additive(keys_seen[:, None, :], hidden.dtype),
            blockwise.additive(source_seen[:, None, :], hidden.dtype),
        )
        for index, layer in enumerate(net.bart.decoder.layers):
            keys, values = self.decoder_kv[index]
            k, v = blockwise.project(layer.self_attn, hidden)
            keys[rows, :, position] = k[:, :, 0]
            values[rows, :, position] = v[:, :, 0]
            cross_keys, cross_values = self.cross_kv[index]
            hidden = blockwise.decoder_layer_step(
                layer,
                hidden,
                (keys, values),
                masks[0],
                (cross_keys, cross_values),
                masks[1],
            )
        # Idle slots stay on their first position (they write nothing kept).
        self.target_length += torch.as_tensor(self.patient >= 0, device=device).long()
        logits = net.unrestricted_logits(hidden[:, -1]).cpu()[:, : self.tok.vocab_size]
        logits = self.grammar.constrain(self.state, logits)
        if self.generation.greedy:
            sampled = logits.argmax(-1)
        else:
            sampled = _sample(logits, self.generation, generator)
        return self.grammar.choose(self.state, sampled)

    def advance(self, token: torch.Tensor, histories) -> list[int]:
        """Write each live slot's token; close visits and patients. Returns the
        slots whose patient finished."""
        live = np.flatnonzero((self.patient >= 0) & ~self.state.done.numpy())
        self.grammar.advance(self.state, token)
        written, now_done = token.tolist(), self.state.done.numpy()
        for r in live.tolist():
            self.written[r].append(written[r])
        done = [r for r in live.tolist() if now_done[r]]
        closed, finished = [], []
        for r in done:
            if self.written[r][0] == self.tok.eos_id:
                finished.append(r)
                continue
            histories[self.patient[r]].append(self.written[r])
            self.visits[r] += 1
            self.total[r] += 1
            self.new[r] += 1
            if self.new[r] >= self.max_new:
                finished.append(r)
            else:
                closed.append(r)
        if closed:
            self._append_visits(closed, histories)
            self._start_visits(np.array(closed))
        self.next_token = token.to(self.device).clone()
        self.next_token[torch.as_tensor(closed, dtype=torch.long)] = self.tok.bos_id
        return finished

    def _append_visits(self, rows: list[int], histories) -> None:
        """Encode each row's newest visit (it sees the row's cache), write the caches
        at the row's offset; rebuild rows whose history outgrew the budget."""
        net, device = self.net, self.device
        visits = [histories[self.patient[r]][-1] for r in rows]
        length = self.source_length[rows].cpu().numpy()
        over = [
            i for i, (r, v) in enumerate(zip(rows, visits))
            if length[i] - self.n_prompts + len(v) > self.budget
        ]  # fmt: skip
        if over:
            chosen = np.array([rows[i] for i in over])
            used = self._features(chosen)
            self._encode_history(
                chosen, used, [_newest_fitting(histories[self.patient[r]],
                                               (self.budget - 1) // 2) for r in chosen]
            )  # fmt: skip
            keep = [i for i in range(len(rows)) if i not in set(over)]
            rows, visits = [rows[i] for i in keep], [visits[i] for i in keep]
            if not rows:
                return
        rows_t = torch.as_tensor(rows, device=device)
        width = max(len(v) for v in visits)
        ids = torch.full((len(rows), width), self.tok.pad_id, device=device)
        new_seen = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        for i, visit in enumerate(visits):
            ids[i, : len(visit)] = torch.as_tensor(visit, device=device)
            new_seen[i, : len(visit)] = True
        start = self.source_length[rows_t]
        self._make_source_room(int(start.max()) + width)
        positions = start[:, None] + torch.arange(width, device=device)
        # A short visit padded to the widest one would run its padding past the
        # last learned position; padding is never written, so it sits at `start`.
        positions = torch.where(new_seen, positions, start[:, None])
        hidden = blockwise.embed(net.bart.encoder, net.embed(ids), positions, False)
        source = int(start.max())
        old_seen = torch.arange(source, device=device)[None, :] < start[:, None]
        keys = torch.cat([old_seen, new_seen], 1)
        past = [(k[rows_t, :, :source], v[rows_t, :, :source])
                for k, v in self.encoder_kv]  # fmt: skip
        states, new = blockwise.encoder_layers(
            net.bart.encoder, hidden, keys[:, None, :].expand(-1, width, -1), past
        )
        cross = blockwise.cross_keys_values(net.bart.decoder, states)
        slot, offset = torch.nonzero(new_seen, as_tuple=True)
        target_rows, target_positions = rows_t[slot], positions[slot, offset]
        for buffers, fresh in ((self.encoder_kv, new), (self.cross_kv, cross)):
            for (keys_buffer, values_buffer), (k, v) in zip(buffers, fresh):
                keys_buffer[target_rows, :, target_positions] = k[slot, :, offset]
                values_buffer[target_rows, :, target_positions] = v[slot, :, offset]
        self.source_length[rows_t] += new_seen.sum(1)

    def _features(self, rows):
        patients = self.patient[rows]
        categorical, numerical = self.features
        used = self.net._used(categorical[patients], numerical[patients])
        return tuple(u.to(self.device) for u in used)


def _newest_fitting(history: Sequence[Sequence[int]], budget: int) -> list:
    """The newest visits of ``history`` whose tokens fit ``budget``."""
    kept, used = [], 0
    for visit in reversed(history):
        if used + len(visit) > budget:
            break
        kept.append(visit)
        used += len(visit)
    return kept[::-1]
