"""What the MIMIC-III and MIMIC-IV readers share.

* :class:`Table`: one ``.csv`` / ``.csv.gz`` table, found in any case, its header
  checked before any row is read, scanned lazily with Polars or read a block of rows at
  a time (only the columns used; ids as integers, everything else, ICD codes included,
  as strings so ``"0389"`` keeps its zero), with errors that name the file, the line,
  the column and a fix;
* :func:`read_visits`: one visit per admission, sorted by patient and admission time;
* :func:`build_cohort`: the cohort's flat arrays from each modality's events (read by
  :mod:`ehrgen.data.formats._mimic_events`), with numpy.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ehrgen.data import DEFAULT_MODALITIES, Cohort, CohortSchema
from ehrgen.data.formats._memory import release_freed_memory
from ehrgen.data.preprocess import Preprocessing, preprocess
from ehrgen.errors import ConfigError, SchemaError, did_you_mean

if TYPE_CHECKING:
    from ehrgen.data.formats._mimic_events import Events

logger = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
AGE_CAP = 90.0
GENDERS = ("F", "M")
INVALID_ROWS = ("error", "drop")
_POLARS_ERRORS = (
    pl.exceptions.ComputeError,
    pl.exceptions.InvalidOperationError,
    pl.exceptions.SchemaError,
)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise the standard ConfigError when ``value`` is not among ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"The {name!r} parameter of {owner} must be one of {list(choices)}. Got "
            f"{value!r} instead.{did_you_mean(str(value), choices)}"
        )


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """One MIMIC table: its file, its header, and the case of its column names."""

    name: str
    path: Path
    header: tuple[str, ...]
    upper: bool  # MIMIC-III names columns in upper case, MIMIC-IV in lower case

    @property
    def columns(self) -> dict[str, str]:
        """Column name in the dataset's case -> name in the file."""
        return {(c.upper() if self.upper else c.lower()): c for c in self.header}

    @property
    def where(self) -> str:
        return f"{self.path} (table {self.name})"

    def has(self, column: str) -> bool:
        return column in self.columns

    def name_of(self, column: str) -> str:
        """``column`` in the dataset's case (``subject_id`` -> ``SUBJECT_ID``)."""
        return column.upper() if self.upper else column.lower()

    def require(self, columns: Sequence[str], fix: str = "") -> None:
        """Raise a SchemaError naming the first of ``columns`` the header lacks."""
        for column in columns:
            if column not in self.columns:
                raise SchemaError(
                    f"{self.where}: no column {column!r}; the reader needs "
                    f"{list(columns)}. Columns found: {list(self.header)}."
                    f"{did_you_mean(column, self.columns)} {fix}".rstrip()
                )

    def scan(self, dtypes: Mapping[str, Any]) -> pl.LazyFrame:
        """The columns of ``dtypes`` (integers parsed by the CSV reader, the rest
        strings), named in the dataset's case."""
        original = self.columns
        overrides = {original[c]: t for c, t in dtypes.items() if t != pl.String}
        frame = pl.scan_csv(
            self.path, infer_schema=False, schema_overrides=overrides or None
        )
        return frame.select([pl.col(original[c]).alias(c) for c in dtypes])

    def blocks(self, dtypes: Mapping[str, Any], size: int) -> Iterator[pl.DataFrame]:
        """The columns of ``dtypes``, parsed as :meth:`scan` parses them, about
        ``size`` bytes of the file at a time, in file order: memory holds a block of
        rows, never the table (Polars' own batched scan reads far ahead)."""
        original = self.columns
        overrides = {original[c]: t for c, t in dtypes.items() if t != pl.String}
        names = [original[c] for c in dtypes]
        rename = [pl.col(o).alias(c) for c, o in zip(dtypes, names)]
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        try:
            with opener(self.path, "rb") as file:
                header = file.readline()  # each block is parsed with it
                pending = b""
                while True:
                    data = file.read(size)
                    pending += data
                    cut = _last_line_end(pending) if data else len(pending)
                    if not cut and not data:
                        return
                    if not cut:
                        continue  # a line longer than a block: read on
                    block, pending = pending[:cut], pending[cut:]
                    try:
                        frame = pl.read_csv(
                            header + block,
                            infer_schema=False,
                            schema_overrides=overrides or None,
                            columns=names,
                        )
                    except _POLARS_ERRORS as error:
                        raise self.diagnose(str(error)) from None
                    del block
                    yield frame.select(rename)
        except (OSError, EOFError) as error:
            raise SchemaError(
                f"{self.where}: could not be read ({error}). Check that the file is "
                f"complete (a download cut short?)."
            ) from None

    def collect(self, *queries: pl.LazyFrame) -> list[pl.DataFrame]:
        """Run queries over this table (streaming; one scan shared by all)."""
        try:
            return pl.collect_all(list(queries), engine="streaming")
        except _POLARS_ERRORS as error:
            raise self.diagnose(str(error)) from None

    def diagnose(self, message: str) -> SchemaError:
        """The SchemaError for a failed read: the first row whose integer column does
        not parse, when the error names one."""
        found = re.search(r"column '([^']+)'", message)
        if found:
            column = found.group(1).upper() if self.upper else found.group(1).lower()
            row = self.first_row(not_integer(column))
            if row is not None:
                return self.error(
                    row,
                    column,
                    f"expected an integer id, got {row[column]!r}",
                    "Fix the value, or use the table as distributed.",
                )
        first_line = message.strip().splitlines()[0] if message.strip() else message
        return SchemaError(
            f"{self.where}: could not be read ({first_line}). Expected the table as "
            f"distributed: comma-separated, with a header row."
        )

    def first_row(self, condition: pl.Expr) -> dict[str, Any] | None:
        """The first row (every column a string, plus its index ``_row``) where
        ``condition`` holds, or None. Used only to explain an error."""
        frame = pl.scan_csv(self.path, infer_schema=False, row_index_name="_row")
        frame = frame.select(
            "_row", *[pl.col(o).alias(c) for c, o in self.columns.items()]
        )
        found = frame.filter(condition).head(1).collect(engine="streaming")
        return found.row(0, named=True) if found.height else None

    def error(self, row: Mapping[str, Any], column: str, problem: str, fix: str):
        """A SchemaError naming the file, the line, the column and the row."""
        shown = {k: v for k, v in row.items() if k != "_row"}
        text = ", ".join(f"{k}={v!r}" for k, v in list(shown.items())[:10])
        return SchemaError(
            f"{self.where}, line {row['_row'] + 2}, column {column!r}: {problem}. "
            f"Row: {text}. {fix}"
        )


