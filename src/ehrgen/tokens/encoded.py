"""A cohort as token ids in flat arrays: the one encoded form every model reads.

Events keep the cohort's columnar layout (one token per event, offsets per visit and
patient), with the index of modality blocks (runs of one modality within one visit)
and the baseline features as arrays, so that building examples or sequences never
makes :class:`~ehrgen.data.Patient` objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ehrgen.data import Cohort
from ehrgen.errors import SchemaError
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["TokenizedCohort"]


@dataclasses.dataclass(eq=False, repr=False)
class TokenizedCohort:
    """A cohort as token ids in flat arrays, ready for drawing examples.

    Attributes:
        tokenizer: the tokenizer whose ids these are.
        event_tokens: (E,) int32 token id of each event (``unk_id`` when unknown).
        event_modality: (E,) int8 index of each event's modality.
        event_offsets, visit_offsets: (V+1,), (P+1,) int64 offsets, as in a Cohort.
        categorical: (P, n_cat) int64 category; missing is ``cardinalities[j]``.
        numerical: (P, n_num) float32 raw values, NaN when missing.
        cardinalities: the number of categories of each categorical feature.
        n_modalities, visit_counts: the number of modalities; (P,) visits per patient.
        open_ids, close_ids: the open / close token id of each modality, by index.
        block_offsets, visit_block_offsets: (B+1,) event offsets of each modality
            block (run of one modality in a visit), (V+1,) block offsets of visits.
        block_modality: (B,) int8 modality index of each block.

    Example:
        >>> from ehrgen.data import Patient, Visit
        >>> visit = Visit({"diagnosis": ["a"], "drug": ["x", "y"]})
        >>> cohort = Cohort.from_patients([Patient("1", {}, (visit,))])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> [(m, len(codes)) for m, codes in data.visit_blocks(0)]
        [(0, 1), (1, 2)]
    """

    tokenizer: CodeTokenizer
    event_tokens: np.ndarray
    event_modality: np.ndarray
    event_offsets: np.ndarray
    visit_offsets: np.ndarray
    categorical: np.ndarray
    numerical: np.ndarray
    cardinalities: tuple[int, ...]

    def __post_init__(self) -> None:
        # The array fields, event_tokens to numerical, in declaration order.
        dtypes = (np.int32, np.int8, np.int64, np.int64, np.int64, np.float32)
        for field, dtype in zip(dataclasses.fields(self)[1:7], dtypes):
            setattr(self, field.name, _frozen(getattr(self, field.name), dtype))
        self.cardinalities = tuple(int(c) for c in self.cardinalities)
        modalities = self.tokenizer.modalities
        self.n_modalities = len(modalities)
        self.visit_counts = _frozen(np.diff(self.visit_offsets), np.int64)  # (P,)
        # By modality index: faster per block than the tokenizer's dicts by name.
        self.open_ids = tuple(self.tokenizer.open_ids[m] for m in modalities)
        self.close_ids = tuple(self.tokenizer.close_ids[m] for m in modalities)
        # Blocks: runs of one modality within one visit (the cohort stores them so).
        n_events, n_visits = len(self.event_tokens), len(self.event_offsets) - 1
        event_visit = np.repeat(np.arange(n_visits), np.diff(self.event_offsets))
        new_block = np.ones(n_events, dtype=bool)
        new_block[1:] = (event_visit[1:] != event_visit[:-1]) | (
            self.event_modality[1:] != self.event_modality[:-1]
        )
        first = np.flatnonzero(new_block)  # (B,) first event of each block
        self.block_offsets = _frozen(np.append(first, n_events), np.int64)  # (B+1,)
        self.block_modality = _frozen(self.event_modality[first], np.int8)  # (B,)
        visit_blocks = np.searchsorted(event_visit[first], np.arange(n_visits + 1))
        self.visit_block_offsets = _frozen(visit_blocks, np.int64)  # (V+1,)

    @classmethod
    def from_cohort(cls, cohort: Cohort, tokenizer: CodeTokenizer) -> TokenizedCohort:
        """Tokenize a cohort's events and encode its static features.

        Raises:
            SchemaError: the cohort is empty, or its modalities differ from the
                tokenizer's.
        """
        if tuple(cohort.schema.modalities) != tokenizer.modalities:
            raise SchemaError(
                f"The cohort's modalities {list(cohort.schema.modalities)} differ from "
                f"the tokenizer's {list(tokenizer.modalities)}; fit the tokenizer on "
                f"a cohort with the same schema."
            )
        if len(cohort) == 0:
            raise SchemaError("The cohort has no patient; examples need at least one.")
        # Map the code table to token ids once, then gather per event.
        pairs = zip(cohort.code_modality.tolist(), cohort.code_values.tolist())
        names = tokenizer.modalities
        code_to_token = [tokenizer.code_id(names[m], value) for m, value in pairs]
        schema, n = cohort.schema, len(cohort)
        cardinalities = tuple(len(c) for c in schema.categorical.values())
        static = [cohort.static[f] for f in schema.categorical]
        categorical = np.array(static, np.int64).reshape(-1, n).T  # (P, n_cat)
        categorical = np.where(categorical < 0, np.array(cardinalities), categorical)
        static = [cohort.static[f] for f in schema.numerical]
        numerical = np.array(static, np.float32).reshape(-1, n).T  # (P, n_num)
        events = np.array(code_to_token, np.int32)[cohort.event_codes]
        offsets = (cohort.event_offsets, cohort.visit_offsets)
        features = (categorical, numerical, cardinalities)
        return cls(tokenizer, events, cohort.event_modality, *offsets, *features)

    def __len__(self) -> int:
        return len(self.visit_offsets) - 1

    def visit_blocks(self, v: int) -> list[tuple[int, np.ndarray]]:
        """The blocks of visit ``v`` (global index): (modality index, code tokens)."""
        b0, b1 = self.visit_block_offsets[v], self.visit_block_offsets[v + 1]
        bounds = self.block_offsets[b0 : b1 + 1].tolist()
        modalities = self.block_modality[b0:b1].tolist()
        pairs = zip(modalities, bounds[:-1], bounds[1:])
        return [(m, self.event_tokens[a:b]) for m, a, b in pairs]

    def visit_ids(self, v: int) -> list[int]:
        """Visit ``v`` (global index) serialised: ``<v> <m> codes </m> ... </v>``."""
        tok, ids = self.tokenizer, [self.tokenizer.visit_open_id]
        for m, codes in self.visit_blocks(v):
            ids += [self.open_ids[m], *codes.tolist(), self.close_ids[m]]
        return [*ids, tok.visit_close_id]

    def patient_visit_ids(self, p: int) -> list[list[int]]:
        """Every visit of patient ``p``, serialised (see :meth:`visit_ids`)."""
        first = int(self.visit_offsets[p])
        return [self.visit_ids(first + t) for t in range(int(self.visit_counts[p]))]


def _frozen(array: Any, dtype: Any) -> np.ndarray:
    view = np.asarray(array, dtype=dtype).view()  # freeze a view, not the caller's
    view.flags.writeable = False
    return view
