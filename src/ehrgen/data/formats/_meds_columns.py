"""The column machinery behind :func:`ehrgen.data.formats.meds.read_meds`.

MEDS shards are read with the ``code`` column dictionary-encoded, so that all string
work (splitting ``PREFIX//VALUE``, mapping prefixes to modalities) happens once per
distinct code, and rows are handled as numpy columns of about 30 bytes each: subject,
time, code id, numeric value, and the file and row they came from (for error messages
and to keep the source's order among ties).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrgen.data import CohortSchema
from ehrgen.data.formats._memory import release_freed_memory
from ehrgen.errors import SchemaError

SEP = "//"
LABEL_PREFIX = "LABEL"
BIRTH_CODE = "MEDS_BIRTH"
NO_VISIT = np.iinfo(np.int64).min


@dataclass
class Rows:
    """Every row of a dataset's shards, as numpy columns."""

    subject: np.ndarray  # int64
    time: np.ndarray  # datetime64[us], NaT for static rows
    code: np.ndarray  # int32 index into `codes`
    value: np.ndarray  # float32, NaN when absent
    visit: np.ndarray | None  # int64 visit key (NO_VISIT when null), if asked for
    file: np.ndarray  # int32 index into `files`
    row: np.ndarray  # int32 row within its file
    codes: list[str]
    files: list[Path]

    def where(self, i: int) -> str:
        return f"{self.files[self.file[i]]}, row {self.row[i]}"

    def take(self, keep: np.ndarray) -> Rows:
        return Rows(
            self.subject[keep],
            self.time[keep],
            self.code[keep],
            self.value[keep],
            None if self.visit is None else self.visit[keep],
            self.file[keep],
            self.row[keep],
            self.codes,
            self.files,
        )


# --------------------------------------------------------------------------- shards


class ShardReader:
    """Reads shards one group at a time with one code (and visit id) numbering over
    all of them, so that rows read apart can be joined."""

    def __init__(self, files: list[Path], visit_id_column: str | None) -> None:
        self.files, self.visit_id_column = files, visit_id_column
        self.interned: dict[Any, int] = {}
        self.visit_ids: dict[Any, int] = {}

    def read(self, indices: Sequence[int]) -> Rows:
        """The rows of ``files[i]`` for ``i`` in ``indices``, checked against the MEDS
        data schema before they are read."""
        release_freed_memory()  # the previous shard's working set
        parts = [
            _read_shard(
                self.files[i], i, self.visit_id_column, self.interned, self.visit_ids
            )
            for i in indices
        ]
        columns = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        del parts
        # Arrow's pool keeps what it freed for later reads; hand it back, so that
        # memory holds one shard's rows and not the largest shard's twice over.
        pa.default_memory_pool().release_unused()
        subject, time, code, value, visit, file, row = columns
        return Rows(
            subject,
            time,
            code,
            value,
            visit if self.visit_id_column else None,
            file,
            row,
            list(self.interned),
            self.files,
        )


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """Rows read apart by one :class:`ShardReader`, joined (the last part's codes
    list holds every code of the earlier ones)."""
    last = parts[-1]
    columns = ("subject", "time", "code", "value", "visit", "file", "row")
    joined = {
        name: None
        if getattr(last, name) is None
        else np.concatenate([getattr(p, name) for p in parts])
        for name in columns
    }
    return Rows(**joined, codes=last.codes, files=last.files)


def _read_shard(
    path: Path,
    index: int,
    visit_id_column: str | None,
    interned: dict[Any, int],
    visit_ids: dict[Any, int],
) -> tuple[np.ndarray, ...]:
    schema = _shard_schema(path, visit_id_column)
    columns = [
        c for c in ("subject_id", "time", "code", "numeric_value") if c in schema.names
    ]
    if visit_id_column:
        columns.append(visit_id_column)
    try:
        table = pq.read_table(path, columns=columns, read_dictionary=["code"])
    except (pa.ArrowException, OSError) as error:
        raise SchemaError(f"{path}: could not read its rows ({error}).") from None
    for name in ("subject_id", "code"):
        column = table.column(name)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise SchemaError(f"{path}, row {row}, column {name!r}: null value.")
    n = table.num_rows
    if "numeric_value" in table.column_names:
        values = table.column("numeric_value").cast(pa.float32()).fill_null(np.nan)
        value = values.to_numpy()
    else:
        value = np.full(n, np.nan, np.float32)
    if visit_id_column:
        visit = _intern_column(table.column(visit_id_column), visit_ids, NO_VISIT)
    else:
        visit = np.zeros(0, np.int64)
    return (
        table.column("subject_id").cast(pa.int64()).to_numpy(),
        table.column("time")
        .cast(pa.timestamp("us"))
        .to_numpy()
        .astype("datetime64[us]"),
        _intern_column(table.column("code"), interned, -1).astype(np.int32),
        value.astype(np.float32),
        visit,
        np.full(n, index, np.int32),
        np.arange(n, dtype=np.int32),
    )


