"""How one MIMIC event table becomes one modality's events.

Each row names an admission (or, for labs, only a patient and a time), a code and
what orders codes within a visit. Events are the distinct (admission, code) pairs:
their first time or sequence number, and for labs the last value in file order.

MIMIC's tables are grouped by patient, so the table is read a block of rows at a
time (:meth:`~ehrgen.data.formats._mimic_common.Table.blocks`), and each block is
reduced at once to compact numpy arrays (an ``int32`` code and a ``float32`` value per
event) for every patient it completes. The rows of the block's last patient, who may
go on in the next block, are carried over to it. Memory then holds the events found
so far plus one block, however large the table (MIMIC-IV's ``labevents`` has 118M
rows). Lab units are tallied as (code, unit) row counts, a table as small as the
distinct pairs, from which each code takes its most frequent unit at the end.

A table not grouped by patient is noticed (a patient's rows come back after her events
were reduced) and read again whole with Polars' streaming aggregation, which is
correct in any row order but holds every distinct (admission, code) pair, about 160
bytes each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ehrgen.data.formats._memory import release_freed_memory
from ehrgen.data.formats._mimic_common import Table
from ehrgen.errors import SchemaError

logger = logging.getLogger(__name__)

# Bytes of the file read at a time: some 17,000 MIMIC lab rows. Small enough that a
# block's working set (about 20 MiB) stays under the events of a large cohort, large
# enough that Polars' cost per call stays small: 10M lab rows read as fast as in the
# former single streaming pass. 4 MiB blocks were 15% faster and peaked 18 MiB higher.
BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class EventQuery:
    """How the rows of one table become the codes of one modality.

    ``derive`` turns the raw ``columns`` (named in the dataset's case, with their
    dtypes) into ``hadm`` (Int64, null when the row names no admission), the ``keys``
    that identify a code (null: the row has none), ``order`` (what orders codes
    within a visit: a time or a sequence number) and ``bad`` (the row holds a value
    that does not parse); with ``assign_orphans`` also ``subject``, with ``values``
    also ``value`` (Float64, null when the row has none), and with ``units`` (which
    needs ``values``) also ``unit`` (String, null when the row has none). Rows
    without an admission id are assigned, when ``assign_orphans``, to the admission
    whose interval holds their time. ``format`` turns distinct keys (a sorted
    frame) into code strings; ``explain`` builds the error for bad rows.
    """

    modality: str
    columns: Mapping[str, Any]
    derive: Callable[[pl.LazyFrame], pl.LazyFrame]
    keys: tuple[str, ...]
    format: Callable[[pl.DataFrame], list[str]]
    explain: Callable[[], SchemaError]
    assign_orphans: bool = False
    values: bool = False
    units: bool = False


@dataclass
class EventPart:
    """The events of some visits, grouped by visit in increasing visit order."""

    visit: np.ndarray  # (k,) int64 rows of the visits frame
    count: np.ndarray  # (k,) int64 events of each
    code: np.ndarray  # (n,) int32 code numbers, see Events.lookup
    numbers: np.ndarray | None  # (n,) float32 value of each event, NaN: none


@dataclass
class Events:
    """One modality's distinct (visit, code) events, ordered within each visit by
    first time or sequence number, then code."""

    modality: str
    values: np.ndarray  # (C,) object, sorted code strings
    lookup: np.ndarray  # code number in the parts -> index into values
    counts: np.ndarray  # (V,) int64 events of each visit
    parts: list[EventPart] = field(default_factory=list)
    any_number: bool = False  # some event has a value
    # (C,) object, each code's unit or None (see _most_frequent_units); None when
    # no code has one.
    units: np.ndarray | None = None


def read_events(
    table: Table,
    query: EventQuery,
    visits: pl.DataFrame,
    invalid_rows: str,
    dropped: dict,
) -> Events:
    """Reduce ``table`` to distinct events; count what is dropped in ``dropped``."""
    try:
        return _Blocks(table, query, visits, invalid_rows).read(dropped)
    except _NotGrouped as error:
        # Handled outside the except clause, so that the partial reduction (held by
        # the traceback) is freed before the whole table is read.
        reason = str(error)
    logger.info(
        "%s: %s, so the rows of a patient are not all together; reading the table "
        "whole (more memory: about 160 bytes per distinct (admission, code) pair).",
        table.where,
        reason,
    )
    release_freed_memory()
    return read_whole(table, query, visits, invalid_rows, dropped)


# --------------------------------------------------------------------------- blocks


class _NotGrouped(Exception):
    """A patient's rows came back after her events were reduced."""