def _last_line_end(data: bytes) -> int:
    """The index just past the last line end of ``data`` that lies outside quotes
    (a quoted field may hold line breaks), or 0 when there is none. ``data`` starts
    at the start of a line: a line end is outside quotes when an even number of
    quote characters comes before it."""
    quotes = data.count(b'"')
    end = len(data)
    while (i := data.rfind(b"\n", 0, end)) >= 0:
        quotes -= data.count(b'"', i, end)
        if quotes % 2 == 0:
            return i + 1
        end = i
    return 0


def find_table(root: Path, name: str, *, upper: bool) -> Table | None:
    """The table ``name`` (``<name>.csv`` or ``<name>.csv.gz``, any case) in ``root``,
    with its header read; None when absent."""
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    found = sorted(
        (p for p in root.iterdir() if p.name.lower() in wanted and p.is_file()),
        key=lambda p: p.suffix.lower() == ".gz",  # plain CSV first: faster to scan
    )
    if not found:
        return None
    return Table(name, found[0], read_header(found[0]), upper)


def missing_table(root: Path, name: str, owner: str, *, required: bool) -> None:
    """Raise a SchemaError for a required table; warn for an optional one."""
    if not required:
        logger.warning("%s: no table %s; its modality is left out.", root, name)
        return
    hint = " It is needed for lab_code='label'." if name.upper() == "D_LABITEMS" else ""
    found = sorted(p.name for p in root.iterdir())[:20]
    raise SchemaError(
        f"{root}: no table {name} ({name}.csv.gz or {name}.csv); {owner} needs it."
        f"{hint} Files found: {found}."
    )


def read_header(path: Path) -> tuple[str, ...]:
    """The column names in the first line of a CSV file (gzip-compressed or not)."""
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8-sig", newline="")
            if path.suffix.lower() == ".gz"
            else path.open(encoding="utf-8-sig", newline="")
        ) as file:
            first = next(csv.reader([file.readline()]), [])
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise SchemaError(
            f"{path}: not a readable CSV file ({error}). Check that the file is "
            f"complete (a download cut short?)."
        ) from None
    if not first:
        raise SchemaError(f"{path}: empty; expected a header row and data rows.")
    return tuple(c.strip() for c in first)


