"""MEDS (Medical Event Data Standard, v0.4) I/O: ehrgen's on-disk format.

A MEDS dataset is a folder::

    data/<split>/<shard>.parquet    subject_id int64, time timestamp[us] (null: static),
                                    code string, numeric_value float32 (nullable)
    metadata/dataset.json           dataset name, ETL, MEDS version, creation time
    metadata/codes.parquet          every code used, with an (empty) description
    metadata/subject_splits.parquet subject_id -> split (train / tuning / held_out)

How a cohort maps onto it:

* an event is ``PREFIX//VALUE`` where ``PREFIX`` names the modality (``DIAGNOSIS``,
  ``PROCEDURE``, ``DRUG``, ``LAB``) and ``VALUE`` is the cohort's code string, which
  carries its code system (``DIAGNOSIS//ICD9CM//4019``, ``DRUG//ATC//N02B``,
  ``LAB//Creatinine``); every event of one visit has the visit's time;
* a categorical baseline feature is a static row (null time) ``FEATURE//VALUE``
  (``GENDER//F``); a numerical one is ``FEATURE`` with ``numeric_value`` (``AGE``);
* a patient-level outcome label is a static row ``LABEL//NAME`` with ``numeric_value``;
* ``metadata/ehrgen.json`` keeps what MEDS has no place for (the exact schema, whether
  the times are placeholders, each code's unit, the patient ids when they are not
  integers), so a cohort written by ehrgen reads back equal to itself.

Datasets written by other tools read too. Visits are the events of a subject that share
a timestamp, or an admission id when the caller names that column (the visit then sits
at the earliest row of its admission, whatever that row's code), or the events between
an admission code and its discharge code, or events less than a time window apart
(``visit_by``, :mod:`._meds_visits`); the modality comes from
the code's prefix through ``prefix_to_modality``, and the rest of the code, systems and
units included, is the cohort's code (``LAB//50912//mg/dL`` -> lab ``50912//mg/dL``).
Codes whose prefix maps to no modality are an error listing them (or, with
``unknown_prefixes="drop"``, dropped with a warning), never silently lost.
``MEDS_BIRTH`` gives the ``age`` feature (years at the first visit) when the data have
no ``AGE`` row; other ``MEDS_*`` codes (``MEDS_DEATH``) are not used. Baseline features
come from the static rows, or from the prefixes the caller names in ``static_prefixes``.
``metadata["unused_events"]`` counts every row not used, by prefix and reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrgen.data import Cohort, CohortSchema
from ehrgen.data.formats._meds_columns import (
    BIRTH_CODE,
    LABEL_PREFIX,
    NO_VISIT,
    Rows,
    ShardReader,
    VisitAccumulator,
    age_at_first_visit,
    build_visits,
    concat_rows,
    split_codes,
    static_columns,
    visit_times_from_ids,
)
from ehrgen.data.formats._meds_visits import (
    VisitGrouping,
    admission_visits,
    parse_visit_by,
    window_visits,
)
from ehrgen.data.formats.meds_writer import (
    MEDS_VERSION,
    write_meds,
)
from ehrgen.errors import ConfigError, SchemaError

__all__ = [
    "DEFAULT_PREFIX_TO_MODALITY",
    "MEDS_VERSION",
    "read_meds",
    "write_meds",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX_TO_MODALITY: dict[str, str] = {
    "DIAGNOSIS": "diagnosis",
    "PROCEDURE": "procedure",
    "DRUG": "drug",
    "MEDICATION": "drug",
    "LAB": "lab",
}


# --------------------------------------------------------------------------- reading


def read_meds(
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    prefix_to_modality: Mapping[str, str] | None = None,
    visit_id_column: str | None = None,
    unknown_prefixes: Literal["error", "drop"] = "error",
    static_prefixes: Sequence[str] | None = None,
    visit_by: str | None = None,
    admission_prefixes: tuple[str, str] | None = None,
) -> Cohort:
    """Read a MEDS dataset (ehrgen's own, or another tool's) into a :class:`Cohort`.

    Args:
        root: the dataset folder (holding ``data/`` and, usually, ``metadata/``).
        split: read only the subjects of this split
            (``metadata/subject_splits.parquet``).
        prefix_to_modality: code prefix -> modality, for datasets not written by ehrgen
            (default :data:`DEFAULT_PREFIX_TO_MODALITY`); the modalities become the
            schema's, in this mapping's order.
        visit_id_column: group events into visits by this column (an admission id)
            instead of by timestamp; a visit's time is its earliest event's.
        visit_by: how events become visits (see :mod:`._meds_visits`): ``"time"``
            (default), ``"id"`` (implied by ``visit_id_column``), ``"admission"``
            (admission/discharge code pairs; the visit is at the admission) or
            ``"window:24h"`` (events less than the window apart).
        admission_prefixes: with ``visit_by="admission"``, the prefixes of the
            admission and discharge codes (default ``HOSPITAL_ADMISSION``,
            ``HOSPITAL_DISCHARGE`` as MEDS-Extract writes MIMIC-IV).
        unknown_prefixes: ``"error"`` (default) or ``"drop"`` codes whose prefix maps
            to no modality; dropped codes are counted in ``cohort.metadata``.
        static_prefixes: prefixes whose rows give the baseline features, timed or not
            (``["GENDER", "RACE"]``): a feature keeps its earliest value, static rows
            (null time) first. Default: every static row gives a feature, and timed
            rows never do. When given, static rows of other prefixes are not used.

    A mapped code with no ``//`` is its own code: ``prefix_to_modality={"HR": "lab"}``
    makes the code ``HR`` the lab ``HR``.

    ``cohort.metadata["unused_events"]`` lists the rows not used, by prefix and
    reason, most frequent first: ``{"prefix": "HOSPITAL_ADMISSION", "events": 12,
    "reason": "no modality mapped"}``.

    Raises:
        SchemaError: naming the file, row and column of malformed input.
        ConfigError: a prefix both in ``prefix_to_modality`` and ``static_prefixes``,
            or visit options that do not go together.
    """
    root = Path(root)
    extra = _read_json(root / "metadata" / "ehrgen.json")
    schema = CohortSchema.from_dict(extra["schema"]) if extra else None
    if prefix_to_modality is None:
        prefix_to_modality = (
            {v: k for k, v in extra["modality_prefixes"].items()}
            if extra
            else DEFAULT_PREFIX_TO_MODALITY
        )
    modalities = (
        schema.modalities
        if schema
        else tuple(dict.fromkeys(prefix_to_modality.values()))
    )
    _check_static_prefixes(static_prefixes, prefix_to_modality)
    grouping = parse_visit_by(visit_by, visit_id_column, admission_prefixes)
    files = _data_files(root)
    wanted = None if split is None else _split_subjects(root, split)
    options = _Options(prefix_to_modality, modalities, static_prefixes,
                       unknown_prefixes, grouping, visit_id_column)  # fmt: skip
    # Shard by shard, so that memory holds the finished arrays and one shard's rows;
    # all at once where a subject's rows lie in several shards.
    read = _read_events(root, files, [[i] for i in range(len(files))], wanted, options)
    if read is None:
        read = _read_events(root, files, [list(range(len(files)))], wanted, options)
    assert read is not None  # one group cannot split a subject
    parts, static_rows, births, codes, report, unused = read
    prefixes, values, code_modality = codes.prefixes, codes.values, codes.modality
    subjects, used = parts.pop("subjects"), parts.pop("used_codes")
    baseline = _baseline_rows(
        static_rows, subjects, prefixes, values, static_prefixes, unused
    )
    columns, labels, schema = static_columns(
        baseline, subjects, prefixes, values, schema, modalities
    )
    for name in extra["labels"] if extra else ():
        labels.setdefault(name, np.full(len(subjects), np.nan, np.float32))
    if births and "age" not in schema.features:
        first_visit = parts["visit_times"][parts["visit_offsets"][:-1]]
        columns["age"] = age_at_first_visit(births, subjects, first_visit)
        schema = CohortSchema(
            modalities=schema.modalities,
            categorical=schema.categorical,
            numerical=(*schema.numerical, "age"),
        )
    elif births:
        count = report["ignored_meds_codes"][BIRTH_CODE]
        unused.add_count(BIRTH_CODE, "the data give the age", count)
    _report_subjects_without_visits(static_rows.subject, subjects, report)
    report["unused_events"] = unused.listing()
    if report["unused_events"]:
        # Debug, not info: the CLI prints this list from the metadata.
        logger.debug("Rows not used: %s.", unused.summary())
    report.update(_source_metadata(root))
    cohort = Cohort(
        schema=schema,
        patient_ids=_patient_ids(root, subjects),
        static=columns,
        labels=labels,
        times_are_placeholders=bool(extra and extra["times_are_placeholders"]),
        metadata={**(extra["metadata"] if extra else {}), **report},
        code_values=np.array([values[c] for c in used.tolist()], dtype=object),
        code_modality=code_modality[used].astype(np.int8),
        **parts,
    )
    if extra and extra.get("units"):
        cohort = cohort.with_units(
            {(m, code): unit for m, units in extra["units"].items()
             for code, unit in units.items()}
        )  # fmt: skip
    return _in_split_file_order(root, cohort, subjects)


@dataclass(frozen=True)
class _Options:
    """What read_meds was asked, for :func:`_read_events`."""

    prefix_to_modality: Mapping[str, str]
    modalities: tuple[str, ...]
    static_prefixes: Sequence[str] | None
    unknown_prefixes: str
    grouping: VisitGrouping
    visit_id_column: str | None


class _Codes:
    """Prefix, value and modality of each code read so far (lists grown in place,
    so that :class:`_Unused` sees new codes)."""

    def __init__(self, options: _Options) -> None:
        self.options = options
        self.prefixes: list[str] = []
        self.values: list[str | None] = []
        self.modality = np.zeros(0, np.int64)

    def update(self, codes: list[str]) -> None:
        if len(codes) == len(self.prefixes):
            return
        mapping = self.options.prefix_to_modality
        prefixes, values = split_codes(codes[len(self.prefixes) :])
        self.prefixes += prefixes
        self.values += [
            p if v is None and p in mapping else v for p, v in zip(prefixes, values)
        ]
        self.modality = _code_modalities(
            self.prefixes, self.values, mapping, self.options.modalities
        )


def _read_events(
    root: Path,
    files: list[Path],
    groups: list[list[int]],
    wanted: np.ndarray | None,
    options: _Options,
):
    """Visits of every group of shards, joined: (visit arrays, static rows, births,
    codes, report, unused counts), or None when a subject spans groups."""
    reader = ShardReader(files, options.visit_id_column)
    codes = _Codes(options)
    report: dict[str, Any] = {"source": str(root), "format": "MEDS"}
    unused = _Unused(codes.prefixes)
    joined, static_parts, births = VisitAccumulator(), [], {}
    any_events = False
    for group in groups:
        rows = reader.read(group)
        if wanted is not None:
            rows = rows.take(np.isin(rows.subject, wanted))
        codes.update(rows.codes)
        static = np.isnat(rows.time)
        if options.static_prefixes is not None:
            named = set(options.static_prefixes)
            in_named = np.array([p in named for p in codes.prefixes], dtype=bool)
            static |= in_named[rows.code]
        static_parts.append(rows.take(static))
        events = rows.take(~static)
        del rows
        births.update(_special_codes(events, report))
        events = _visit_events(events, codes, options, report, unused)
        if len(events.subject):
            joined.add(build_visits(events, codes.modality))
            any_events = True
        del events
    _check_not_empty(any_events, options, unused)
    merged = joined.finish()
    if merged is None:
        return None
    _warn_dropped(report, unused, options)
    return merged, concat_rows(static_parts), births, codes, report, unused


def _visit_events(
    events: Rows, codes: _Codes, options: _Options, report: dict, unused: _Unused
) -> Rows:
    """A shard's events of a modality, each with its visit (id or time)."""
    grouping = options.grouping
    if grouping.kind == "admission":
        events = _in_stays(events, codes.prefixes, grouping, codes.modality, unused)
    elif grouping.kind == "id":
        events = _admission_times(events)
    events = _known_modalities(
        events, codes.modality, codes.prefixes, options.unknown_prefixes, report,
        unused,
    )  # fmt: skip
    if grouping.kind == "id":
        events = _with_visit_ids(events, options.visit_id_column, unused)
    elif grouping.kind == "window":
        events = window_visits(events, grouping.window)
    return events


