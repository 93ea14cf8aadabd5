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
  the times are placeholders, the patient ids when they are not integers), so a cohort
  written by ehrgen reads back equal to itself.

Datasets written by other tools read too. Visits are the events of a subject that share
a timestamp, or an admission id when the caller names that column; the modality comes
from the code's prefix through ``prefix_to_modality``. Codes whose prefix maps to no
modality are an error listing them (or, with ``unknown_prefixes="drop"``, dropped with a
warning and counted in the cohort's metadata), never silently lost. ``MEDS_BIRTH`` gives
the ``age`` feature (years at the first visit) when the data have no ``AGE`` row; other
``MEDS_*`` codes (``MEDS_DEATH``) are counted in the metadata and not used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrgen._io import atomic_directory
from ehrgen.data import Cohort, CohortSchema
from ehrgen.data.formats._meds_columns import (
    BIRTH_CODE,
    LABEL_PREFIX,
    SEP,
    Rows,
    age_at_first_visit,
    build_visits,
    read_rows,
    split_codes,
    static_columns,
)
from ehrgen.errors import SchemaError

__all__ = [
    "DEFAULT_PREFIX_TO_MODALITY",
    "MEDS_VERSION",
    "read_meds",
    "write_meds",
]

logger = logging.getLogger(__name__)

MEDS_VERSION = "0.4.1"
DEFAULT_PREFIX_TO_MODALITY: dict[str, str] = {
    "DIAGNOSIS": "diagnosis",
    "PROCEDURE": "procedure",
    "DRUG": "drug",
    "MEDICATION": "drug",
    "LAB": "lab",
}
SHARD_PATIENTS = 100_000

DATA_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us")),
        pa.field("code", pa.string(), nullable=False),
        pa.field("numeric_value", pa.float32()),
    ]
)


# --------------------------------------------------------------------------- writing


def write_meds(
    cohort: Cohort | Mapping[str, Cohort],
    root: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    dataset_name: str = "ehrgen",
    shard_patients: int = SHARD_PATIENTS,
) -> Path:
    """Write a cohort (or ``{split: cohort}``) as a MEDS dataset, atomically.

    Args:
        cohort: one cohort (all of it in split ``train``), or a mapping from split name
            (``train``, ``tuning``, ``held_out``, ...) to cohort; patient ids must be
            unique across splits and the schemas equal.
        root: the dataset folder; written under a temporary name, then renamed.
        overwrite: replace an existing ``root``.
        dataset_name: ``dataset_name`` in ``metadata/dataset.json``.
        shard_patients: patients per Parquet shard.

    Example:
        >>> import tempfile
        >>> from ehrgen.data.demo import demo_cohort
        >>> c = demo_cohort(20, seed=0)
        >>> root = write_meds(c, Path(tempfile.mkdtemp()) / "demo")
        >>> read_meds(root) == c
        True
    """
    splits = {"train": cohort} if isinstance(cohort, Cohort) else dict(cohort)
    if not splits:
        raise SchemaError("write_meds needs at least one cohort. Got an empty mapping.")
    first = next(iter(splits.values()))
    for name, part in splits.items():
        if part.schema != first.schema:
            raise SchemaError(
                f"All splits must share one schema; split {name!r} differs from the "
                f"first split's."
            )
    subject_ids, mapped = _subject_ids(splits)
    codes: set[str] = set()
    with atomic_directory(root, overwrite) as tmp:
        for (name, part), ids in zip(splits.items(), subject_ids):
            folder = tmp / "data" / name
            folder.mkdir(parents=True)
            for shard, start in enumerate(range(0, len(part), shard_patients)):
                rows = np.arange(start, min(start + shard_patients, len(part)))
                table = _events_table(part.select(rows), ids[rows])
                codes.update(pc_unique_strings(table.column("code")))
                pq.write_table(table, folder / f"{shard}.parquet")
        _write_metadata(
            tmp / "metadata", splits, subject_ids, mapped, codes, dataset_name
        )
    return Path(root)


def pc_unique_strings(column: pa.ChunkedArray) -> list[str]:
    """The distinct strings of an Arrow column."""
    return column.unique().to_pylist()