def not_integer(column: str) -> pl.Expr:
    """Over a string column: non-empty values that are not integers."""
    raw = pl.col(column)
    return (
        raw.is_not_null() & raw.str.strip_chars().cast(pl.Int64, strict=False).is_null()
    )


def parse_time(column: str) -> pl.Expr:
    """A MIMIC timestamp (``2101-10-20 19:08:00``); null when it does not parse."""
    return pl.col(column).str.to_datetime(TIME_FORMAT, strict=False, time_unit="us")


def invalid_time(column: str) -> pl.Expr:
    """Over a string column: non-empty values that are not MIMIC timestamps."""
    return pl.col(column).is_not_null() & parse_time(column).is_null()


def time_error(table: Table, columns: Sequence[str]) -> SchemaError:
    """The SchemaError for the first timestamp of ``columns`` that does not parse."""
    for column in columns:
        row = table.first_row(invalid_time(column))
        if row is not None:
            return table.error(
                row,
                column,
                f"the timestamp {row[column]!r} does not parse; expected "
                f"'YYYY-MM-DD HH:MM:SS' as MIMIC writes them",
                "Fix the value, or pass invalid_rows='drop' to drop such rows "
                "(counted in metadata['dropped']).",
            )
    return SchemaError(f"{table.where}: a timestamp of {list(columns)} is invalid.")


def check_ids(
    frame: pl.DataFrame, columns: Sequence[str], table: Table, *, unique: str = ""
) -> None:
    """Raise a SchemaError naming the first row with an empty id among ``columns``,
    or two lines that repeat the primary key ``unique``. ``frame`` has ``_row``."""
    for column in columns:
        empty = frame.filter(pl.col(column).is_null())
        if empty.height:
            index = empty["_row"][0]
            row = table.first_row(pl.col("_row") == index)
            raise table.error(
                row or {"_row": index},
                column,
                "empty; every row needs a value here",
                "Fill it in or remove the row.",
            )
    if unique:
        repeated = frame.filter(pl.col(unique).is_duplicated())
        if repeated.height:
            value = repeated[unique][0]
            lines = repeated.filter(pl.col(unique) == value)["_row"].head(2) + 2
            raise SchemaError(
                f"{table.where}, column {unique!r}: the key {value} appears on lines "
                f"{lines[0]} and {lines[1]}; each must appear once. Remove the "
                f"repeated rows (was the table concatenated twice?)."
            )


def check_codes(codes: pl.Series, table: Table, column: str) -> None:
    """ICD codes and NDCs are letters and digits as MIMIC writes them; a dot or a
    decimal part means the column went through a number type and lost its leading
    zeros (``0389`` -> ``389.0``)."""
    bad = codes.filter(~codes.str.contains(r"^[A-Za-z0-9]+$"))
    if bad.len():
        value = bad[0]
        row = table.first_row(pl.col(column).str.strip_chars() == value)
        raise table.error(
            row or {"_row": -2},
            column,
            f"the code {value!r} is not a string of letters and digits as MIMIC "
            f"writes codes (no dot)",
            "The column was probably read as a number and written back, losing "
            "leading zeros; use the table as distributed, with codes as strings.",
        )


# --------------------------------------------------------------------------- visits


def read_visits(
    table: Table,
    names: Mapping[str, str],
    subjects: pl.Series,
    invalid_rows: str,
    dropped: dict,
) -> pl.DataFrame:
    """Admissions of the known ``subjects`` as visits, sorted by subject, start and
    admission id: ``visit`` (the row index), ``subject``, ``hadm``, ``start``,
    ``end``, ``next_start`` (the patient's next admission), ``ethnicity``,
    ``insurance``. ``names`` maps those standard names to the table's columns.
    """
    strings = ("start", "end", "ethnicity", "insurance")
    dtypes = {names["subject"]: pl.Int64, names["hadm"]: pl.Int64}
    dtypes |= {names[k]: pl.String for k in strings}
    (frame,) = table.collect(table.scan(dtypes).with_row_index("_row"))
    required = [names["subject"], names["hadm"], names["start"]]
    check_ids(frame, required, table, unique=names["hadm"])
    frame = frame.rename({v: k for k, v in names.items() if v in frame.columns})
    frame = frame.with_columns(
        start_time=parse_time("start"), end_time=parse_time("end")
    )
    bad = frame.filter(pl.col("start_time").is_null() | invalid_time("end"))
    if bad.height and invalid_rows == "error":
        raise time_error(table, [names["start"], names["end"]])
    dropped["admissions_with_invalid_times"] = bad.height
    known = pl.col("subject").is_in(subjects.implode())
    dropped["admissions_without_patient"] = frame.filter(~known).height
    return (
        frame.filter(pl.col("start_time").is_not_null() & known)
        .select(
            "subject",
            "hadm",
            pl.col("start_time").alias("start"),
            # An unreadable discharge time (dropped with invalid_rows='drop') only
            # stops labs without an admission id from being assigned to the visit.
            pl.col("end_time").alias("end"),
            pl.col("ethnicity").str.strip_chars(),
            pl.col("insurance").str.strip_chars(),
        )
        .sort("subject", "start", "hadm")
        .with_columns(next_start=pl.col("start").shift(-1).over("subject"))
        .with_row_index("visit")
        .with_columns(pl.col("visit").cast(pl.Int64))
    )