class _Blocks:
    """Reduces a table grouped by patient one block of rows at a time."""

    def __init__(
        self, table: Table, query: EventQuery, visits: pl.DataFrame, invalid_rows: str
    ) -> None:
        self.table, self.query, self.invalid_rows = table, query, invalid_rows
        self.keys = list(query.keys)
        self.value = ["value"] if query.values else []
        # Patients are numbered 0.. in visit order; patient_of[v] is visit v's.
        subjects = visits["subject"].to_numpy()
        self.subjects, patient = np.unique(subjects, return_inverse=True)
        self.patient_of = pl.Series("patient", patient.reshape(-1).astype(np.int32))
        self.done = np.zeros(len(self.subjects), dtype=bool)
        self.admissions = visits.select("hadm", "visit")
        self.intervals = visits.select("subject", "visit", "start", "end", "next_start")
        self.codes = _CodeBook(query)
        self.units = _UnitTally(self.keys) if query.units else None
        self.counts = dict.fromkeys(
            ["rows", "rows_invalid", "rows_without_code", "rows_without_admission_id"],
            0,
        )
        self.assigned = self.unknown = 0
        self.per_visit = np.zeros(visits.height, dtype=np.int64)
        self.parts: list[EventPart] = []
        self.any_number = False

    def read(self, dropped: dict) -> Events:
        carry: pl.DataFrame | None = None
        first_row = 0
        for block in self.table.blocks(self.query.columns, BLOCK_BYTES):
            rows = self._rows(block, first_row)
            first_row += block.height
            del block
            if carry is not None:
                rows = pl.concat([carry, rows])
            if not rows.height:
                continue
            # The block's last patient may go on in the next block: carry her rows.
            last = rows["patient"][-1]
            open_ = pl.col("patient") == last
            self._reduce(rows.filter(~open_))
            carry = rows.filter(open_)
            del rows
            release_freed_memory()
        if carry is not None:
            self._reduce(carry)
        return self._finish(dropped)

    def _rows(self, block: pl.DataFrame, first_row: int) -> pl.DataFrame:
        """The block's rows that can make an event, each with its ``visit`` and
        ``patient`` number, in file order; the others counted, and the units of
        them all tallied."""
        keys, query = self.keys, self.query
        frame = query.derive(block.lazy()).collect()
        has_code = pl.all_horizontal(pl.col(k).is_not_null() for k in keys)
        good = ~pl.col("bad")
        no_admission = good & has_code & pl.col("hadm").is_null()
        counts = frame.select(
            rows=pl.len(),
            rows_invalid=pl.col("bad").sum(),
            rows_without_code=(good & ~has_code).sum(),
            rows_without_admission_id=no_admission.sum(),
        ).row(0, named=True)
        for name, count in counts.items():
            self.counts[name] += count
        if counts["rows_invalid"] and self.invalid_rows == "error":
            raise query.explain()
        if self.units is not None:
            self.units.add(frame)
        frame = frame.with_row_index("_row", first_row).filter(has_code)
        columns = ["_row", "visit", *keys, "order", "bad", *self.value]
        direct = frame.filter(pl.col("hadm").is_not_null()).join(
            self.admissions, on="hadm", how="left", maintain_order="left"
        )
        unknown = pl.col("visit").is_null()
        self.unknown += direct.filter(unknown & good).height
        parts = [direct.filter(~unknown).select(*columns, orphan=pl.lit(False))]
        if query.assign_orphans:
            orphans = frame.filter(pl.col("hadm").is_null() & good)
            orphans = _assign(orphans, self.intervals)
            self.assigned += orphans.height
            parts.append(orphans.select(*columns, orphan=pl.lit(True)))
        rows = pl.concat(parts).sort("_row")
        return rows.with_columns(patient=self.patient_of.gather(rows["visit"]))

    def _reduce(self, rows: pl.DataFrame) -> None:
        """The events of the patients of ``rows``, all of whose rows these are."""
        if not rows.height:
            return
        patients = rows["patient"].unique().to_numpy()
        if self.done[patients].any():
            subject = self.subjects[patients[self.done[patients]][0]]
            raise _NotGrouped(f"patient {subject} has rows in two places")
        self.done[patients] = True
        keys = self.keys
        value = [_last_value()] if self.query.values else []
        groups = (
            rows.group_by("visit", "orphan", *keys, maintain_order=True)
            .agg(
                pl.col("order").min(),
                pl.len().alias("rows"),
                pl.col("bad").sum(),
                *value,
            )
            .filter(pl.col("rows") > pl.col("bad"))
        )
        if not groups.height:
            return
        groups = self.codes.number(groups)
        # As when read whole: by first time, then code string; a row with an
        # admission id before one assigned by time; a code kept once per visit.
        events = groups.sort(
            "visit", "order", "_rank", "orphan", nulls_last=True, maintain_order=True
        ).filter(pl.struct("visit", "_code").is_first_distinct())
        visit, count = np.unique(events["visit"].to_numpy(), return_counts=True)
        # Copies that numpy owns: a view would keep Polars' buffers, whose memory
        # release_freed_memory cannot hand back, for as long as the part lives.
        numbers = None
        if self.query.values:
            value = events["value"].cast(pl.Float32).fill_null(np.nan)
            numbers = np.array(value.to_numpy(), dtype=np.float32)
            self.any_number = self.any_number or bool(np.isfinite(numbers).any())
        self.per_visit[visit] += count
        code = np.array(events["_code"].to_numpy(), dtype=np.int32)
        self.parts.append(EventPart(visit, count, code, numbers))

    def _finish(self, dropped: dict) -> Events:
        counts = self.counts
        if self.query.assign_orphans:
            counts["rows_without_admission_id"] -= self.assigned
            counts["rows_assigned_by_time"] = self.assigned
        counts["rows_with_unknown_admission"] = self.unknown
        counts["events"] = int(self.per_visit.sum())
        dropped[self.table.name] = {k: int(v) for k, v in counts.items()}
        values, lookup = self.codes.finish()
        units = None
        if self.units is not None and self.codes.known is not None:
            known = self.codes.known
            index = pl.Series(lookup).gather(known["_code"]).alias("index")
            units = self.units.per_code(known.select(*self.keys, index), len(values))
        return Events(
            self.query.modality,
            values,
            lookup,
            self.per_visit,
            self.parts,
            self.any_number,
            units,
        )


