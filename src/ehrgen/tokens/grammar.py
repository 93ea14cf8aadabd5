"""The grammar of a visit: the one definition of a well-formed visit.

::

    patient := <bos> visit* <eos>
    visit   := <v> block+ </v>
    block   := <m> code_m+ </m>

Each modality opens at most one block per visit, in any order; a block holds distinct
codes of its own modality only. The tokenizer writes blocks in the schema's order (a
canonical form), but training shows the models visits whose blocks are permuted, so
that any modality may open a visit (what honest chain scoring conditions on, see
``docs/evaluation.md``); a sampler that forced the schema's order would then drop
every modality the model chose to write before an earlier one. Decoding
(:meth:`CodeTokenizer.decode`) puts a visit's modalities back in the schema's order.

:class:`VisitGrammar` gives each user the view it needs:

* training masks: :meth:`~VisitGrammar.table` is a (M+1, V) table of the tokens allowed
  next, row 0 at structural positions (``<v>``, ``</v>``, ``<eos>``, every open token)
  and row m+1 inside modality m's block (m's codes and ``</m>``);
  :meth:`~VisitGrammar.rows` picks the row of every position of a token sequence. The
  masks relax the grammar to what one position can know: they do not track which
  modalities or codes a visit already holds.
* sampling: :meth:`~VisitGrammar.start` (or :meth:`~VisitGrammar.start_block`) makes
  the per-row :class:`VisitState` of a batch; :meth:`~VisitGrammar.constrain` masks the
  logits to the tokens allowed next, :meth:`~VisitGrammar.choose` puts forced codes in
  place of samples, :meth:`~VisitGrammar.advance` moves every row on. It enforces the
  whole grammar, plus ``max_codes`` per block, forced codes (their modality must be
  written, and its forced codes come first in its block), when ``<eos>`` may end the
  patient and a bias on its logit (length calibration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["STRUCTURAL_ROW", "VisitGrammar", "VisitState"]

STRUCTURAL_ROW = 0  # the table row of positions outside any block
# Decoding phases of a row: before <v>, between blocks, inside a block, finished.
BEFORE, BETWEEN, INSIDE, DONE = 0, 1, 2, 3


@dataclass
class VisitState:
    """Per-row grammar state of a batch being decoded; every tensor has B rows.

    Attributes:
        phase: (B,) ``BEFORE``, ``BETWEEN``, ``INSIDE`` or ``DONE``.
        open: (B,) index of the modality whose block is open, -1 for none.
        opened: (B, M) modalities already written in the visit.
        in_block, in_visit: (B,) codes in the open block, in the visit.
        used: (B, V) codes already in the visit.
        allow_end: (B,) whether ``<eos>`` may come instead of ``<v>``.
        forced: (B, M, K) token ids each modality must hold, -1 padded.
        forced_next: (B, M) how many of them were written.
        end_bias: (B,) added to the ``<eos>`` logit, or None.
        max_codes: the most sampled codes per block.
        single_block: the state decodes one block, done when it closes.
    """

    phase: torch.Tensor
    open: torch.Tensor
    opened: torch.Tensor
    in_block: torch.Tensor
    in_visit: torch.Tensor
    used: torch.Tensor
    allow_end: torch.Tensor
    forced: torch.Tensor
    forced_next: torch.Tensor
    end_bias: torch.Tensor | None
    max_codes: int
    single_block: bool = False

    @property
    def done(self) -> torch.Tensor:
        """(B,) rows that finished (``</v>``, ``<eos>`` or, one block, ``</m>``)."""
        return self.phase == DONE

    def forced_left(self) -> torch.Tensor:
        """(B, M) forced codes not yet written."""
        return (self.forced >= 0).sum(-1) - self.forced_next


class VisitGrammar:
    """The grammar of a visit over one tokenizer's ids (see the module docstring).

    Args:
        tokenizer: the tokenizer whose ids the grammar reads and writes.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> visit = Visit({"diagnosis": ["a"], "drug": ["x", "y"]})
        >>> tok = CodeTokenizer.fit(Cohort.from_patients([Patient("1", {}, (visit,))]))
        >>> grammar = VisitGrammar(tok)
        >>> grammar.rows(tok.encode_visit(visit)).tolist()  # row of the next token
        [0, 1, 1, 0, 2, 2, 2, 0, 0]
        >>> grammar.is_visit(tok.encode_visit(visit))
        True
    """

    def __init__(self, tokenizer: CodeTokenizer) -> None:
        tok = self.tokenizer = tokenizer
        names, vocab = tok.modalities, tok.vocab_size
        self.n_modalities, self.vocab_size = len(names), vocab
        self.open_ids = torch.tensor([tok.open_ids[m] for m in names], dtype=torch.long)
        self.close_ids = torch.tensor(
            [tok.close_ids[m] for m in names], dtype=torch.long
        )
        # Token id -> modality index of a code / open token / close token, else -1.
        self.code_modality = torch.as_tensor(tok.token_modality, dtype=torch.long)
        self.open_modality = torch.full((vocab,), -1, dtype=torch.long)
        self.open_modality[self.open_ids] = torch.arange(self.n_modalities)
        self.close_modality = torch.full((vocab,), -1, dtype=torch.long)
        self.close_modality[self.close_ids] = torch.arange(self.n_modalities)
        # A modality without codes can never hold a block.
        self.has_codes = torch.tensor([len(tok.codes[m]) > 0 for m in names])
        # Token id -> the table row it selects for the next token (m+1 after <m>, 0
        # after any other structural token), -1 for tokens that keep the row.
        structural = [tok.bos_id, tok.eos_id, tok.visit_open_id, tok.visit_close_id]
        self._row_after = np.full(vocab, -1, dtype=np.int64)
        self._row_after[[*structural, *self.close_ids.tolist()]] = STRUCTURAL_ROW
        self._row_after[self.open_ids.numpy()] = np.arange(self.n_modalities) + 1

    # ---- training masks

    def table(self, width: int | None = None) -> torch.Tensor:
        """(M+1, width) bool: row 0 the structural tokens, row m+1 modality m's codes
        and close token; ``width`` (default the vocabulary) pads with never-allowed
        ids (a model's own extra tokens)."""
        tok, width = self.tokenizer, width or self.vocab_size
        allowed = torch.zeros(self.n_modalities + 1, width, dtype=torch.bool)
        structural = [tok.visit_open_id, tok.visit_close_id, tok.eos_id]
        allowed[STRUCTURAL_ROW, [*structural, *self.open_ids.tolist()]] = True
        for i, m in enumerate(tok.modalities):
            allowed[i + 1, slice(*tok.code_ranges[m])] = True
            allowed[i + 1, tok.close_ids[m]] = True
        return allowed

    def rows(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(T,) the :meth:`table` row of the token after each position: m+1 while
        modality m's block is open, else 0 (the last structural token decides; ids
        outside the vocabulary, such as a model's prefix tokens, keep the row)."""
        ids = np.asarray(ids, dtype=np.int64)
        events = np.full(len(ids), -1, dtype=np.int64)
        known = (ids >= 0) & (ids < self.vocab_size)
        events[known] = self._row_after[ids[known]]
        last = np.maximum.accumulate(np.where(events >= 0, np.arange(len(ids)), -1))
        return np.where(last >= 0, events[np.maximum(last, 0)], STRUCTURAL_ROW)

    def is_visit(self, ids: Sequence[int], max_codes: int | None = None) -> bool:
        """Whether ``ids`` is exactly one well-formed visit, ``<v>`` ... ``</v>``
        (with at most ``max_codes`` codes per block when given)."""
        ids, tok = [int(i) for i in ids], self.tokenizer
        if len(ids) < 5 or (ids[0], ids[-1]) != (tok.visit_open_id, tok.visit_close_id):
            return False
        seen, i = set(), 1
        while i < len(ids) - 1:
            m = self._lookup(self.open_modality, ids[i])
            if m < 0 or m in seen:
                return False
            seen.add(m)
            j = i + 1
            while self._lookup(self.code_modality, ids[j]) == m:
                j += 1
            codes = ids[i + 1 : j]
            if ids[j] != int(self.close_ids[m]) or len(set(codes)) < len(codes):
                return False
            if not codes or (max_codes is not None and len(codes) > max_codes):
                return False
            i = j + 1
        return True

    def _lookup(self, table: torch.Tensor, token: int) -> int:
        return int(table[token]) if 0 <= token < self.vocab_size else -1

    # ---- sampling

    def max_visit_length(self, max_codes: int) -> int:
        """The most tokens of a visit with at most ``max_codes`` codes per block."""
        return 2 + self.n_modalities * (max_codes + 2)

    def start(
        self,
        n: int,
        *,
        max_codes: int,
        allow_end: Sequence[bool] | np.ndarray | None = None,
        forced: Sequence[Mapping[int, Sequence[int]]] | None = None,
        end_bias: Sequence[float] | np.ndarray | None = None,
    ) -> VisitState:
        """The state of ``n`` rows about to write a visit (or ``<eos>``).

        Args:
            n: the rows.
            max_codes: the most sampled codes per block.
            allow_end: (n,) whether a row may end the patient (default: none may).
            forced: per row, modality index -> token ids the visit must hold.
            end_bias: (n,) added to the ``<eos>`` logit.
        """
        minus = torch.full((n,), -1, dtype=torch.long)
        width = max((len(v) for row in forced or () for v in row.values()), default=0)
        table = torch.full((n, self.n_modalities, width), -1, dtype=torch.long)
        for b, row in enumerate(forced or ()):
            for m, ids in row.items():
                table[b, m, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        ends = np.zeros(n, bool) if allow_end is None else np.asarray(allow_end, bool)
        bias = None
        if end_bias is not None:
            bias = torch.as_tensor(np.asarray(end_bias, dtype=np.float32))
        return VisitState(
            phase=torch.full((n,), BEFORE, dtype=torch.long),
            open=minus,
            opened=torch.zeros(n, self.n_modalities, dtype=torch.bool),
            in_block=torch.zeros(n, dtype=torch.long),
            in_visit=torch.zeros(n, dtype=torch.long),
            used=torch.zeros(n, self.vocab_size, dtype=torch.bool),
            allow_end=torch.as_tensor(ends),
            forced=table,
            forced_next=torch.zeros(n, self.n_modalities, dtype=torch.long),
            end_bias=bias,
            max_codes=max_codes,
        )

    def start_block(self, n: int, modality: int, *, max_codes: int) -> VisitState:
        """The state of ``n`` rows whose block of ``modality`` is open (after its
        ``<m>``): they write codes, then ``</m>`` ends them."""
        state = self.start(n, max_codes=max_codes)
        state.phase[:], state.open[:] = INSIDE, modality
        state.opened[:, modality] = True
        state.single_block = True
        return state

    def allowed(self, state: VisitState) -> torch.Tensor:
        """(B, V) the tokens the grammar allows next."""
        tok, n = self.tokenizer, len(state.phase)
        allowed = torch.zeros(n, self.vocab_size, dtype=torch.bool)
        before = state.phase == BEFORE
        allowed[before, tok.visit_open_id] = True
        allowed[before & state.allow_end, tok.eos_id] = True
        between = state.phase == BETWEEN
        may_open = between.unsqueeze(1) & ~state.opened & self.has_codes  # (B, M)
        allowed[:, self.open_ids] = may_open
        # A modality with forced codes must be written before the visit closes.
        pending = ((state.forced_left() > 0) & ~state.opened).any(1)
        allowed[between & (state.in_visit > 0) & ~pending, tok.visit_close_id] = True
        inside = state.phase == INSIDE
        same = self.code_modality.unsqueeze(0) == state.open.unsqueeze(1)  # (B, V)
        room = state.in_block < state.max_codes
        allowed |= same & ~state.used & (inside & room).unsqueeze(1)
        rows = torch.nonzero(inside & (state.in_block > 0)).flatten()
        allowed[rows, self.close_ids[state.open[rows]]] = True
        allowed[state.done, tok.pad_id] = True  # finished rows idle on <pad>
        # A row left with nothing (a modality's codes all used) closes what is open.
        stuck = ~allowed.any(1)
        rows = torch.nonzero(stuck & inside).flatten()
        allowed[rows, self.close_ids[state.open[rows]]] = True
        allowed[stuck & ~inside, tok.visit_close_id] = True
        return allowed

    def constrain(self, state: VisitState, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits with the end bias added and disallowed tokens at -inf."""
        logits = logits.masked_fill(~self.allowed(state), float("-inf"))
        if state.end_bias is not None:
            logits[:, self.tokenizer.eos_id] += state.end_bias.to(logits.dtype)
        return logits

    def due(self, state: VisitState) -> torch.Tensor:
        """(B,) the forced token due now (its block open, not yet written), or -1."""
        due = torch.full_like(state.phase, -1)
        if state.forced.shape[-1] == 0:
            return due
        rows = torch.nonzero((state.phase == INSIDE) & (state.open >= 0)).flatten()
        m = state.open[rows]
        k = state.forced_next[rows, m]
        has = k < (state.forced[rows, m] >= 0).sum(-1)
        value = state.forced[rows, m, k.clamp(max=state.forced.shape[-1] - 1)]
        due[rows[has]] = value[has]
        return due

    def choose(self, state: VisitState, sampled: torch.Tensor) -> torch.Tensor:
        """(B,) the token each row writes: its forced code when one is due, else its
        sample; ``<pad>`` for finished rows."""
        due = self.due(state)
        token = torch.where(due >= 0, due, sampled)
        return torch.where(state.done, self.tokenizer.pad_id, token)

    def advance(self, state: VisitState, token: torch.Tensor) -> None:
        """Move every live row on after it wrote ``token`` (B,)."""
        tok = self.tokenizer
        live = ~state.done
        state.phase[live & (token == tok.visit_open_id)] = BETWEEN
        ends = (token == tok.eos_id) | (token == tok.visit_close_id)
        state.phase[live & ends] = DONE
        modality = self.open_modality[token]
        entering = torch.nonzero(live & (modality >= 0)).flatten()
        state.phase[entering], state.open[entering] = INSIDE, modality[entering]
        state.opened[entering, modality[entering]] = True
        state.in_block[entering] = 0
        code = live & (self.code_modality[token] >= 0)
        rows = torch.nonzero(code).flatten()
        state.used[rows, token[rows]] = True
        state.in_block[code] += 1
        state.in_visit[code] += 1
        if state.forced.shape[-1]:
            m = state.open[rows]
            hit = (state.forced[rows, m] == token[rows].unsqueeze(1)).any(1)
            state.forced_next[rows[hit], m[hit]] += 1
        closing = live & (self.close_modality[token] >= 0)
        state.open[closing] = -1
        state.phase[closing] = DONE if state.single_block else BETWEEN