# --------------------------------------------------------------------------- cohort


def build_cohort(
    visits: pl.DataFrame,
    events: Sequence[Events],
    static: pl.DataFrame,
    categorical: Mapping[str, tuple[str, ...]],
    metadata: dict[str, Any],
) -> Cohort:
    """The cohort from its visits, events and per-subject static features.

    ``static`` has ``subject``, the categorical features (strings) and ``age``.
    Admissions with no event and patients with none are dropped (and counted in
    ``metadata["dropped"]``); events of a visit are grouped by modality in the
    order of ``events``, whose parts are consumed.
    """
    dropped = metadata["dropped"]
    per_visit = sum((e.counts for e in events), np.zeros(visits.height, np.int64))
    if not per_visit.sum():
        raise SchemaError(
            f"{metadata['source']}: no admission has a code; the cohort would be "
            f"empty. Rows read and dropped, per table: {dropped}."
        )
    codes, numbers = _merge(events, per_visit)
    kept = per_visit > 0
    subject = visits["subject"].to_numpy()[kept]
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    times, ties = strictly_increasing(
        visits["start"].to_numpy().astype("datetime64[us]")[kept], starts
    )
    dropped["admissions_without_events"] = int((~kept).sum())
    dropped["patients_without_events"] = int(visits["subject"].n_unique() - len(starts))
    metadata["visits_sharing_a_time"] = ties
    patients = pl.DataFrame({"subject": subject[starts]})
    static = patients.join(static, on="subject", how="left", maintain_order="left")
    columns = {
        name: _encode(static[name], categories)
        for name, categories in categorical.items()
    }
    columns["age"] = static["age"].cast(pl.Float32).fill_null(np.nan).to_numpy()
    return Cohort(
        schema=CohortSchema(
            modalities=tuple(e.modality for e in events),
            categorical=categorical,
            numerical=("age",),
        ),
        patient_ids=np.array([str(s) for s in subject[starts].tolist()], dtype=object),
        static=columns,
        visit_offsets=np.append(starts, len(subject)),
        visit_times=times,
        event_offsets=np.concatenate([[0], np.cumsum(per_visit[kept])]),
        event_codes=codes,
        event_values=numbers,
        code_values=np.concatenate([e.values for e in events]),
        code_modality=np.repeat(
            np.arange(len(events)), [len(e.values) for e in events]
        ),
        code_units=_units(events),
        metadata=metadata,
    )


def _units(events: Sequence[Events]) -> np.ndarray | None:
    """(C,) each code's unit in the cohort's code order, None where a code has
    none; None when no code has one (so cohorts without units cost nothing)."""
    if all(e.units is None for e in events):
        return None
    return np.concatenate(
        [
            np.full(len(e.values), None, dtype=object) if e.units is None else e.units
            for e in events
        ]
    )