def _shard_schema(path: Path, visit_id_column: str | None) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise SchemaError(f"{path}: not a readable Parquet file ({error}).") from None
    required = ["subject_id", "time", "code"] + (
        [visit_id_column] if visit_id_column else []
    )
    for name in required:
        if name not in schema.names:
            raise SchemaError(
                f"{path}: missing column {name!r}; MEDS data need subject_id, time and "
                f"code (numeric_value optional). Columns found: {schema.names}."
            )
    checks = [
        ("subject_id", pa.types.is_integer, "an integer"),
        ("time", pa.types.is_timestamp, "a timestamp"),
        ("code", _is_string, "a string"),
        ("numeric_value", pa.types.is_floating, "a float"),
    ]
    for column, test, expected in checks:
        if column in schema.names and not test(schema.field(column).type):
            raise SchemaError(
                f"{path}, column {column!r}: expected {expected}. Got "
                f"{schema.field(column).type} instead."
            )
    return schema


def _is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _intern_column(
    column: pa.ChunkedArray, table: dict[Any, int], null: int
) -> np.ndarray:
    """Global integer ids for a column's values, interning each distinct value once."""
    out = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        lookup = np.array(
            [table.setdefault(v, len(table)) for v in chunk.dictionary.to_pylist()]
            + [null],
            dtype=np.int64,
        )
        indices = chunk.indices.fill_null(len(lookup) - 1).to_numpy()
        out.append(lookup[indices])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- codes


def split_codes(codes: list[str]) -> tuple[list[str], list[str | None]]:
    """Prefix and value of each code; a code splits at its first separator only, so
    values keep theirs: ``DIAGNOSIS//ICD9CM//4019`` -> (``DIAGNOSIS``,
    ``ICD9CM//4019``)."""
    prefixes, values = [], []
    for code in codes:
        prefix, sep, value = code.partition(SEP)
        prefixes.append(prefix)
        values.append(value if sep else None)
    return prefixes, values


# --------------------------------------------------------------------------- visits


def build_visits(rows: Rows, code_modality: np.ndarray) -> dict[str, np.ndarray]:
    """The CSR arrays of a cohort (see :class:`~ehrgen.data.cohort.Cohort`) from its
    event rows: visits are the rows of a subject sharing a time (or a visit id, whose
    time is then its earliest row's); codes repeated in a visit are kept once, with
    the last ``numeric_value`` among their rows in the source's order (MEDS rows are
    in time order within a subject); ``event_values`` is None when no row has one."""
    modality = code_modality.astype(np.int8)[rows.code]
    if rows.visit is not None:
        rows = visit_times_from_ids(rows)
    visit_keys = [rows.time] if rows.visit is None else [rows.time, rows.visit]
    # Stable sorts keep the source's row order among ties.
    order = np.lexsort((modality, *visit_keys[::-1], rows.subject))
    del modality
    keys = [k[order] for k in (rows.subject, *visit_keys)]  # subject, time[, visit]
    code = rows.code[order]
    value = rows.value[order] if not np.isnan(rows.value).all() else None
    del order
    keep = ~_repeated(*keys, code)
    if value is not None:
        value = _last_values(keys, code, value)[keep]
    keys, code = [k[keep] for k in keys], code[keep]
    subject, time = keys[0], keys[1]
    new_visit = np.zeros(len(subject), dtype=bool)
    new_visit[:1] = True
    for key in keys:
        new_visit[1:] |= key[1:] != key[:-1]
    visit_starts = np.flatnonzero(new_visit)
    visit_subject = subject[visit_starts]
    new_patient = np.ones(len(visit_starts), dtype=bool)
    new_patient[1:] = visit_subject[1:] != visit_subject[:-1]
    patient_starts = np.flatnonzero(new_patient)
    used, event_codes = np.unique(code, return_inverse=True)
    return {
        "subjects": visit_subject[patient_starts],
        "visit_offsets": np.append(patient_starts, len(visit_starts)).astype(np.int64),
        "visit_times": _strictly_increasing(time[visit_starts], patient_starts),
        "event_offsets": np.append(visit_starts, len(subject)).astype(np.int64),
        "event_codes": event_codes.astype(np.int32),
        "event_values": value,
        "used_codes": used,
    }


