"""Write a cohort as a MEDS dataset (the layout is described in
:mod:`ehrgen.data.formats.meds`, which reads it back)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrgen._io import atomic_directory
from ehrgen.data import Cohort
from ehrgen.data.formats._meds_columns import LABEL_PREFIX, SEP
from ehrgen.errors import SchemaError

__all__ = [
    "DATA_SCHEMA",
    "MEDS_VERSION",
    "SHARD_PATIENTS",
    "merge_meds_parts",
    "write_meds",
]

MEDS_VERSION = "0.4.1"
SHARD_PATIENTS = 100_000

DATA_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us")),
        pa.field("code", pa.string(), nullable=False),
        pa.field("numeric_value", pa.float32()),
    ]
)


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
        >>> from ehrgen.data.formats.meds import read_meds
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


def merge_meds_parts(
    parts: Sequence[str | os.PathLike[str]],
    root: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """One MEDS dataset from several written by :func:`write_meds` (one per
    process), atomically: every part's data shards under their split, renamed
    ``<part>-<shard>.parquet``; the codes, subject splits and ehrgen facts merged;
    the metadata written last. The parts are moved, not copied, and removed.

    Subject ids must not repeat across parts (synthetic parts generated with
    distinct ``first_id`` never do); a part with mapped (non-integer) ids is
    refused, since its positions would collide.
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise SchemaError("merge_meds_parts needs at least one part.")
    infos = [json.loads((p / "metadata" / "ehrgen.json").read_text()) for p in parts]
    if any((p / "metadata" / "ehrgen_subject_ids.parquet").exists() for p in parts):
        raise SchemaError(
            f"{parts}: a part maps non-integer patient ids to positions; merged "
            f"parts need integer ids that differ across parts."
        )
    splits = [pq.read_table(p / "metadata" / "subject_splits.parquet") for p in parts]
    subject_splits = pa.concat_tables(splits)
    ids = subject_splits.column("subject_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise SchemaError(f"{parts}: subject ids repeat across parts.")
    codes: set[str] = set()
    for part in parts:
        table = pq.read_table(part / "metadata" / "codes.parquet", columns=["code"])
        codes.update(table.column("code").to_pylist())
    with atomic_directory(root, overwrite) as tmp:
        for i, part in enumerate(parts):
            for shard in sorted((part / "data").rglob("*.parquet")):
                split = shard.parent.relative_to(part / "data")
                (tmp / "data" / split).mkdir(parents=True, exist_ok=True)
                shard.rename(tmp / "data" / split / f"{i}-{shard.name}")
        metadata = tmp / "metadata"
        metadata.mkdir()
        pq.write_table(subject_splits, metadata / "subject_splits.parquet")
        pq.write_table(_codes_table(codes), metadata / "codes.parquet")
        info = _merged_info(infos)
        (metadata / "ehrgen.json").write_text(json.dumps(info, indent=2))
        dataset = (parts[0] / "metadata" / "dataset.json").read_text()
        (metadata / "dataset.json").write_text(dataset)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)
    return Path(root)


def _merged_info(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """ehrgen.json of merged parts: the first part's, with the synthetic id ranges
    joined (they are contiguous when the parts were generated in order)."""
    info = dict(infos[0])
    ranges = [i.get("metadata", {}).get("synthetic_subject_ids") for i in infos]
    if all(ranges):
        info["metadata"] = {
            **info.get("metadata", {}),
            "synthetic_subject_ids": [
                min(r[0] for r in ranges),
                max(r[1] for r in ranges),
            ],
        }
    return info


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
    values.append(
        np.full(cohort.n_events, np.nan, dtype=np.float32)
        if cohort.event_values is None
        else cohort.event_values
    )
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
    pq.write_table(_codes_table(codes), folder / "codes.parquet")
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
    units: dict[str, dict[str, str]] = {}
    for cohort in splits.values():
        for (modality, code), unit in cohort.units().items():
            units.setdefault(modality, {})[code] = unit
    if units:
        extra["units"] = units
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


def _codes_table(codes: set[str]) -> pa.Table:
    """``metadata/codes.parquet``: every code used, sorted, without descriptions."""
    ordered = sorted(codes)
    return pa.table(
        {
            "code": pa.array(ordered, pa.string()),
            "description": pa.nulls(len(ordered), pa.string()),
            "parent_codes": pa.array([[] for _ in ordered], pa.list_(pa.string())),
        }
    )


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