def _merge(
    events: Sequence[Events], per_visit: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every modality's events in the cohort's order (by visit, then modality, then
    each modality's order within the visit): the cohort's codes and values (None
    when no event has a value).

    Each part of ``events`` is copied into place and freed at once, its memory
    handed back as the cohort's arrays fill, so memory holds the events about once,
    not twice. The largest modality goes first: its parts follow the visits when
    the table follows the patients, so the cohort's arrays fill from start to end
    as its parts are freed (a small modality spread over every visit, first, would
    touch every page of them while freeing little)."""
    n = int(per_visit.sum())
    codes = np.empty(n, dtype=np.int32)
    with_numbers = any(e.any_number for e in events)
    numbers = np.empty(n, dtype=np.float32) if with_numbers else None
    # Where each modality's next event goes in each visit: after the visit's
    # events of the modalities before it.
    free, first_code = [], []
    start, code = np.cumsum(per_visit) - per_visit, 0
    for e in events:
        free.append(start.copy())
        first_code.append(code)
        start += e.counts
        code += len(e.values)
    freed = 0
    for m in sorted(range(len(events)), key=lambda m: -int(events[m].counts.sum())):
        e = events[m]
        while e.parts:
            part = e.parts.pop(0)  # in order: a visit may span parts
            begins = np.cumsum(part.count) - part.count
            where = np.repeat(free[m][part.visit] - begins, part.count)
            where += np.arange(len(where))
            codes[where] = e.lookup[part.code] + first_code[m]
            if numbers is not None:
                numbers[where] = np.nan if part.numbers is None else part.numbers
            free[m][part.visit] += part.count
            freed += len(where)
            del part, where
            if freed > 1 << 20:
                release_freed_memory()
                freed = 0
    return codes, numbers


def _encode(values: pl.Series, categories: tuple[str, ...]) -> np.ndarray:
    mapping = {c: i for i, c in enumerate(categories)}
    encoded = values.replace_strict(mapping, default=-1, return_dtype=pl.Int32)
    return encoded.fill_null(-1).to_numpy()


def strictly_increasing(
    times: np.ndarray, patient_starts: np.ndarray
) -> tuple[np.ndarray, int]:
    """Times nudged apart by a microsecond where two admissions of a patient share one
    (the data model wants visit times to strictly increase); and how many were."""
    times = times.copy()
    first = np.zeros(len(times), dtype=bool)
    first[patient_starts] = True
    ties = np.flatnonzero(~first[1:] & (times[1:] <= times[:-1])) + 1
    for i in ties.tolist():
        times[i] = max(times[i], times[i - 1] + np.timedelta64(1, "us"))
    return times, len(ties)


_NOT_DROPS = ("rows", "events", "rows_assigned_by_time")


def log_drops(where: str, dropped: Mapping[str, Any]) -> None:
    """Log the non-zero counts of ``dropped`` in one line."""
    parts = []
    for key, value in dropped.items():
        if isinstance(value, Mapping):
            inner = [
                f"{k} {v:,}" for k, v in value.items() if v and k not in _NOT_DROPS
            ]
            if inner:
                parts.append(f"{key}: " + ", ".join(inner))
        elif value:
            parts.append(f"{key} {value:,}")
    if parts:
        logger.info("%s: dropped %s.", where, "; ".join(parts))


def wanted_modalities(owner: str, preprocessing: Preprocessing | None) -> list[str]:
    """The modalities to read: those ``preprocessing`` keeps (all by default)."""
    if preprocessing is None or preprocessing.modalities is None:
        return list(DEFAULT_MODALITIES)
    for name in preprocessing.modalities:
        if name not in DEFAULT_MODALITIES:
            raise ConfigError(
                f"The modalities of {owner}'s preprocessing must be among "
                f"{list(DEFAULT_MODALITIES)}. Got {name!r} instead."
                f"{did_you_mean(name, DEFAULT_MODALITIES)}"
            )
    return [m for m in DEFAULT_MODALITIES if m in preprocessing.modalities]


def finish(
    cohort: Cohort, preprocessing: Preprocessing | None, where: str, started: float
) -> Cohort:
    """Log what was read and dropped, then apply ``preprocessing``."""
    logger.info(
        "%s: read %d patients, %d visits, %d events in %.1f s.",
        where,
        len(cohort),
        cohort.n_visits,
        cohort.n_events,
        time.perf_counter() - started,
    )
    log_drops(where, cohort.metadata["dropped"])
    if preprocessing is None:
        return cohort
    if preprocessing.modalities is not None:
        # Modalities whose table is absent were left out, with a warning.
        kept = [m for m in preprocessing.modalities if m in cohort.schema.modalities]
        preprocessing = preprocessing.replace(modalities=tuple(kept))
    cohort = preprocess(cohort, preprocessing, source=where)
    units = cohort.code_units
    if units is not None and all(u is None for u in units.tolist()):
        # Preprocessing dropped every code with a unit: no units, as when read.
        cohort = cohort.replace(code_units=None)
    return cohort