class _CodeBook:
    """Numbers codes in the order they are first met, over all blocks; each key
    formatted once, when first met. Keys that format to one string share a number."""

    def __init__(self, query: EventQuery) -> None:
        self.query, self.keys = query, list(query.keys)
        self.known: pl.DataFrame | None = None  # keys -> _code
        self.strings: list[str] = []
        self.numbers: dict[str, int] = {}

    def number(self, groups: pl.DataFrame) -> pl.DataFrame:
        """``groups`` (not empty) with ``_code`` (its number) and ``_rank`` (the
        order of its code string among those of ``groups``: their order among all
        codes)."""
        keys = self.keys
        distinct = groups.select(keys).unique()
        new = distinct
        if self.known is not None:
            new = distinct.join(self.known, on=keys, how="anti")
        if new.height:
            new = new.sort(keys)
            numbers = [self._number(text) for text in self.query.format(new)]
            new = new.with_columns(_code=pl.Series(numbers, dtype=pl.Int32))
            self.known = new if self.known is None else pl.concat([self.known, new])
        distinct = distinct.join(self.known, on=keys, how="left")
        strings = np.array(
            [self.strings[c] for c in distinct["_code"].to_list()], dtype=object
        )
        rank = np.empty(len(strings), dtype=np.int32)
        rank[np.argsort(strings, kind="stable")] = np.arange(len(strings))
        distinct = distinct.with_columns(_rank=pl.Series(rank))
        return groups.join(distinct, on=keys, how="left", maintain_order="left")

    def _number(self, text: str) -> int:
        number = self.numbers.get(text)
        if number is None:
            number = self.numbers[text] = len(self.strings)
            self.strings.append(text)
        return number

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted code strings, and each code number's index among them."""
        values, lookup = np.unique(
            np.array(self.strings, dtype=object), return_inverse=True
        )
        return values, lookup.reshape(-1).astype(np.int32)


