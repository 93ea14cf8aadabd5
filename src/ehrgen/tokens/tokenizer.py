"""Codes <-> token ids: the serialisation of a patient that the models read and write.

A patient becomes one sequence (METHOD.md)::

    <bos> <v> <diagnosis> 4019 25000 </diagnosis> <drug> C09A </drug> </v> ... <eos>

Each visit sits between ``<v>`` and ``</v>``; inside it each modality that has
codes sits between its own open and close tokens, in the schema's modality order (a
modality with no code is left out). The same code string in two modalities is two
tokens. The vocabulary is laid out as: the special tokens, then an open/close pair per
modality, then the codes of each modality in one contiguous block (most frequent
first), so a model can restrict its output to one modality with a slice
(:attr:`CodeTokenizer.code_ranges`).

:meth:`CodeTokenizer.decode` accepts any id sequence, since sampling produces malformed
ones: it never raises, and keeps only what is well formed (see its docstring).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ehrgen._io import atomic_file
from ehrgen.data import Cohort, Patient, Visit
from ehrgen.errors import ConfigError, SchemaError

__all__ = ["SPECIAL_TOKENS", "CodeTokenizer"]

PAD, BOS, EOS, MASK, UNK, VISIT_OPEN, VISIT_CLOSE = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<mask>",
    "<unk>",
    "<v>",
    "</v>",
)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, MASK, UNK, VISIT_OPEN, VISIT_CLOSE)
_FORMAT_VERSION = 1


class CodeTokenizer:
    """One vocabulary per modality plus special tokens.

    Build one with :meth:`fit`; ``save``/``load`` keep it as JSON.

    Attributes:
        modalities: the modalities, in serialisation order.
        codes: modality -> its codes, in token order.
        counts: modality -> training count of each code (aggregate, no patient data).
        pad_id, bos_id, eos_id, mask_id, unk_id, visit_open_id, visit_close_id: ids of
            the special tokens.
        open_ids, close_ids: modality -> id of its open / close token.
        code_ranges: modality -> ``(start, stop)`` ids of its codes.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> cohort = demo_cohort(50, seed=0)
        >>> tokenizer = CodeTokenizer.fit(cohort)
        >>> patient = cohort[0]
        >>> [v.events for v in tokenizer.decode(tokenizer.encode(patient)).visits] == [
        ...     v.events for v in patient.visits]
        True
    """

    def __init__(
        self,
        modalities: Sequence[str],
        codes: Mapping[str, Sequence[str]],
        counts: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.modalities = tuple(modalities)
        missing = [m for m in self.modalities if m not in codes]
        if missing or set(codes) - set(self.modalities):
            raise ConfigError(
                f"CodeTokenizer needs the codes of exactly its modalities "
                f"{list(self.modalities)}. Got codes for {sorted(codes)}."
            )
        self.codes = {m: tuple(codes[m]) for m in self.modalities}
        self.counts = {
            m: tuple(int(c) for c in (counts or {}).get(m, [0] * len(self.codes[m])))
            for m in self.modalities
        }
        self._layout()

    def _layout(self) -> None:
        tokens = list(SPECIAL_TOKENS)
        (
            self.pad_id,
            self.bos_id,
            self.eos_id,
            self.mask_id,
            self.unk_id,
            self.visit_open_id,
            self.visit_close_id,
        ) = range(len(SPECIAL_TOKENS))
        self.open_ids: dict[str, int] = {}
        self.close_ids: dict[str, int] = {}
        for m in self.modalities:
            self.open_ids[m] = len(tokens)
            self.close_ids[m] = len(tokens) + 1
            tokens += [f"<{m}>", f"</{m}>"]
        self.code_ranges: dict[str, tuple[int, int]] = {}
        self._code_ids: dict[str, dict[str, int]] = {}
        for m in self.modalities:
            start = len(tokens)
            self.code_ranges[m] = (start, start + len(self.codes[m]))
            self._code_ids[m] = {c: start + i for i, c in enumerate(self.codes[m])}
            tokens += [f"{m}:{c}" for c in self.codes[m]]
        self.tokens: tuple[str, ...] = tuple(tokens)
        # token id -> modality index for code tokens, -1 otherwise: decode's lookup.
        self.token_modality = np.full(len(tokens), -1, dtype=np.int8)
        for i, m in enumerate(self.modalities):
            self.token_modality[slice(*self.code_ranges[m])] = i
        self._open_modality = {i: m for m, i in self.open_ids.items()}
        self._close_modality = {i: m for m, i in self.close_ids.items()}

    @property
    def vocab_size(self) -> int:
        """The number of tokens, special ones included."""
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodeTokenizer):
            return NotImplemented
        return (self.modalities, self.codes, self.counts) == (
            other.modalities,
            other.codes,
            other.counts,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{m}={len(c)}" for m, c in self.codes.items())
        return f"CodeTokenizer(vocab_size={self.vocab_size}, {sizes})"

    # ---- fitting

    @classmethod
    def fit(
        cls,
        cohort: Cohort,
        min_count: int = 1,
        max_codes_per_modality: int | Mapping[str, int] | None = None,
    ) -> CodeTokenizer:
        """Learn the vocabulary of a cohort.

        Args:
            cohort: the training cohort.
            min_count: keep codes seen in at least this many visits.
            max_codes_per_modality: keep at most this many codes per modality (the most
                frequent; ties broken by code string), one number for all or a mapping.
        """
        if not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(
                f"The 'min_count' parameter of CodeTokenizer.fit must be an integer "
                f">= 1. Got {min_count!r} instead."
            )
        limits = _per_modality_limits(max_codes_per_modality, cohort.schema.modalities)
        counts = np.bincount(cohort.event_codes, minlength=len(cohort.code_values))
        codes, kept_counts = {}, {}
        for i, m in enumerate(cohort.schema.modalities):
            ids = np.flatnonzero((cohort.code_modality == i) & (counts >= min_count))
            ranked = sorted(
                ids.tolist(), key=lambda c: (-counts[c], cohort.code_values[c])
            )
            ranked = ranked[: limits.get(m)]
            codes[m] = [cohort.code_values[c] for c in ranked]
            kept_counts[m] = [int(counts[c]) for c in ranked]
        return cls(cohort.schema.modalities, codes, kept_counts)

    # ---- encoding

    def code_id(self, modality: str, code: str) -> int:
        """The token id of a code (``unk_id`` when out of vocabulary)."""
        return self._code_ids[modality].get(code, self.unk_id)

    def encode_visit(self, visit: Visit) -> list[int]:
        """The ids of one visit, ``<v>`` ... ``</v>``."""
        ids = [self.visit_open_id]
        for m in self.modalities:
            codes = visit.events.get(m)
            if codes:
                lookup = self._code_ids[m]
                ids.append(self.open_ids[m])
                ids.extend(lookup.get(c, self.unk_id) for c in codes)
                ids.append(self.close_ids[m])
        unknown = set(visit.events) - set(self.modalities)
        if unknown:
            raise SchemaError(
                f"Visit has modality {sorted(unknown)[0]!r}, which the tokenizer does "
                f"not know (modalities: {list(self.modalities)})."
            )
        ids.append(self.visit_close_id)
        return ids

    def encode(self, patient: Patient) -> list[int]:
        """The ids of a whole patient, ``<bos>`` visits ``<eos>``."""
        ids = [self.bos_id]
        for visit in patient.visits:
            ids.extend(self.encode_visit(visit))
        ids.append(self.eos_id)
        return ids

    def encode_cohort(self, cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
        """Every patient's ids, flat: ``ids[offsets[p]:offsets[p+1]]`` is patient p.

        Works on the cohort's arrays directly (no :class:`Patient` objects).
        """
        if tuple(cohort.schema.modalities) != self.modalities:
            raise SchemaError(
                f"The cohort's modalities {list(cohort.schema.modalities)} differ from "
                f"the tokenizer's {list(self.modalities)}."
            )
        # Map the cohort's code table to token ids once.
        code_to_token = np.array(
            [
                self._code_ids[self.modalities[m]].get(v, self.unk_id)
                for m, v in zip(
                    cohort.code_modality.tolist(), cohort.code_values.tolist()
                )
            ],
            dtype=np.int32,
        )
        return _layout_tokens(
            code_to_token[cohort.event_codes],
            cohort.event_modality.astype(np.int64),
            cohort.event_offsets,
            cohort.visit_offsets,
            np.array([self.open_ids[m] for m in self.modalities], np.int32),
            np.array([self.close_ids[m] for m in self.modalities], np.int32),
            (self.bos_id, self.eos_id, self.visit_open_id, self.visit_close_id),
        )

    # ---- decoding

    def decode(
        self,
        ids: Iterable[Any],
        patient_id: str = "0",
        static: Mapping[str, str | float] | None = None,
    ) -> Patient:
        """A patient from token ids; never raises on any id sequence.

        Rules: reading stops at ``<eos>``; ``<pad>``, ``<bos>``, ``<mask>``, ``<unk>``
        and ids outside the vocabulary are skipped; ``<v>`` starts a visit (closing one
        still open); a modality's open token outside a visit is dropped, and inside one
        opens that modality (closing another still open); a code counts only inside its
        own open modality and only once per visit; a close token that closes nothing
        open is dropped; a visit with no code is dropped; a visit still open at the end
        is kept. Visits get no time.
        """
        visits: list[dict[str, dict[str, None]]] = []
        current: dict[str, dict[str, None]] | None = None
        open_modality: str | None = None
        n_tokens = len(self.tokens)
        for raw in ids:
            try:
                token = int(raw)
            except (TypeError, ValueError, OverflowError):
                continue
            if token == self.eos_id:
                break
            if not 0 <= token < n_tokens:
                continue
            if token == self.visit_open_id or token == self.visit_close_id:
                if current:
                    visits.append(current)
                current = {} if token == self.visit_open_id else None
                open_modality = None
            elif token in self._open_modality:
                if current is not None:
                    open_modality = self._open_modality[token]
            elif token in self._close_modality:
                if open_modality == self._close_modality[token]:
                    open_modality = None
            elif self.token_modality[token] >= 0:
                modality = self.modalities[self.token_modality[token]]
                if current is not None and modality == open_modality:
                    start = self.code_ranges[modality][0]
                    code = self.codes[modality][token - start]
                    current.setdefault(modality, {})[code] = None
        if current:
            visits.append(current)
        return Patient(
            patient_id,
            dict(static or {}),
            tuple(
                Visit({m: tuple(v[m]) for m in self.modalities if m in v})
                for v in visits
            ),
        )

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`from_dict`)."""
        return {
            "format_version": _FORMAT_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "modalities": list(self.modalities),
            "codes": {m: list(c) for m, c in self.codes.items()},
            "counts": {m: list(c) for m, c in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodeTokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`'s output."""
        version = data.get("format_version")
        if version != _FORMAT_VERSION or list(data.get("special_tokens", [])) != list(
            SPECIAL_TOKENS
        ):
            raise SchemaError(
                f"Unsupported tokenizer format (format_version {version!r}); expected "
                f"version {_FORMAT_VERSION} with special tokens {list(SPECIAL_TOKENS)}."
            )
        try:
            return cls(data["modalities"], data["codes"], data.get("counts"))
        except KeyError as error:
            raise SchemaError(f"Tokenizer data lacks the key {error}.") from None

    def save(self, path: str | os.PathLike[str], overwrite: bool = True) -> Path:
        """Write the tokenizer as JSON (atomically)."""
        with atomic_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False), "utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CodeTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SchemaError(
                f"{path}: not a readable tokenizer file ({error})."
            ) from None
        try:
            return cls.from_dict(data)
        except SchemaError as error:
            raise SchemaError(f"{path}: {error}") from None


def _per_modality_limits(
    limit: int | Mapping[str, int] | None, modalities: Sequence[str]
) -> dict[str, int]:
    if limit is None:
        return {}
    limits = (
        dict(limit) if isinstance(limit, Mapping) else dict.fromkeys(modalities, limit)
    )
    for m, n in limits.items():
        if m not in modalities or not isinstance(n, int) or n < 0:
            raise ConfigError(
                f"The 'max_codes_per_modality' parameter of CodeTokenizer.fit must map "
                f"modalities {list(modalities)} to integers >= 0. Got {m!r}: {n!r}."
            )
    return limits


def _layout_tokens(
    tokens: np.ndarray,
    modality: np.ndarray,
    event_offsets: np.ndarray,
    visit_offsets: np.ndarray,
    opens: np.ndarray,
    closes: np.ndarray,
    specials: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Place every token of a cohort in one flat array, without a Python loop.

    Events are stored grouped by (visit, modality); each group becomes ``open codes
    close``, each visit ``<v> groups </v>`` and each patient ``<bos> visits <eos>``.
    Positions follow from cumulative sums of those lengths.
    """
    bos, eos, visit_open, visit_close = specials
    n_events, n_visits = len(tokens), len(event_offsets) - 1
    event_visit = np.repeat(np.arange(n_visits), np.diff(event_offsets))
    new_group = np.ones(n_events, dtype=bool)
    new_group[1:] = (event_visit[1:] != event_visit[:-1]) | (
        modality[1:] != modality[:-1]
    )
    group_first = np.flatnonzero(new_group)  # (G,) first event of each group
    group_size = np.diff(np.append(group_first, n_events))
    group_visit = event_visit[group_first]
    # Length of each visit: <v> </v> plus, per group, open + codes + close.
    visit_len = 2 + np.bincount(group_visit, weights=group_size + 2, minlength=n_visits)
    visit_len = visit_len.astype(np.int64)
    n_patients = len(visit_offsets) - 1
    visit_patient = np.repeat(np.arange(n_patients), np.diff(visit_offsets))
    # Each earlier patient adds <bos> and <eos>; the visit's own patient adds <bos>.
    visit_start = _exclusive_cumsum(visit_len) + 2 * visit_patient + 1
    group_len = group_size + 2
    before_group = _exclusive_cumsum(group_len)
    first_group_of_visit = np.searchsorted(group_visit, group_visit, side="left")
    group_start = (
        visit_start[group_visit] + 1 + before_group - before_group[first_group_of_visit]
    )
    patient_len = 2 + np.bincount(
        visit_patient, weights=visit_len, minlength=n_patients
    )
    offsets = np.append(0, np.cumsum(patient_len.astype(np.int64)))
    ids = np.empty(offsets[-1], dtype=np.int32)
    ids[offsets[:-1]] = bos
    ids[offsets[1:] - 1] = eos
    ids[visit_start] = visit_open
    ids[visit_start + visit_len - 1] = visit_close
    group_modality = modality[group_first]
    ids[group_start] = opens[group_modality]
    ids[group_start + group_size + 1] = closes[group_modality]
    within_group = np.arange(n_events) - np.repeat(group_first, group_size)
    ids[np.repeat(group_start, group_size) + 1 + within_group] = tokens
    return ids, offsets


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    np.cumsum(values[:-1], out=out[1:])
    return out