def _subject_ids(splits: Mapping[str, Cohort]) -> tuple[list[np.ndarray], bool]:
    """int64 subject ids per split: the patient ids when they are canonical integers,
    else positions (and the caller stores the mapping)."""
    all_ids = np.concatenate([c.patient_ids for c in splits.values()])
    if len(set(all_ids.tolist())) != len(all_ids):
        raise SchemaError("Patient ids must be unique across splits.")
    try:
        numeric = np.array([int(i) for i in all_ids], dtype=np.int64)
        mapped = not all(str(n) == i for n, i in zip(numeric.tolist(), all_ids))
    except (ValueError, OverflowError):
        mapped = True
    if mapped:
        numeric = np.arange(len(all_ids), dtype=np.int64)
    bounds = np.cumsum([0] + [len(c) for c in splits.values()])
    return [numeric[a:b] for a, b in zip(bounds, bounds[1:])], mapped


def _events_table(cohort: Cohort, subject_ids: np.ndarray) -> pa.Table:
    """One shard: static rows first, then visit events, sorted by subject and time."""
    schema = cohort.schema
    prefixes = [_modality_prefix(m) for m in schema.modalities]
    code_strings = np.array(
        [
            f"{prefixes[m]}{SEP}{v}"
            for m, v in zip(cohort.code_modality.tolist(), cohort.code_values.tolist())
        ],
        dtype=object,
    )
    subjects, keys, codes, values, times = [], [], [], [], []
    for rank, (names, numbers, present) in enumerate(_static_rows(cohort)):
        subjects.append(np.flatnonzero(present))
        keys.append(np.full(present.sum(), rank, dtype=np.int64))
        codes.append(names[present])
        values.append(numbers[present])
        times.append(np.full(present.sum(), np.datetime64("NaT"), "datetime64[us]"))
    subjects.append(cohort.visit_patient[cohort.event_visit])
    # Static rows sort before events; events keep their stored order.
    keys.append(np.arange(cohort.n_events, dtype=np.int64) + len(keys))
    codes.append(code_strings[cohort.event_codes])
    values.append(np.full(cohort.n_events, np.nan, dtype=np.float32))
    times.append(cohort.visit_times[cohort.event_visit])
    patient, key = np.concatenate(subjects), np.concatenate(keys)
    # MEDS shards are sorted by subject id; the cohort's own order is kept by
    # subject_splits.parquet, which read_meds follows.
    order = np.lexsort((key, subject_ids[patient]))
    time = np.concatenate(times)[order]
    numbers = np.concatenate(values)[order]
    return pa.Table.from_arrays(
        [
            pa.array(subject_ids[patient[order]], pa.int64()),
            pa.array(time, pa.timestamp("us"), mask=np.isnat(time)),
            pa.array(np.concatenate(codes)[order], pa.string()),
            pa.array(numbers, pa.float32(), mask=np.isnan(numbers)),
        ],
        schema=DATA_SCHEMA,
    )


def _static_rows(cohort: Cohort):
    """(codes, numeric values, present) per static feature and label, all (P,)."""
    n = len(cohort)
    for name, categories in cohort.schema.categorical.items():
        index = cohort.static[name]
        names = np.array([f"{name.upper()}{SEP}{c}" for c in categories] + [""], object)
        yield names[index], np.full(n, np.nan, np.float32), index >= 0
    for name in cohort.schema.numerical:
        values = cohort.static[name]
        yield np.full(n, name.upper(), object), values, ~np.isnan(values)
    for name, values in cohort.labels.items():
        code = f"{LABEL_PREFIX}{SEP}{name}"
        yield np.full(n, code, object), values, ~np.isnan(values)


def _modality_prefix(modality: str) -> str:
    return modality.upper()


