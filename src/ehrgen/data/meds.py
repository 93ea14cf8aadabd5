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
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehrgen._io import atomic_directory
from ehrgen.data.cohort import Cohort, CohortSchema
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
LABEL_PREFIX = "LABEL"
BIRTH_CODE = "MEDS_BIRTH"
SEP = "//"
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
    files = _data_files(root)
    extra = _read_json(root / "metadata" / "ehrgen.json")
    schema = CohortSchema.from_dict(extra["schema"]) if extra else None
    if prefix_to_modality is None:
        prefix_to_modality = (
            {v: k for k, v in extra["modality_prefixes"].items()}
            if extra
            else DEFAULT_PREFIX_TO_MODALITY
        )
    frame = pl.concat(
        [_read_shard(path, i, visit_id_column) for i, path in enumerate(files)],
        how="vertical",
    )
    if split is not None:
        chosen = _split_subjects(root, split).implode()
        frame = frame.filter(pl.col("subject_id").is_in(chosen))
    frame = _split_codes(frame)
    report: dict[str, Any] = {"source": str(root), "format": "MEDS"}
    static = frame.filter(pl.col("time").is_null())
    events = frame.filter(pl.col("time").is_not_null())
    births = events.filter(pl.col("code") == BIRTH_CODE).select("subject_id", "time")
    events = _assign_modalities(
        events, prefix_to_modality, unknown_prefixes, files, report
    )
    modalities = (
        schema.modalities if schema else _ordered_modalities(prefix_to_modality)
    )
    cohort_parts = _build_events(events, modalities, visit_id_column, report)
    subjects = cohort_parts.pop("subjects")
    static_columns, labels, schema = _static_columns(
        static, subjects, schema, modalities, files
    )
    for name in extra["labels"] if extra else ():
        labels.setdefault(name, np.full(len(subjects), np.nan, np.float32))
    if births.height and "age" not in schema.features:
        static_columns["age"] = _age_at_first_visit(births, subjects, cohort_parts)
        schema = CohortSchema(
            modalities=schema.modalities,
            categorical=schema.categorical,
            numerical=(*schema.numerical, "age"),
        )
    report.update(_source_metadata(root))
    cohort = Cohort(
        schema=schema,
        patient_ids=_patient_ids(root, subjects),
        static=static_columns,
        labels=labels,
        times_are_placeholders=bool(extra and extra["times_are_placeholders"]),
        metadata={**(extra["metadata"] if extra else {}), **report},
        **cohort_parts,
    )
    return _in_split_file_order(root, cohort, subjects)


def _in_split_file_order(root: Path, cohort: Cohort, subjects: np.ndarray) -> Cohort:
    """The cohort in the order of ``subject_splits.parquet`` (the order ehrgen wrote
    it in), when that file lists every subject; else sorted by subject id."""
    path = root / "metadata" / "subject_splits.parquet"
    if not path.exists():
        return cohort
    listed = pl.read_parquet(path, columns=["subject_id"]).get_column("subject_id")
    rank = dict(zip(listed.to_list(), range(listed.len())))
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


