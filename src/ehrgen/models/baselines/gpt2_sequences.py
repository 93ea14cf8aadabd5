"""How the GPT-2 baseline reads patients: token sequences with their demographic
prefix, cut to the context window, reordered for training, and the scoring contexts
of lpl and mpl (see :mod:`ehrgen.models.baselines.gpt2`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import VisitGrammar

if TYPE_CHECKING:
    from ehrgen.models.folder import Fitted

#: Per visit and epoch, the chance that its blocks are permuted in training.
PERMUTE_BLOCKS = 0.5


def _fit_context(head, visits: Sequence[Sequence[int]], tail, limit: int):
    """``head`` + the newest whole visits that fit + ``tail``, at most ``limit`` ids,
    and where ``tail`` starts. When even the newest visit does not fit, its
    beginning is kept (the only cut inside a visit)."""
    budget, kept = limit - len(head) - len(tail), []
    for visit in reversed(visits):
        if len(visit) > budget:
            kept += [visit[:budget]] if not kept and budget > 0 else []
            break
        kept.append(visit)
        budget -= len(visit)
    ids = [*head, *(t for visit in reversed(kept) for t in visit)]
    return [*ids, *tail][:limit], len(ids)


def _reorder_visits(
    ids: np.ndarray, grammar: VisitGrammar, rng: np.random.Generator, shuffle: bool
) -> np.ndarray:
    """``ids`` with, in each whole visit, the codes of every block in random order
    (when ``shuffle``) and, in ``PERMUTE_BLOCKS`` of the visits, the blocks in random
    order. Everything outside whole visits stays put (the prefix, ``<bos>``,
    ``<eos>``, a newest visit cut short by the window)."""
    tok, n, position = grammar.tokenizer, len(ids), np.arange(len(ids))
    ends = np.flatnonzero(ids == tok.visit_close_id)
    if not len(ends):
        return ids
    starts = np.flatnonzero(ids == tok.visit_open_id)[: len(ends)]  # whole visits
    visit = np.searchsorted(starts, position, side="right") - 1  # (T,) -1: before
    in_visit = (visit >= 0) & (position <= ends[np.maximum(visit, 0)])
    known = np.where(ids < grammar.vocab_size, ids, tok.pad_id)  # prefix ids: none
    opens = grammar.open_modality.numpy()[known] >= 0
    closes = grammar.close_modality.numpy()[known] >= 0
    # Sort keys: the visit (its <v>'s position; a token outside: its own), then the
    # block within the visit (<v> first, </v> last), then the place in the block.
    segment = np.where(in_visit, starts[np.maximum(visit, 0)], position)
    block_visit = visit[opens]  # (blocks,)
    permuted = (rng.random(len(starts)) < PERMUTE_BLOCKS)[block_visit]
    block_key = np.where(permuted, rng.random(len(block_visit)), 0.0)
    block_key += np.arange(len(block_visit)) * ~permuted  # kept: recorded order
    block = np.maximum(np.cumsum(opens) - 1, 0)  # (T,) the block of each token
    second = block_key[block] if len(block_visit) else np.zeros(n)
    second[ids == tok.visit_open_id] = -np.inf
    second[ids == tok.visit_close_id] = np.inf
    within = rng.random(n) if shuffle else position / n  # in [0, 1)
    third = np.where(opens, -1.0, np.where(closes, 2.0, within))
    return ids[np.lexsort((third, second, segment))]


def _head(fitted: Fitted, data: TokenizedCohort, p: int) -> list[int]:
    """Patient ``p``'s prefix tokens and ``<bos>``."""
    prefix = fitted.state.encoded_ids(data.categorical[p], data.numerical[p])
    return [*prefix, fitted.tokenizer.bos_id]


def _encode(fitted: Fitted, data: TokenizedCohort, limit: int) -> list[np.ndarray]:
    """Each patient: prefix ``<bos>`` visits ``<eos>``, cut to ``limit`` from the
    oldest visit."""
    eos = [fitted.tokenizer.eos_id]
    return [
        np.array(
            _fit_context(_head(fitted, data, p), data.patient_visit_ids(p), eos, limit)[
                0
            ],
            dtype=np.int64,
        )
        for p in range(len(data))
    ]