def _write_metadata(
    folder: Path,
    splits: Mapping[str, Cohort],
    subject_ids: list[np.ndarray],
    mapped: bool,
    codes: set[str],
    dataset_name: str,
) -> None:
    from ehrgen import __version__

    folder.mkdir()
    first = next(iter(splits.values()))
    dataset = {
        "dataset_name": dataset_name,
        "dataset_version": "1",
        "etl_name": "ehrgen",
        "etl_version": __version__,
        "meds_version": MEDS_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    ordered = sorted(codes)
    pq.write_table(
        pa.table(
            {
                "code": pa.array(ordered, pa.string()),
                "description": pa.nulls(len(ordered), pa.string()),
                "parent_codes": pa.array([[] for _ in ordered], pa.list_(pa.string())),
            }
        ),
        folder / "codes.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(np.concatenate(subject_ids), pa.int64()),
                "split": pa.array(
                    [name for name, c in splits.items() for _ in range(len(c))],
                    pa.string(),
                ),
            }
        ),
        folder / "subject_splits.parquet",
    )
    extra = {
        "schema": first.schema.to_dict(),
        "modality_prefixes": {m: _modality_prefix(m) for m in first.schema.modalities},
        "times_are_placeholders": first.times_are_placeholders,
        "labels": sorted(first.labels),
        "metadata": _json_ready(first.metadata),
    }
    if mapped:
        pq.write_table(
            pa.table(
                {
                    "subject_id": pa.array(np.concatenate(subject_ids), pa.int64()),
                    "patient_id": pa.array(
                        np.concatenate(
                            [c.patient_ids for c in splits.values()]
                        ).tolist(),
                        pa.string(),
                    ),
                }
            ),
            folder / "ehrgen_subject_ids.parquet",
        )
    (folder / "ehrgen.json").write_text(json.dumps(extra, indent=2))


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- reading


def read_meds(
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    prefix_to_modality: Mapping[str, str] | None = None,
    visit_id_column: str | None = None,
    unknown_prefixes: Literal["error", "drop"] = "error",
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
        unknown_prefixes: ``"error"`` (default) or ``"drop"`` codes whose prefix maps
            to no modality; dropped codes are counted in ``cohort.metadata``.

    Raises:
        SchemaError: naming the file, row and column of malformed input.
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
    rows = read_rows(_data_files(root), visit_id_column)
    if split is not None:
        rows = rows.take(np.isin(rows.subject, _split_subjects(root, split)))
    prefixes, values = split_codes(rows.codes)
    report: dict[str, Any] = {"source": str(root), "format": "MEDS"}
    static = np.isnat(rows.time)
    events = rows.take(~static)
    births = _special_codes(events, report)
    code_modality = _code_modalities(prefixes, values, prefix_to_modality, modalities)
    events = _known_modalities(
        events, code_modality, prefixes, unknown_prefixes, report
    )
    parts = build_visits(events, code_modality)
    subjects, used = parts.pop("subjects"), parts.pop("used_codes")
    columns, labels, schema = static_columns(
        rows.take(static), subjects, prefixes, values, schema, modalities
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
    _report_subjects_without_visits(rows.subject[static], subjects, report)
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
    return _in_split_file_order(root, cohort, subjects)


def _special_codes(events: Rows, report: dict[str, Any]) -> dict[int, np.datetime64]:
    """Count ``MEDS_*`` rows in the report; return the birth time of each subject."""
    special = np.array([c.startswith("MEDS_") for c in events.codes] + [False])
    rows = np.flatnonzero(special[events.code])
    if not len(rows):
        return {}
    ids, counts = np.unique(events.code[rows], return_counts=True)
    report["ignored_meds_codes"] = {
        events.codes[i]: int(n) for i, n in zip(ids.tolist(), counts.tolist())
    }
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
) -> Rows:
    special = np.array([c.startswith("MEDS_") for c in events.codes] + [False])
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
                f"modality prefix. Unknown prefixes: {listing}. Map them "
                f"with prefix_to_modality=, or pass unknown_prefixes='drop'."
            )
        logger.warning("Dropped codes with unknown prefixes: %s.", listing)
        report["dropped_unknown_prefixes"] = dict(ranked)
    events = events.take(code_modality[events.code] >= 0)
    if len(events.subject) == 0:
        raise SchemaError("The MEDS dataset holds no visit event: the cohort is empty.")
    return events


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
    if not path.exists():
        return cohort
    listed = pq.read_table(path, columns=["subject_id"]).column(0).to_numpy()
    rank = dict(zip(listed.tolist(), range(len(listed))))
    order = [rank.get(s) for s in subjects.tolist()]
    if None in order or order == sorted(order):
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