def _read_shard(path: Path, index: int, visit_id_column: str | None) -> pl.DataFrame:
    """One shard, checked against the MEDS data schema before its rows are read."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise SchemaError(f"{path}: not a readable Parquet file ({error}).") from None
    wanted = ["subject_id", "time", "code", "numeric_value"]
    if visit_id_column:
        wanted.append(visit_id_column)
    for name in wanted:
        if name not in schema.names and name != "numeric_value":
            raise SchemaError(
                f"{path}: missing column {name!r}; MEDS data need subject_id, time, "
                f"code (and optionally numeric_value). Columns found: {schema.names}."
            )
    _check_type(path, "subject_id", schema, pa.types.is_integer, "an integer")
    _check_type(path, "time", schema, pa.types.is_timestamp, "a timestamp")
    _check_type(path, "code", schema, _is_string, "a string")
    if "numeric_value" in schema.names:
        _check_type(path, "numeric_value", schema, pa.types.is_floating, "a float")
    columns = [c for c in wanted if c in schema.names]
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise SchemaError(f"{path}: could not read its rows ({error}).") from None
    frame = pl.from_arrow(table)
    for name in ("subject_id", "code"):
        nulls = frame.get_column(name).is_null()
        if nulls.any():
            row = int(nulls.arg_max())
            raise SchemaError(f"{path}, row {row}, column {name!r}: null value.")
    return frame.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("time").cast(pl.Datetime("us")),
        pl.col("code").cast(pl.String),
        (
            pl.col("numeric_value").cast(pl.Float32)
            if "numeric_value" in schema.names
            else pl.lit(None, pl.Float32).alias("numeric_value")
        ),
        *([pl.col(visit_id_column).alias("visit_id")] if visit_id_column else []),
        pl.lit(index, pl.Int32).alias("file"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
    )


def _is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _check_type(
    path: Path, column: str, schema: pa.Schema, test, expected: str
) -> None:
    kind = schema.field(column).type
    if not test(kind):
        raise SchemaError(
            f"{path}, column {column!r}: expected {expected}. Got {kind} instead."
        )


def _split_subjects(root: Path, split: str) -> pl.Series:
    path = root / "metadata" / "subject_splits.parquet"
    if not path.exists():
        raise SchemaError(
            f"{path}: missing, so split {split!r} cannot be selected; read without "
            f"split=, or add the splits file."
        )
    splits = pl.read_parquet(path)
    chosen = splits.filter(pl.col("split") == split).get_column("subject_id")
    if chosen.len() == 0:
        found = sorted(splits.get_column("split").unique().to_list())
        raise SchemaError(f"{path}: no subject in split {split!r}; splits: {found}.")
    return chosen


def _split_codes(frame: pl.DataFrame) -> pl.DataFrame:
    # A code splits at its first separator only: values keep theirs (ICD9CM//4019).
    parts = pl.col("code").str.splitn(SEP, 2)
    return frame.with_columns(
        parts.struct.field("field_0").alias("prefix"),
        parts.struct.field("field_1").alias("value"),
    )


def _assign_modalities(
    events: pl.DataFrame,
    prefix_to_modality: Mapping[str, str],
    unknown_prefixes: str,
    files: list[Path],
    report: dict[str, Any],
) -> pl.DataFrame:
    special = events.get_column("code").str.starts_with("MEDS_")
    if special.any():
        counts = events.filter(special).group_by("code").len().sort("code")
        report["ignored_meds_codes"] = dict(counts.iter_rows())
    events = events.filter(~special)
    known = (
        pl.col("prefix").is_in(list(prefix_to_modality)) & pl.col("value").is_not_null()
    )
    unknown = events.filter(~known)
    if unknown.height:
        counts = unknown.group_by("prefix").len().sort("len", descending=True)
        listing = ", ".join(f"{p!r} ({n} rows)" for p, n in counts.head(10).iter_rows())
        if unknown_prefixes == "error":
            first = unknown.row(0, named=True)
            raise SchemaError(
                f"{files[first['file']]}, row {first['row']}, column 'code': code "
                f"{first['code']!r} has no known modality prefix. Unknown prefixes: "
                f"{listing}. Map them with prefix_to_modality= (known: "
                f"{sorted(prefix_to_modality)}), or pass unknown_prefixes='drop'."
            )
        logger.warning("Dropped codes with unknown prefixes: %s.", listing)
        report["dropped_unknown_prefixes"] = dict(counts.iter_rows())
    return events.filter(known).with_columns(
        pl.col("prefix").replace_strict(dict(prefix_to_modality)).alias("modality")
    )


def _ordered_modalities(prefix_to_modality: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(prefix_to_modality.values()))


def _build_events(
    events: pl.DataFrame,
    modalities: tuple[str, ...],
    visit_id_column: str | None,
    report: dict[str, Any],
) -> dict[str, Any]:
    """The CSR arrays of a cohort from its event rows (see :class:`Cohort`)."""
    if visit_id_column:
        missing = events.get_column("visit_id").is_null()
        if missing.any():
            report["dropped_rows_without_visit_id"] = int(missing.sum())
            logger.warning(
                "Dropped %d event rows with no %s.", int(missing.sum()), visit_id_column
            )
            events = events.filter(~missing)
        events = events.with_columns(
            pl.col("time").min().over("subject_id", "visit_id").alias("time")
        )
        visit_key = ["time", "visit_id"]
    else:
        visit_key = ["time"]
    rank = {m: i for i, m in enumerate(modalities)}
    events = (
        events.with_columns(
            pl.col("modality").replace_strict(rank, return_dtype=pl.Int8)
        )
        .sort(["subject_id", *visit_key, "modality", "file", "row"])
        .unique(["subject_id", *visit_key, "modality", "value"], maintain_order=True)
    )
    if events.height == 0:
        raise SchemaError("The MEDS dataset holds no visit event: the cohort is empty.")
    codes = events.select("modality", "value").unique(maintain_order=True)
    codes = codes.with_row_index("code_id")
    events = events.join(
        codes, on=["modality", "value"], how="left", maintain_order="left"
    )
    visit_run = pl.struct(["subject_id", *visit_key]).rle_id()
    visits = (
        events.with_columns(visit_run.alias("visit"))
        .group_by("visit", maintain_order=True)
        .agg(pl.col("subject_id").first(), pl.col("time").first(), pl.len().alias("n"))
    )
    patients = visits.group_by("subject_id", maintain_order=True).len()
    times = _strictly_increasing(
        visits.get_column("time").to_numpy().astype("datetime64[us]"),
        patients.get_column("len").to_numpy(),
    )
    return {
        "subjects": patients.get_column("subject_id").to_numpy(),
        "visit_offsets": _offsets(patients.get_column("len").to_numpy()),
        "visit_times": times,
        "event_offsets": _offsets(visits.get_column("n").to_numpy()),
        "event_codes": events.get_column("code_id").to_numpy().astype(np.int32),
        "code_values": np.array(codes.get_column("value").to_list(), dtype=object),
        "code_modality": codes.get_column("modality").to_numpy().astype(np.int8),
    }


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _strictly_increasing(
    times: np.ndarray, visits_per_patient: np.ndarray
) -> np.ndarray:
    """Nudge ties (two admissions with one timestamp) apart by a microsecond, so that
    visit times strictly increase within each patient as the data model requires."""
    times = times.copy()
    first = np.zeros(len(times), dtype=bool)
    first[_offsets(visits_per_patient)[:-1]] = True
    ties = np.flatnonzero(~first[1:] & (times[1:] <= times[:-1])) + 1
    for i in ties:
        times[i] = max(times[i], times[i - 1] + np.timedelta64(1, "us"))
    return times


def _static_columns(
    static: pl.DataFrame,
    subjects: np.ndarray,
    schema: CohortSchema | None,
    modalities: tuple[str, ...],
    files: list[Path],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], CohortSchema]:
    """Baseline features and labels, aligned with ``subjects``; the schema is
    inferred from the static rows when the dataset carries none."""
    position = pl.DataFrame(
        {"subject_id": subjects, "position": np.arange(len(subjects))}
    )
    static = static.join(position, on="subject_id", how="inner")
    labels: dict[str, np.ndarray] = {}
    label_rows = static.filter(pl.col("prefix") == LABEL_PREFIX)
    for (name,), rows in label_rows.group_by("value", maintain_order=True):
        labels[name] = _scatter(rows, len(subjects), rows.get_column("numeric_value"))
    static = static.filter(pl.col("prefix") != LABEL_PREFIX).with_columns(
        pl.col("prefix").str.to_lowercase().alias("feature")
    )
    if schema is None:
        schema = _infer_static_schema(static, modalities)
    columns: dict[str, np.ndarray] = {}
    for name, categories in schema.categorical.items():
        rows = static.filter(pl.col("feature") == name)
        index = {c: i for i, c in enumerate(categories)}
        bad = rows.filter(~pl.col("value").is_in(categories))
        if bad.height:
            first = bad.row(0, named=True)
            raise SchemaError(
                f"{files[first['file']]}, row {first['row']}, column 'code': category "
                f"{first['value']!r} of feature {name!r} is not in the dataset's "
                f"schema "
                f"({list(categories)})."
            )
        codes = rows.get_column("value").replace_strict(index, return_dtype=pl.Int32)
        columns[name] = _scatter(rows, len(subjects), codes, fill=-1)
    for name in schema.numerical:
        rows = static.filter((pl.col("feature") == name) & pl.col("value").is_null())
        columns[name] = _scatter(rows, len(subjects), rows.get_column("numeric_value"))
    return columns, labels, schema


def _scatter(rows: pl.DataFrame, n: int, values: pl.Series, fill: float = np.nan):
    out = np.full(n, fill, dtype=np.int32 if fill == -1 else np.float32)
    out[rows.get_column("position").to_numpy()] = values.to_numpy()
    return out


def _infer_static_schema(
    static: pl.DataFrame, modalities: tuple[str, ...]
) -> CohortSchema:
    categorical = (
        static.filter(pl.col("value").is_not_null())
        .group_by("feature")
        .agg(pl.col("value").unique().sort())
        .sort("feature")
    )
    numerical = (
        static.filter(pl.col("value").is_null() & pl.col("numeric_value").is_not_null())
        .get_column("feature")
        .unique()
        .sort()
    )
    return CohortSchema(
        modalities=modalities,
        categorical=dict(categorical.iter_rows()),
        numerical=tuple(
            n for n in numerical.to_list() if n not in categorical["feature"]
        ),
    )


def _age_at_first_visit(
    births: pl.DataFrame, subjects: np.ndarray, parts: Mapping[str, np.ndarray]
) -> np.ndarray:
    birth = dict(births.unique("subject_id", keep="first").iter_rows())
    first_visit = parts["visit_times"][parts["visit_offsets"][:-1]]
    born = np.array(
        [birth.get(s) or np.datetime64("NaT") for s in subjects.tolist()],
        dtype="datetime64[us]",
    )
    years = (first_visit - born) / np.timedelta64(1, "D") / 365.25
    return years.astype(np.float32)


def _patient_ids(root: Path, subjects: np.ndarray) -> np.ndarray:
    path = root / "metadata" / "ehrgen_subject_ids.parquet"
    if not path.exists():
        return np.array([str(s) for s in subjects.tolist()], dtype=object)
    mapping = dict(pl.read_parquet(path).iter_rows())
    return np.array([mapping[s] for s in subjects.tolist()], dtype=object)


def _source_metadata(root: Path) -> dict[str, Any]:
    dataset = _read_json(root / "metadata" / "dataset.json")
    return {"meds_dataset": dataset} if dataset else {}