class _UnitTally:
    """How many rows of each code have each unit, summed over the blocks.

    Only rows with a code, a value and a unit count, whether or not they make an
    event. The running table holds one row per distinct (code keys, unit) pair (a
    few thousand in MIMIC), never a row's unit: memory stays that of a block."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.counts: pl.DataFrame | None = None  # keys, unit, rows

    def add(self, frame: pl.DataFrame) -> None:
        """Tally the rows of ``frame`` (the derived columns of a block)."""
        counts = _unit_counts(frame, self.keys)
        if self.counts is not None:
            counts = pl.concat([self.counts, counts]).group_by(*self.keys, "unit")
            counts = counts.agg(pl.col("rows").sum())
        self.counts = counts

    def per_code(self, codes: pl.DataFrame, n_codes: int) -> np.ndarray | None:
        """See :func:`_most_frequent_units`."""
        if self.counts is None:
            return None
        return _most_frequent_units(self.counts, codes, self.keys, n_codes)


def _unit_counts(rows: pl.DataFrame | pl.LazyFrame, keys: list[str]) -> Any:
    """Rows with a code, a value and a unit, counted per (keys, unit); eager or
    lazy alike."""
    counted = pl.all_horizontal(
        *(pl.col(k).is_not_null() for k in keys),
        pl.col("value").is_not_null(),
        pl.col("unit").is_not_null(),
        ~pl.col("bad"),  # a dropped row does not vote
    )
    return (
        rows.filter(counted)
        .group_by(*keys, "unit")
        .agg(pl.len().cast(pl.Int64).alias("rows"))
    )


def _most_frequent_units(
    counts: pl.DataFrame, codes: pl.DataFrame, keys: list[str], n_codes: int
) -> np.ndarray | None:
    """(n_codes,) object: each code's most frequent unit, ties to the smaller unit
    string; None for a code without one. ``codes`` maps the keys to ``index``, the
    code's place in the modality's sorted codes (keys that format to one string
    share it, and pool their counts); keys with no event are not in it. None when
    no code has a unit."""
    per_code = (
        counts.join(codes, on=keys, how="inner")
        .group_by("index", "unit")
        .agg(pl.col("rows").sum())
        .sort(["index", "rows", "unit"], descending=[False, True, False])
        .unique("index", keep="first", maintain_order=True)
    )
    if not per_code.height:
        return None
    units = np.full(n_codes, None, dtype=object)
    units[per_code["index"].to_numpy()] = per_code["unit"].to_list()
    return units


def _last_value(rows_may_be_bad: bool = True) -> pl.Expr:
    """Within a group: the value of its last row, in file order, that has one.
    File order, not chart time: sorting each group by time made the read of 10M lab
    rows peak at 1,349 MiB, against 1,033 MiB this way (862 MiB without values)."""
    value = pl.col("value")
    if rows_may_be_bad:  # a row dropped for a bad time gives no value either
        value = value.filter(~pl.col("bad"))
    return value.drop_nulls().last().alias("value")


def _assign(orphans: Any, visits: Any) -> Any:
    """Rows without an admission id, each with the ``visit`` whose interval
    [start, end] holds its time (the latest-starting one when admissions overlap),
    in the rows' order; rows that no interval holds are left out. Works on eager
    and lazy frames alike."""
    time = pl.col("order")
    inside = (
        (time >= pl.col("start"))
        & (time <= pl.col("end"))
        & (pl.col("next_start").is_null() | (time < pl.col("next_start")))
    )
    return (
        orphans.filter(time.is_not_null())
        .join(visits, on="subject", how="inner", maintain_order="left")
        .filter(inside)
    )


# --------------------------------------------------------------------------- whole


def read_whole(
    table: Table,
    query: EventQuery,
    visits: pl.DataFrame,
    invalid_rows: str,
    dropped: dict,
) -> Events:
    """:func:`read_events` for a table in any row order: Polars' streaming
    aggregation to distinct (admission, code) pairs. The rows without admission id,
    when assigned by time, are a second pass over the table: slower than one shared
    scan, but the two reductions never hold memory at the same time."""
    keys = list(query.keys)
    has_code = pl.all_horizontal(pl.col(k).is_not_null() for k in keys)
    good = pl.col("rows") - pl.col("bad")
    last_value = [_last_value()] if query.values else []
    scan = query.derive(table.scan(query.columns))
    # Collected with the reduction (Table.collect: one query plan for both).
    tally = [_unit_counts(scan, keys)] if query.units else []
    groups, *unit_counts = table.collect(
        scan.group_by("hadm", *keys).agg(
            pl.col("order").min(),
            pl.len().alias("rows"),
            pl.col("bad").sum(),
            *last_value,
        ),
        *tally,
    )
    counts = groups.select(
        rows=pl.col("rows").sum(),
        rows_invalid=pl.col("bad").sum(),
        rows_without_code=good.filter(~has_code).sum(),
        rows_without_admission_id=good.filter(
            has_code & pl.col("hadm").is_null()
        ).sum(),
    ).row(0, named=True)
    if counts["rows_invalid"] and invalid_rows == "error":
        raise query.explain()
    groups = groups.filter(has_code & pl.col("hadm").is_not_null() & (good > 0))
    value = ["value"] if query.values else []
    groups = groups.select("hadm", *keys, "order", good.alias("rows"), *value)
    groups = groups.join(visits.select("hadm", "visit"), on="hadm", how="left")
    unknown = pl.col("visit").is_null()
    unknown_rows = groups.filter(unknown)["rows"].sum()
    groups = groups.filter(~unknown).drop("hadm")
    if query.assign_orphans:
        orphans = scan.filter(pl.col("hadm").is_null() & ~pl.col("bad"))
        orphans = orphans.select("subject", *keys, "order", *value)
        intervals = visits.lazy().select(
            "subject", "visit", "start", "end", "next_start"
        )
        (assigned,) = table.collect(
            _assign(orphans, intervals)
            .group_by("visit", *keys)
            .agg(
                pl.col("order").min(),
                pl.len().alias("rows"),
                *([_last_value(rows_may_be_bad=False)] if query.values else []),
            )
        )
        assigned = assigned.filter(has_code).select(groups.columns)
        counts["rows_assigned_by_time"] = int(assigned["rows"].sum())
        counts["rows_without_admission_id"] -= counts["rows_assigned_by_time"]
        # A code can now appear twice in a visit; _to_events keeps its first.
        groups = pl.concat([groups, assigned])
        del assigned
    counts["rows_with_unknown_admission"] = unknown_rows
    result = _to_events(query, groups, keys, visits.height, *unit_counts)
    counts["events"] = int(result.counts.sum())
    dropped[table.name] = {k: int(v) for k, v in counts.items()}
    return result


def _to_events(
    query: EventQuery,
    events: pl.DataFrame,
    keys: list[str],
    n_visits: int,
    unit_counts: pl.DataFrame | None = None,
) -> Events:
    """Code indices from the distinct keys (formatted once each), events sorted by
    visit, first time and code, and each code kept once per visit; each code's unit
    from ``unit_counts`` (see :class:`_UnitTally`)."""
    # One key column, or a struct of several: sorted and ranked alike.
    key = pl.struct(keys) if len(keys) > 1 else pl.col(keys[0])
    distinct = events.select(key.alias("_key")).unique().sort("_key")
    distinct = (
        distinct.unnest("_key") if len(keys) > 1 else distinct.rename({"_key": keys[0]})
    )
    formatted = np.asarray(query.format(distinct), dtype=object)
    values, index = np.unique(formatted, return_inverse=True)
    units = None
    if unit_counts is not None:
        codes = distinct.with_columns(index=pl.Series(index.reshape(-1)))
        units = _most_frequent_units(unit_counts, codes, keys, len(values))
    events = events.select(
        "visit",
        "order",
        (key.rank("dense").cast(pl.Int64) - 1).alias("code"),
        *(["value"] if query.values else []),
    )
    events = events.with_columns(
        code=pl.Series(index.reshape(-1)).gather(events["code"])
    )
    events = events.sort("visit", "order", "code", nulls_last=True, maintain_order=True)
    # Repeats: several keys formatted to one code, or rows assigned by time.
    events = events.filter(
        (pl.col("visit") * len(values) + pl.col("code")).is_first_distinct()
    )
    visit, count = np.unique(events["visit"].to_numpy(), return_counts=True)
    counts = np.zeros(n_visits, dtype=np.int64)
    counts[visit] = count
    numbers = None
    if query.values:
        numbers = events["value"].cast(pl.Float32).fill_null(np.nan).to_numpy()
    return Events(
        query.modality,
        values,
        np.arange(len(values), dtype=np.int32),
        counts,
        [EventPart(visit, count, events["code"].to_numpy().astype(np.int32), numbers)],
        numbers is not None and bool(np.isfinite(numbers).any()),
        units,
    )
