"""How HALO reads and writes patients (see :mod:`ehrgen.models.baselines.halo`):
training batches (visit vectors and code-level sequences), the scoring contexts of
lpl and mpl, and sampling with a key/value cache at both levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ehrgen.models.base import CodeScores
from ehrgen.models.baselines.gpt2_sequences import _reorder_visits
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import STRUCTURAL_ROW, VisitGrammar

if TYPE_CHECKING:
    from ehrgen.data import Cohort
    from ehrgen.models.folder import Fitted
    from ehrgen.training import TrainingConfig

IGNORE = -100  # cross_entropy's default ignore_index

# A patient as the batches read it: its prefix token ids and its visits' token ids.
_Patient = tuple[list[int], list[np.ndarray]]


def _patients(fitted: Fitted, data: TokenizedCohort) -> list[_Patient]:
    """Every patient of ``data``: prefix ids and serialised visits (recorded order)."""
    out = []
    for p in range(len(data)):
        prefix = fitted.state.encoded_ids(data.categorical[p], data.numerical[p])
        visits = [np.array(v, np.int64) for v in data.patient_visit_ids(p)]
        out.append((prefix, visits))
    return out


def _reordered(patient: _Patient, grammar: VisitGrammar, rng, shuffle: bool):
    """The patient with its visits reordered for one epoch (codes shuffled within
    blocks, the blocks of some visits permuted; see the GPT-2 baseline)."""
    prefix, visits = patient
    if not visits:
        return patient
    ids = _reorder_visits(np.concatenate(visits), grammar, rng, shuffle)
    ends = np.flatnonzero(ids == grammar.tokenizer.visit_close_id) + 1
    return prefix, np.split(ids, ends[:-1])


def _collate(patients: Sequence[_Patient], grammar: VisitGrammar) -> dict[str, Any]:
    """A batch: the visit-level inputs (prefix ids, each visit's codes) and one
    code-level sequence per visit plus one per patient for its end.

    A sequence is ``[state] <v> ... </v>`` (position 0 holds the visit state; its
    token is ignored): position i predicts token i + 1, position 0 ``<v>``; the end
    sequence is ``[state]`` alone, predicting ``<eos>``. ``slot_index`` is the
    visit-level position whose state conditions the sequence (t: after visits < t).
    """
    tok = grammar.tokenizer
    is_code = tok.token_modality >= 0
    codes, counts, visit_patient, visit_position = [], [], [], []
    sequences, slot_patient, slot_index = [], [], []
    for b, (_, visits) in enumerate(patients):
        for t, ids in enumerate(visits):
            codes.append(ids[is_code[ids]])
            counts.append(len(codes[-1]))
            visit_patient.append(b)
            visit_position.append(t + 1)
        sequences += [*visits, np.zeros(0, np.int64)]
        slot_patient += [b] * (len(visits) + 1)
        slot_index += list(range(len(visits) + 1))
    width = 1 + max(len(s) for s in sequences)
    tokens = np.full((len(sequences), width), tok.pad_id, np.int64)
    targets = np.full((len(sequences), width), IGNORE, np.int64)
    rows = np.full((len(sequences), width), STRUCTURAL_ROW, np.int64)
    for s, ids in enumerate(sequences):
        tokens[s, 1 : len(ids) + 1] = ids
        if len(ids):
            targets[s, : len(ids)] = ids
            rows[s, 1 : len(ids) + 1] = grammar.rows(ids)
        else:
            targets[s, 0] = tok.eos_id
    targets[targets == tok.unk_id] = IGNORE  # codes unseen in fit
    prefix = [p for p, _ in patients]
    arrays = {
        "prefix": np.array(prefix, np.int64).reshape(len(patients), -1),
        "n_visits": np.array([len(v) for _, v in patients], np.int64),
        "codes": np.concatenate([np.zeros(0, np.int64), *codes]),
        "code_counts": np.array(counts, np.int64),
        "visit_patient": np.array(visit_patient, np.int64),
        "visit_position": np.array(visit_position, np.int64),
        "tokens": tokens,
        "targets": targets,
        "rows": rows,
        "slot_patient": np.array(slot_patient, np.int64),
        "slot_index": np.array(slot_index, np.int64),
    }
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _loaders(fitted: Fitted, train, val, training: TrainingConfig, shuffle: bool):
    """``train_loader(epoch)`` and the validation loader. Each epoch's order and
    reordering of visits follow from (seed, epoch), so a resumed run sees the same
    data; validation keeps the recorded order."""
    from torch.utils.data import DataLoader

    from ehrgen.tokens.batching import length_grouped_order

    tok = fitted.tokenizer
    grammar = VisitGrammar(tok)
    data = _patients(fitted, TokenizedCohort.from_cohort(train, tok))
    lengths = np.array([sum(len(v) for v in visits) for _, visits in data])

    def collate(batch):
        return _collate(batch, grammar)

    def train_loader(epoch: int) -> DataLoader:
        rng = np.random.default_rng([training.seed, epoch])
        order = length_grouped_order(lengths, training.batch_size, rng)
        examples = [_reordered(data[i], grammar, rng, shuffle) for i in order]
        return DataLoader(
            examples, training.batch_size, collate_fn=collate,
            num_workers=training.num_workers,
        )  # fmt: skip

    if val is None:
        return train_loader, None
    val_data = _patients(fitted, TokenizedCohort.from_cohort(val, tok))
    return train_loader, DataLoader(val_data, training.batch_size, collate_fn=collate)


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def _states(network, patients: Sequence[_Patient], batch_size: int) -> list:
    """Each patient's (T + 1, D) visit-level states (state t: after visits < t)."""
    out = []
    for start in range(0, len(patients), batch_size):
        chunk = patients[start : start + batch_size]
        prefix = torch.tensor(
            [p for p, _ in chunk], dtype=torch.long, device=network.device
        ).reshape(len(chunk), -1)
        steps = max(len(v) for _, v in chunk) + 1
        inputs = network.static_vector(prefix)[:, None].repeat(1, steps, 1)
        is_code = network.is_code.cpu().numpy()
        for b, (_, visits) in enumerate(chunk):
            if visits:
                codes = [ids[is_code[ids]] for ids in visits]
                counts = torch.tensor([len(c) for c in codes], device=network.device)
                flat = torch.from_numpy(np.concatenate(codes)).to(network.device)
                inputs[b, 1 : len(visits) + 1] = network.visit_vectors(flat, counts)
        states, _ = network.history(inputs)
        out += [states[b, : len(v) + 1] for b, (_, v) in enumerate(chunk)]
    return out


def _queries(tok, data: TokenizedCohort, task: str, protocol: str):
    """``(patient, slot, ids, items)`` per scoring context (items: ``(position,
    modality, token, row)``), the ``(patient, visit, modality, code)`` rows, and the
    number of out-of-vocabulary codes skipped."""
    queries, rows, n_oov, chain = [], [], 0, protocol == "chain"
    for p in range(len(data)):
        first = int(data.visit_offsets[p])
        for t in range(1 if task == "longitudinal" else 0, int(data.visit_counts[p])):
            blocks = {
                k: [data.open_ids[k], *codes.tolist(), data.close_ids[k]]
                for k, codes in data.visit_blocks(first + t)
            }
            for k, block in blocks.items():
                before = []  # longitudinal: none of visit t's other blocks
                if task == "cross_modal":  # all of them, in the schema's order
                    before = [j for i, b in blocks.items() if i != k for j in b]
                ids = [
                    tok.pad_id,
                    tok.visit_open_id,
                    *before,
                    *block[: -1 if chain else 2],
                ]
                at = 2 + len(before)  # the open token: it predicts code 0
                items = []
                for j, token in enumerate(block[1:-1]):
                    if token == tok.unk_id:
                        n_oov += 1
                        continue
                    items.append((at + j if chain else at, k, token, len(rows)))
                    rows.append((p, t, k, _code(tok, k, token)))
                if items:
                    queries.append((p, t, ids, items))
    return queries, rows, n_oov


def _code(tok, k: int, token: int) -> str:
    """The code string of an in-vocabulary token of modality ``k``."""
    name = tok.modalities[k]
    return tok.codes[name][token - tok.code_ranges[name][0]]


@torch.no_grad()
def _score(fitted: Fitted, cohort: Cohort, protocol: str, task: str, batch_size: int):
    """The :class:`CodeScores` of one task under one protocol (see ``HALO``)."""
    network, tok = fitted.network.eval(), fitted.tokenizer
    data = TokenizedCohort.from_cohort(cohort, tok)
    states = _states(network, _patients(fitted, data), batch_size)
    queries, rows, n_oov = _queries(tok, data, task, protocol)
    out = np.full(len(rows), np.nan)
    order = sorted(range(len(queries)), key=lambda i: len(queries[i][2]))  # less pad
    for start in range(0, len(order), batch_size):
        batch = [queries[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for _, _, ids, _ in batch)
        tokens = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
        for b, (_, _, ids, _) in enumerate(batch):
            tokens[b, : len(ids)] = torch.tensor(ids)
        context = torch.stack([states[p][t] for p, t, _, _ in batch])  # (Q, D)
        hidden, _ = network.code_hidden(context, tokens.to(network.device))
        # (N, 5): batch row, position, modality, token, row index.
        items = torch.tensor([[b, *it] for b, q in enumerate(batch) for it in q[3]])
        logits = network.logits(hidden[items[:, 0], items[:, 1]]).float().cpu()
        for k, m in enumerate(tok.modalities):
            sel, (lo, hi) = items[:, 2] == k, tok.code_ranges[m]
            log_p = logits[sel, lo:hi].log_softmax(-1)  # renormalised over m's codes
            picked = log_p.gather(1, items[sel, 3:4] - lo)[:, 0]
            out[items[sel, 4].numpy()] = picked.numpy()
    return CodeScores.from_rows(
        [(*row, lp) for row, lp in zip(rows, out.tolist())],
        tok.modalities, protocol, task, model="halo", n_out_of_vocabulary=n_oov,
    )  # fmt: skip


# --------------------------------------------------------------------------- sampling


@dataclass
class _Decoding:
    """Rows writing one visit each: their visit states, tokens so far, the cache."""

    context: torch.Tensor  # (B, D)
    tokens: torch.Tensor  # (B, L) position 0 a placeholder for the state
    use_cache: bool
    cache: Any = None
    fed: int = 0  # tokens already in the cache


class _CodeDecoder:
    """The code-level decoder as the sampler's :class:`~ehrgen.generation.Decoder`:
    a row's source is its visit-level state, a (D,) tensor (the sampler passes
    sources through untouched); the baseline features are already in it."""

    def __init__(self, network) -> None:
        self.network = network

    def start(self, sources, categorical, numerical, prefix, *, use_cache: bool):
        device = self.network.device
        context = torch.stack(list(sources)).to(device)  # (B, D)
        placeholder = torch.zeros(len(context), 1, dtype=torch.long)
        tokens = torch.cat([placeholder, prefix.long()], 1).to(device)
        return _Decoding(context, tokens, use_cache)

    def next_logits(self, state: _Decoding, tokens) -> torch.Tensor:
        """(B, V) logits of the next token."""
        if tokens is not None:
            step = tokens.long().unsqueeze(1).to(state.tokens.device)
            state.tokens = torch.cat([state.tokens, step], 1)
        if state.use_cache:
            new, past = state.tokens[:, state.fed :], state.cache
        else:
            new, past = state.tokens, None
        hidden, cache = self.network.code_hidden(state.context, new, past)
        state.cache, state.fed = (
            (cache if state.use_cache else None),
            len(state.tokens[0]),
        )
        return self.network.logits(hidden[:, -1]).float().cpu()


@torch.no_grad()
def _sample(network, sampler, prefix: torch.Tensor, max_visits: int, use_cache: bool):
    """Each patient's visits (token lists), sampled one visit at a time from the
    visit-level state, which is extended by one visit per step (cached) or re-read
    over the whole history (uncached)."""
    device, n = network.device, len(prefix)
    inputs = network.static_vector(prefix.to(device))[:, None]  # (A, 1, D)
    states, cache = network.history(inputs)
    active = torch.arange(n)
    histories: list[list[list[int]]] = [[] for _ in range(n)]
    empty = torch.zeros(n, 0)
    is_code = network.is_code.cpu()
    for t in range(max_visits):
        allow_end = np.full(len(active), t > 0)
        out = sampler.visits(states[:, -1], empty[active], empty[active], allow_end)
        kept = [j for j, row in enumerate(out) if row is not None]
        for j in kept:
            histories[int(active[j])].append(out[j])
        if not kept or t == max_visits - 1:
            break
        keep = torch.tensor(kept)
        active = active[keep]
        written = [torch.tensor(out[j], dtype=torch.long) for j in kept]
        codes = [w[is_code[w]] for w in written]
        counts = torch.tensor([len(c) for c in codes], device=device)
        vectors = network.visit_vectors(torch.cat(codes).to(device), counts)
        inputs = torch.cat([inputs[keep.to(device)], vectors[:, None]], 1)
        if use_cache:
            rows = keep.to(device)
            cache = [(k[rows], v[rows]) for k, v in cache]
            states, cache = network.history(vectors[:, None], cache)
        else:
            states, _ = network.history(inputs)
    return histories