def _last_values(
    keys: Sequence[np.ndarray], code: np.ndarray, value: np.ndarray
) -> np.ndarray:
    """Per row, the last non-NaN value among the rows equal to it on every key and
    the code (later means later in the arrays); NaN when none of them has one."""
    n = len(code)
    order = np.lexsort((np.arange(n), code, *keys[::-1]))
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for key in (*keys, code):
        sorted_key = key[order]
        new[1:] |= sorted_key[1:] != sorted_key[:-1]
    ordered = value[order]
    position = np.where(np.isnan(ordered), -1, np.arange(n))
    last = np.maximum.reduceat(position, np.flatnonzero(new)) if n else position
    per_group = np.where(last >= 0, ordered[np.maximum(last, 0)], np.nan)
    out = np.empty(n, dtype=np.float32)
    out[order] = per_group[np.cumsum(new) - 1]
    return out


class _Growable:
    """A 1-d array appended to in place: ``ndarray.resize`` grows it with
    ``realloc`` (``mremap`` for large blocks), so memory holds the array once, never
    an old and a new copy, and capacity not yet written costs no memory."""

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self.array = np.full(1024, fill, dtype=dtype)
        self.size, self.fill = 0, fill

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.array):
            old = len(self.array)
            self.array.resize(max(2 * old, end), refcheck=False)
            self.array[old:] = self.fill  # resize leaves new memory zeroed
        self.array[self.size : end] = values
        self.size = end

    def pad(self, size: int) -> None:
        """Extend with the fill value up to ``size``."""
        self.extend(np.full(size - self.size, self.fill, dtype=self.array.dtype))

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)
        return self.array


class VisitAccumulator:
    """The :func:`build_visits` arrays of shards read apart, joined in shard order as
    each shard is added, so that the cohort's arrays are held once and no shard's
    after it is added. Event codes are kept as :class:`ShardReader` code numbers and
    renumbered at the end."""

    def __init__(self) -> None:
        self.subjects: list[np.ndarray] = []
        self.visit_offsets = _Growable(np.int64)
        self.visit_times = _Growable("datetime64[us]", np.datetime64("NaT"))
        self.event_offsets = _Growable(np.int64)
        self.event_codes = _Growable(np.int32)
        self.event_values: _Growable | None = None
        self.used: set[int] = set()

    def add(self, part: dict[str, np.ndarray]) -> None:
        self.subjects.append(part["subjects"])
        self.visit_offsets.extend(part["visit_offsets"][:-1] + self.visit_times.size)
        self.event_offsets.extend(part["event_offsets"][:-1] + self.event_codes.size)
        self.visit_times.extend(part["visit_times"])
        global_codes = part["used_codes"].astype(np.int32)
        self.used.update(part["used_codes"].tolist())
        if part["event_values"] is not None and self.event_values is None:
            self.event_values = _Growable(np.float32, np.nan)
            self.event_values.pad(self.event_codes.size)
        if self.event_values is not None:
            values = part["event_values"]
            n = len(part["event_codes"])
            self.event_values.extend(
                values if values is not None else np.full(n, np.nan, np.float32)
            )
        self.event_codes.extend(global_codes[part["event_codes"]])

    def finish(self) -> dict[str, np.ndarray] | None:
        """The joined arrays (as :func:`build_visits` returns them), or None when a
        subject's events lie in more than one part."""
        subjects = np.concatenate(self.subjects)
        if len(np.unique(subjects)) != len(subjects):
            return None
        used = np.array(sorted(self.used), dtype=np.int64)
        lookup = np.zeros(int(used[-1]) + 1 if len(used) else 0, dtype=np.int32)
        lookup[used] = np.arange(len(used), dtype=np.int32)
        codes = self.event_codes.finish()
        for start in range(0, len(codes), 1 << 22):  # in place, a chunk at a time
            chunk = codes[start : start + (1 << 22)]
            np.take(lookup, chunk, out=chunk)
        self.visit_offsets.extend(np.array([self.visit_times.size]))
        self.event_offsets.extend(np.array([len(codes)]))
        return {
            "subjects": subjects,
            "visit_offsets": self.visit_offsets.finish(),
            "visit_times": self.visit_times.finish(),
            "event_offsets": self.event_offsets.finish(),
            "event_codes": codes,
            "event_values": None
            if self.event_values is None
            else self.event_values.finish(),
            "used_codes": used,
        }


def visit_times_from_ids(rows: Rows) -> Rows:
    """The rows, each at the earliest time of its (subject, visit id); every row has
    a visit id (read_meds drops and counts those without)."""
    order = np.lexsort((rows.visit, rows.subject))
    subject, visit = rows.subject[order], rows.visit[order]
    starts = np.flatnonzero(
        np.r_[True, (subject[1:] != subject[:-1]) | (visit[1:] != visit[:-1])]
    )
    earliest = np.minimum.reduceat(rows.time[order].astype(np.int64), starts)
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(order))))
    time = np.empty(len(order), dtype=np.int64)
    time[order] = earliest[group]
    return dataclasses.replace(rows, time=time.astype("datetime64[us]"))