class _Slots:
    """The scoring contexts of one patient (see ``score_longitudinal`` and
    ``score_cross_modal``)."""

    def __init__(
        self, fitted: Fitted, data: TokenizedCohort, p: int, limit: int
    ) -> None:
        self.tok, self.data, self.limit = fitted.tokenizer, data, limit
        self.first = int(data.visit_offsets[p])
        self.head = _head(fitted, data, p)
        self.visits = data.patient_visit_ids(p)

    def add(self, p: int, task: str, protocol: str, queries: list, rows: list) -> int:
        """Append ``(ids, [(position, modality, token id, row index)])`` per context to
        ``queries`` and ``(patient, visit, modality, code)`` to ``rows``; return the
        number of out-of-vocabulary codes."""
        n_oov, chain, tok = 0, protocol == "chain", self.tok
        for t in range(1 if task == "longitudinal" else 0, len(self.visits)):
            blocks = self._blocks(self.first + t)
            for k, block in blocks.items():
                before = []  # longitudinal: none of visit t's other blocks
                if task == "cross_modal":  # all of them, in the schema's order
                    before = [j for i, b in blocks.items() if i != k for j in b]
                tail = [tok.visit_open_id, *before, *block[: -1 if chain else 1]]
                ids, start = _fit_context(self.head, self.visits[:t], tail, self.limit)
                at = start + 1 + len(before)  # the open token: it predicts code 0
                items = []
                for j, token in enumerate(block[1:-1]):
                    position = at + j if chain else at
                    if token == tok.unk_id:
                        n_oov += 1
                    elif position < len(ids):  # else a visit longer than the window
                        items.append((position, k, token, len(rows)))
                        rows.append((p, t, k, self._code(k, token)))
                if items:
                    queries.append((ids, items))
        return n_oov

    def _blocks(self, v: int) -> dict[int, list[int]]:
        """Modality index -> ``<m> codes </m>``, for the modalities of visit ``v``."""
        data = self.data
        return {
            k: [data.open_ids[k], *codes.tolist(), data.close_ids[k]]
            for k, codes in data.visit_blocks(v)
        }

    def _code(self, k: int, token: int) -> str:
        """The code string of an in-vocabulary token of modality ``k``."""
        name = self.tok.modalities[k]
        return self.tok.codes[name][token - self.tok.code_ranges[name][0]]


@torch.no_grad()
def _run_queries(fitted: Fitted, queries, n_rows: int, batch_size: int) -> np.ndarray:
    """(n_rows,) the log-probability of every query item, by row index."""
    lm, tok = fitted.network.eval(), fitted.tokenizer
    device = next(lm.parameters()).device
    out = np.full(n_rows, np.nan)
    order = sorted(range(len(queries)), key=lambda i: len(queries[i][0]))  # less pad
    for start in range(0, len(order), batch_size):
        batch = [queries[i] for i in order[start : start + batch_size]]
        ids = pad_sequence([torch.tensor(q) for q, _ in batch], True, tok.pad_id)
        mask = (ids != tok.pad_id).long()
        hidden = lm.transformer(
            input_ids=ids.to(device), attention_mask=mask.to(device)
        )
        # (N, 5): batch row, position, modality, token, row index.
        items = [[b, *item] for b, (_, its) in enumerate(batch) for item in its]
        items = torch.tensor(items)
        states = hidden.last_hidden_state[items[:, 0], items[:, 1]]  # (N, D)
        logits = lm.lm_head(states).float().cpu()  # only the positions read: (N, V)
        for k, m in enumerate(tok.modalities):
            sel, (lo, hi) = items[:, 2] == k, tok.code_ranges[m]
            log_p = logits[sel, lo:hi].log_softmax(-1)  # renormalised over m's codes
            picked = log_p.gather(1, items[sel, 3:4] - lo)[:, 0]
            out[items[sel, 4].numpy()] = picked.numpy()
    return out