def _check_not_empty(any_events: bool, options: _Options, unused: _Unused) -> None:
    if any_events:
        return
    column = options.visit_id_column
    if any(reason == f"no {column}" for _, reason in unused.counts):
        raise SchemaError(
            f"No visit event has a {column!r}: the cohort is empty. Check "
            f"visit_id_column (--visit-id-column), or leave it out to group the "
            f"events into visits by time."
        )
    raise SchemaError("The MEDS dataset holds no visit event: the cohort is empty.")


def _warn_dropped(report: dict, unused: _Unused, options: _Options) -> None:
    """One warning per kind of drop, for the whole dataset."""
    dropped = report.get("dropped_unknown_prefixes")
    if dropped:
        ranked = sorted(dropped.items(), key=lambda x: -x[1])
        listing = ", ".join(f"{p!r} ({n} rows)" for p, n in ranked[:10])
        logger.warning("Dropped codes with unknown prefixes: %s.", listing)
    if options.grouping.kind == "id":
        reason = f"no {options.visit_id_column}"
        missing = sum(n for (_, r), n in unused.counts.items() if r == reason)
        if missing:
            logger.warning("Dropped %d event rows with %s.", missing, reason)


class _Unused:
    """Counts of the rows a read does not use, by (prefix, reason)."""

    def __init__(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, rows: Rows, mask: np.ndarray, reason: str) -> None:
        """Count ``rows[mask]`` under their prefixes."""
        per_code = np.bincount(rows.code[mask], minlength=len(self.prefixes))
        for code in np.flatnonzero(per_code).tolist():
            self.add_count(self.prefixes[code], reason, int(per_code[code]))

    def add_count(self, prefix: str, reason: str, n: int) -> None:
        key = (prefix, reason)
        self.counts[key] = self.counts.get(key, 0) + n

    def listing(self) -> list[dict[str, Any]]:
        """``{"prefix", "events", "reason"}`` dicts, most frequent first."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return [{"prefix": p, "events": n, "reason": r} for (p, r), n in ranked]

    def summary(self) -> str:
        return "; ".join(
            f"{u['prefix']} {u['events']:,} ({u['reason']})" for u in self.listing()
        )


def _check_static_prefixes(
    static_prefixes: Sequence[str] | None, prefix_to_modality: Mapping[str, str]
) -> None:
    if static_prefixes is None:
        return
    if isinstance(static_prefixes, str):
        raise ConfigError(
            f"The 'static_prefixes' parameter of read_meds must be a list of "
            f"prefixes. Got the string {static_prefixes!r} instead; pass "
            f"[{static_prefixes!r}]."
        )
    both = sorted(set(static_prefixes) & set(prefix_to_modality))
    if both:
        raise ConfigError(
            f"The prefixes {both} are both static (static_prefixes, --static-prefix) "
            f"and mapped to a modality (prefix_to_modality, --prefix-map); name each "
            f"in one only."
        )


def _admission_times(events: Rows) -> Rows:
    """Each row with a visit id at its visit's earliest time over all codes (the
    admission row, usually), so that a visit's time does not depend on which codes
    map to a modality; rows without a visit id keep theirs."""
    has_id = events.visit != NO_VISIT
    if not has_id.any():
        return events
    time = events.time.copy()
    time[has_id] = visit_times_from_ids(events.take(has_id)).time
    return dataclasses.replace(events, time=time)


def _in_stays(
    events: Rows,
    prefixes: list[str],
    grouping: VisitGrouping,
    code_modality: np.ndarray,
    unused: _Unused,
) -> Rows:
    """The events with the visit ids of their stays, each at its admission's time.
    Admission and discharge rows are events too where their prefix is mapped to a
    modality (``ADMISSION//CARDIAC``); otherwise they, and the modality events in
    no stay, are counted and dropped (other rows are left to the modality check)."""
    events, boundary = admission_visits(events, prefixes, grouping)
    events = _admission_times(events)
    mapped = code_modality[events.code] >= 0
    boundary &= ~mapped
    outside = mapped & (events.visit == NO_VISIT)
    unused.add(events, boundary, "admission or discharge (visit boundary)")
    unused.add(events, outside, "outside any admission")
    return events.take(~boundary & ~outside)


def _with_visit_ids(events: Rows, column: str, unused: _Unused) -> Rows:
    """The events that have a visit id; the others are counted as unused."""
    missing = events.visit == NO_VISIT
    unused.add(events, missing, f"no {column}")
    return events.take(~missing)


def _baseline_rows(
    rows: Rows,
    subjects: np.ndarray,
    prefixes: list[str],
    values: list[str | None],
    static_prefixes: Sequence[str] | None,
    unused: _Unused,
) -> Rows:
    """The static rows that give baseline features and labels; the others counted."""
    no_visit = ~np.isin(rows.subject, subjects)
    unused.add(rows, no_visit, "subject has no visit event")
    rows = rows.take(~no_visit)
    prefix = np.array(prefixes, dtype=object)[rows.code]
    label = prefix == LABEL_PREFIX
    no_value = np.array([v is None for v in values], dtype=bool)[rows.code]
    empty = no_value & np.isnan(rows.value) & ~label
    unused.add(rows, empty, "static code with no value and no numeric_value")
    keep = ~empty
    if static_prefixes is not None:
        other = ~np.isin(prefix, static_prefixes) & ~label
        unused.add(rows, other & keep, "static; prefix not in static_prefixes")
        keep &= ~other
        # Earliest value first (a null time is the smallest int64), one per feature.
        order = np.lexsort((rows.time.astype(np.int64), prefix, rows.subject))
        later = np.zeros(len(order), dtype=bool)
        same = (rows.subject[order][1:] == rows.subject[order][:-1]) & (
            prefix[order][1:] == prefix[order][:-1]
        )
        later[order[1:][same]] = True
        later &= ~label
        unused.add(rows, later & keep, "a later value of a static prefix")
        keep &= ~later
    return rows.take(keep)


def _special_codes(events: Rows, report: dict[str, Any]) -> dict[int, np.datetime64]:
    """Count ``MEDS_*`` rows in the report; return the birth time of each subject."""
    special = np.array([c.startswith("MEDS_") for c in events.codes] + [False])
    rows = np.flatnonzero(special[events.code])
    if not len(rows):
        return {}
    ids, counts = np.unique(events.code[rows], return_counts=True)
    ignored = report.setdefault("ignored_meds_codes", {})
    for i, n in zip(ids.tolist(), counts.tolist()):
        ignored[events.codes[i]] = ignored.get(events.codes[i], 0) + int(n)
    births = rows[np.array([events.codes[c] == BIRTH_CODE for c in events.code[rows]])]
    return dict(zip(events.subject[births].tolist(), events.time[births]))


def _code_modalities(
    prefixes: list[str],
    values: list[str | None],
    prefix_to_modality: Mapping[str, str],
    modalities: tuple[str, ...],
) -> np.ndarray:
    """The modality index of each code, -1 for codes of no modality."""
    rank = {m: i for i, m in enumerate(modalities)}
    return np.array(
        [
            rank.get(prefix_to_modality.get(p, ""), -1) if v is not None else -1
            for p, v in zip(prefixes, values)
        ],
        dtype=np.int64,
    )


def _known_modalities(
    events: Rows,
    code_modality: np.ndarray,
    prefixes: list[str],
    unknown_prefixes: str,
    report: dict[str, Any],
    unused: _Unused,
) -> Rows:
    """The events of a modality; the others are an error, or dropped and counted."""
    special = np.array([c.startswith("MEDS_") for c in events.codes] + [False])
    birth = np.array([c == BIRTH_CODE for c in events.codes] + [False])
    unused.add(events, (special & ~birth)[events.code], "MEDS code, not used")
    unknown = (code_modality[events.code] < 0) & ~special[events.code]
    if unknown.any():
        names = np.array(prefixes, dtype=object)[events.code[unknown]]
        found, counts = np.unique(names, return_counts=True)
        ranked = sorted(zip(found.tolist(), counts.tolist()), key=lambda x: -x[1])
        listing = ", ".join(f"{p!r} ({n} rows)" for p, n in ranked[:10])
        if unknown_prefixes == "error":
            i = int(np.flatnonzero(unknown)[0])
            code = events.codes[events.code[i]]
            raise SchemaError(
                f"{events.where(i)}, column 'code': code {code!r} has no known "
                f"modality prefix. Unknown prefixes: {listing}. Map them with "
                f"prefix_to_modality= (--prefix-map PREFIX=modality), or pass "
                f"unknown_prefixes='drop' (--unknown-prefixes drop)."
            )
        dropped = report.setdefault("dropped_unknown_prefixes", {})
        for prefix, n in ranked:
            dropped[prefix] = dropped.get(prefix, 0) + n
        unused.add(events, unknown, "no modality mapped")
    return events.take(code_modality[events.code] >= 0)


def _report_subjects_without_visits(
    static_subjects: np.ndarray, subjects: np.ndarray, report: dict[str, Any]
) -> None:
    orphans = np.setdiff1d(np.unique(static_subjects), subjects)
    if len(orphans):
        logger.warning("Dropped %d subject(s) with no visit event.", len(orphans))
        report["dropped_subjects_without_visits"] = len(orphans)


def _in_split_file_order(root: Path, cohort: Cohort, subjects: np.ndarray) -> Cohort:
    """The cohort in the order of ``subject_splits.parquet`` (the order ehrgen wrote
    it in), when that file lists every subject; else sorted by subject id."""
    path = root / "metadata" / "subject_splits.parquet"
    order = None
    if path.exists():
        listed = pq.read_table(path, columns=["subject_id"]).column(0).to_numpy()
        rank = dict(zip(listed.tolist(), range(len(listed))))
        order = [rank.get(s) for s in subjects.tolist()]
    if order is None or None in order:
        order = subjects.tolist()  # shards read apart: back to subject order
    if all(a < b for a, b in zip(order, order[1:])):
        return cohort
    return cohort.select(np.argsort(np.asarray(order), kind="stable"))


def _data_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise SchemaError(f"{root}: not a folder; expected a MEDS dataset folder.")
    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise SchemaError(
            f"{root}: no data/**/*.parquet file; is this a MEDS dataset folder?"
        )
    return files


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaError(f"{path}: not valid UTF-8 JSON ({error}).") from None


def _split_subjects(root: Path, split: str) -> np.ndarray:
    path = root / "metadata" / "subject_splits.parquet"
    if not path.exists():
        raise SchemaError(
            f"{path}: missing, so split {split!r} cannot be selected; read without "
            f"split=, or add the splits file."
        )
    table = pq.read_table(path)
    chosen = table.filter(pc.equal(table.column("split"), split)).column("subject_id")
    if len(chosen) == 0:
        found = sorted(set(table.column("split").to_pylist()))
        raise SchemaError(f"{path}: no subject in split {split!r}; splits: {found}.")
    return chosen.to_numpy()


def _patient_ids(root: Path, subjects: np.ndarray) -> np.ndarray:
    path = root / "metadata" / "ehrgen_subject_ids.parquet"
    if not path.exists():
        return np.array([str(s) for s in subjects.tolist()], dtype=object)
    table = pq.read_table(path)
    mapping = dict(
        zip(
            table.column("subject_id").to_pylist(),
            table.column("patient_id").to_pylist(),
        )
    )
    return np.array([mapping[s] for s in subjects.tolist()], dtype=object)


def _source_metadata(root: Path) -> dict[str, Any]:
    dataset = _read_json(root / "metadata" / "dataset.json")
    return {"meds_dataset": dataset} if dataset else {}