def _repeated(*keys: np.ndarray) -> np.ndarray:
    """True for each row equal, on all keys, to an earlier row."""
    order = np.lexsort(keys[::-1])
    same = np.ones(len(order) - 1 if len(order) else 0, dtype=bool)
    for key in keys:
        sorted_key = key[order]
        same &= sorted_key[1:] == sorted_key[:-1]
    repeated = np.zeros(len(order), dtype=bool)
    repeated[order[1:][same]] = True
    return repeated


def _strictly_increasing(times: np.ndarray, patient_starts: np.ndarray) -> np.ndarray:
    """Nudge ties (two admissions with one timestamp) apart by a microsecond, so that
    visit times strictly increase within each patient as the data model requires."""
    times = times.copy()
    first = np.zeros(len(times), dtype=bool)
    first[patient_starts] = True
    for i in np.flatnonzero(~first[1:] & (times[1:] <= times[:-1])) + 1:
        times[i] = max(times[i], times[i - 1] + np.timedelta64(1, "us"))
    return times


# --------------------------------------------------------------------------- static


def static_columns(
    rows: Rows,
    subjects: np.ndarray,
    prefixes: list[str],
    values: list[str | None],
    schema: CohortSchema | None,
    modalities: tuple[str, ...],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], CohortSchema]:
    """Baseline features and labels aligned with ``subjects`` (distinct, in any
    order), from the static rows; the schema is inferred from them when the dataset
    carries none."""
    sorter = np.argsort(subjects, kind="stable")
    slot = np.searchsorted(subjects, rows.subject, sorter=sorter)
    position = sorter[np.minimum(slot, len(subjects) - 1)]
    known = (slot < len(subjects)) & (subjects[position] == rows.subject)
    rows, position = rows.take(known), position[known]
    code_prefix = np.array(prefixes, dtype=object)[rows.code]
    code_value = np.array(values, dtype=object)[rows.code]
    is_label = code_prefix == LABEL_PREFIX
    labels = {}
    for name in dict.fromkeys(code_value[is_label].tolist()):
        mask = is_label & (code_value == name)
        labels[name] = _scatter(position[mask], rows.value[mask], len(subjects), np.nan)
    features = np.array([p.lower() for p in code_prefix.tolist()], dtype=object)
    categorical_rows = ~is_label & (code_value != None)  # noqa: E711
    numerical_rows = ~is_label & (code_value == None) & ~np.isnan(rows.value)  # noqa: E711
    if schema is None:
        schema = _infer_schema(
            features, code_value, categorical_rows, numerical_rows, modalities
        )
    columns: dict[str, np.ndarray] = {}
    for name, categories in schema.categorical.items():
        mask = categorical_rows & (features == name)
        index = {c: i for i, c in enumerate(categories)}
        found = [index.get(v, -1) for v in code_value[mask].tolist()]
        if -1 in found:
            i = np.flatnonzero(mask)[found.index(-1)]
            raise SchemaError(
                f"{rows.where(i)}, column 'code': category {code_value[i]!r} of "
                f"feature {name!r} is not in the dataset's schema ({list(categories)})."
            )
        columns[name] = _scatter(position[mask], np.array(found), len(subjects), -1)
    for name in schema.numerical:
        mask = numerical_rows & (features == name)
        columns[name] = _scatter(
            position[mask], rows.value[mask], len(subjects), np.nan
        )
    return columns, labels, schema


def _scatter(
    position: np.ndarray, values: np.ndarray, n: int, fill: float
) -> np.ndarray:
    out = np.full(n, fill, dtype=np.int32 if fill == -1 else np.float32)
    out[position] = values
    return out


def _infer_schema(features, values, categorical_rows, numerical_rows, modalities):
    categorical: dict[str, set[str]] = {}
    for name, value in zip(features[categorical_rows], values[categorical_rows]):
        categorical.setdefault(name, set()).add(value)
    numerical = sorted(set(features[numerical_rows].tolist()) - set(categorical))
    return CohortSchema(
        modalities=modalities,
        categorical={k: tuple(sorted(v)) for k, v in sorted(categorical.items())},
        numerical=tuple(numerical),
    )


def age_at_first_visit(
    births: Mapping[int, np.datetime64], subjects: np.ndarray, first_visit: np.ndarray
) -> np.ndarray:
    """Age in years at the first visit, from MEDS_BIRTH times (NaN when unknown)."""
    born = np.array(
        [births.get(s, np.datetime64("NaT")) for s in subjects.tolist()],
        dtype="datetime64[us]",
    )
    return ((first_visit - born) / np.timedelta64(1, "D") / 365.25).astype(np.float32)
