"""Read an OMOP CDM (v5.3 / v5.4) database into a :class:`~ehrgen.data.cohort.Cohort`.

The source is a DuckDB database file (opened read-only; needs ``pip install
"ehrgen[omop]"``) or a folder of CSV / Parquet tables (``person.csv``,
``measurement.parquet``...; no extra dependency). Table and column names match in any
case. What is read:

* ``person`` (required): ``gender`` (8507 -> ``M``, 8532 -> ``F``, another concept ->
  its concept name, else its id; 0 or null -> missing), ``race`` (the concept name,
  else the concept id; 0 or null -> missing) and ``age``, completed years at the first
  visit from ``birth_datetime`` or else ``year_of_birth`` with ``month_of_birth`` (1
  July when absent) and ``day_of_birth`` (the 15th when absent), capped at 90 as the
  MIMIC readers do (unknown when the first visit precedes the birth date);
* one modality per clinical table: ``condition_occurrence`` -> ``diagnosis``,
  ``procedure_occurrence`` -> ``procedure``, ``drug_exposure`` -> ``drug``,
  ``measurement`` -> ``lab``, with its ``value_as_number`` (the visit's last). An
  absent table drops its modality with a warning;
* ``visit_occurrence`` (optional): the start time of visits.

Codes carry their system, so they round-trip through MEDS
(``DIAGNOSIS//OMOP//4112343``):

* ``code_source="concept_id"`` (default): ``OMOP//<concept_id>`` (the standard
  concept); rows with concept 0 ("No matching concept") have no code;
* ``code_source="source_value"``: ``<vocabulary_id>//<source_value>`` with the
  vocabulary of the row's ``*_source_concept_id`` when the ``concept`` table knows it
  (``SNOMED//195662009``, ``ICD10CM//K92.2``), else ``SOURCE//<source_value>``.

When the ``concept`` table is present, ``metadata["code_descriptions"]`` maps each code
value of the cohort (``OMOP//4112343``) to its concept name (the source concept's for
source values).

Visits: clinical rows are grouped by ``(person_id, visit_occurrence_id)``, whether or
not ``visit_occurrence`` lists that id; a visit starts at its ``visit_occurrence``
start (matched on person and visit id) or, failing that, at its earliest row. Rows with
a null ``visit_occurrence_id`` are grouped by ``(person_id, date)`` into one visit per
day, starting at that day's earliest row. Visits of one patient that start at the same
time are merged into one (their number is ``metadata["merged_visits"]``), so visit
times strictly increase. Codes repeated within a visit are kept once; within a
modality they are sorted by code string (OMOP rows carry no order within a visit).

Dropped, and counted in ``metadata["dropped"]``: clinical rows with no person_id, with
a person_id absent from ``person``, with no date, or with no code (per table), and
persons with no clinical row. Patients are sorted by ``person_id``.

Tables are read one at a time, projected to the columns used (a lazy Polars scan of
CSV / Parquet files; a DuckDB query fetching those columns of a database) and reduced
to the distinct codes of each visit before they are gathered; the cohort is built from
columnar arrays, never patient by patient.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from ehrgen.data import DEFAULT_MODALITIES, Cohort, CohortSchema
from ehrgen.data.formats._omop_tables import (
    CLINICAL_TABLES,
    CONCEPT_COLUMNS,
    PERSON_COLUMNS,
    VISIT_COLUMNS,
    ClinicalTable,
    Column,
    DuckDBTables,
    FolderTables,
    check_unique,
    open_tables,
    read_table,
    static_features,
)
from ehrgen.errors import ConfigError, SchemaError, did_you_mean

if TYPE_CHECKING:
    from ehrgen.data.preprocess import Preprocessing

__all__ = ["CLINICAL_TABLES", "read_omop"]

logger = logging.getLogger(__name__)

CONCEPT_SYSTEM = "OMOP"
UNKNOWN_VOCABULARY = "SOURCE"
SEP = "//"
_CODE_SOURCES = ("concept_id", "source_value")
_KEYS = ["person_id", "by_day", "vkey"]  # a visit group, before merging
_CODE_BITS = 31  # an event is one int64: visit << 31 | code index
_CODE_MASK = (1 << _CODE_BITS) - 1


Tables = DuckDBTables | FolderTables


def read_omop(
    source: str | os.PathLike[str],
    *,
    preprocessing: Preprocessing | None = None,
    code_source: Literal["concept_id", "source_value"] = "concept_id",
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    db_schema: str | None = None,
) -> Cohort:
    """Read an OMOP CDM database (a DuckDB file or a folder of tables) as a cohort.

    Args:
        source: a DuckDB database file, or a folder of ``<table>.csv``,
            ``<table>.csv.gz``, ``<table>.parquet`` or ``<table>/*.parquet``.
        preprocessing: options applied to the cohort once read (see
            :func:`ehrgen.data.preprocess.preprocess`).
        code_source: ``"concept_id"`` (``OMOP//<concept_id>``) or ``"source_value"``
            (``<vocabulary>//<source_value>``); see the module docstring.
        modalities: which of ``diagnosis``, ``procedure``, ``drug``, ``lab`` to read.
        db_schema: the database schema holding the CDM tables, for DuckDB files with
            several (default ``main``).

    Returns:
        The cohort, with ``metadata["dropped"]`` (rows and persons dropped, per
        reason) and, when the concept table is present,
        ``metadata["code_descriptions"]``.

    Raises:
        SchemaError: a missing table or column, a value of the wrong type, a timestamp
            that does not parse, a duplicate person_id or visit_occurrence_id (naming
            the table, the column, an example row and a fix).
        ConfigError: an invalid argument, or a DuckDB file without duckdb installed.

    Example:
        >>> cohort = read_omop("eunomia.duckdb")  # doctest: +SKIP
        >>> cohort.schema.modalities  # doctest: +SKIP
        ('diagnosis', 'procedure', 'drug', 'lab')
    """
    chosen = _check_arguments(code_source, modalities)
    start = time.perf_counter()
    tables = open_tables(source, db_schema)
    try:
        cohort = _read(tables, chosen, code_source)
    finally:
        tables.close()
    logger.info(
        "%s: read %d patients, %d visits, %d events in %.1f s.",
        source,
        len(cohort),
        cohort.n_visits,
        cohort.n_events,
        time.perf_counter() - start,
    )
    if preprocessing is not None:
        from ehrgen.data.preprocess import preprocess

        cohort = preprocess(cohort, preprocessing, source=str(source))
    return cohort


def _check_arguments(code_source: str, modalities: Sequence[str]) -> tuple[str, ...]:
    if code_source not in _CODE_SOURCES:
        raise ConfigError(
            f"The 'code_source' parameter of read_omop must be one of "
            f"{list(_CODE_SOURCES)}. Got {code_source!r} instead."
            f"{did_you_mean(str(code_source), _CODE_SOURCES)}"
        )
    if isinstance(modalities, str) or not modalities:
        raise ConfigError(
            f"The 'modalities' parameter of read_omop must be a non-empty sequence of "
            f"modality names from {list(CLINICAL_TABLES)}. Got {modalities!r} instead."
        )
    for name in modalities:
        if name not in CLINICAL_TABLES:
            raise ConfigError(
                f"The 'modalities' parameter of read_omop must hold names from "
                f"{list(CLINICAL_TABLES)}. Got {name!r} instead."
                f"{did_you_mean(str(name), CLINICAL_TABLES)}"
            )
    return tuple(m for m in CLINICAL_TABLES if m in modalities)


# --------------------------------------------------------------------------- reading


def _read(tables: Tables, modalities: tuple[str, ...], code_source: str) -> Cohort:
    names = set(tables.names())
    if "person" not in names:
        raise SchemaError(
            f"{tables.where}: no 'person' table; read_omop needs it (one row per "
            f"patient). Tables found: {sorted(names)}."
        )
    persons = _read_persons(tables)
    present = _present_modalities(tables, names, modalities)
    dropped: dict[str, Any] = {}
    frames, results, units = [], [], []
    for modality in present:
        spec = CLINICAL_TABLES[modality]
        frame, measured, dropped[spec.table] = _read_events(
            tables, spec, persons, code_source
        )
        frames.append(frame)
        results.append(None if measured is None else measured[0])
        units.append(None if measured is None else measured[1])
    if all(frame.height == 0 for frame in frames):
        raise SchemaError(
            f"{tables.where}: no clinical row has a known person, a date and a code; "
            f"the cohort would be empty. See the counts of dropped rows: {dropped}."
        )
    keys = _code_keys(code_source)
    used = [f.select(keys).explode(keys).unique() for f in frames]
    concepts = _read_concepts(tables, used, persons) if "concept" in names else None
    codes = _code_table(used, concepts, code_source)
    visit_starts = _read_visit_starts(tables) if "visit_occurrence" in names else None
    groups, visits, metadata = _visits(frames, visit_starts)
    events = _sorted_distinct(
        np.concatenate(
            [_event_keys(f, groups, codes, m, keys) for m, f in enumerate(frames)]
        )
    )
    event_values = _event_values(events, results, groups, codes, keys)
    code_units = _code_units(units, codes, keys)
    del frames, groups
    dropped["persons_without_events"] = persons.height - visits["person_id"].n_unique()
    _report_drops(tables.where, dropped)
    metadata = {
        "source": tables.where,
        "format": "OMOP CDM",
        "code_source": code_source,
        **metadata,
        "dropped": dropped,
    }
    if concepts is not None:
        metadata["code_descriptions"] = _descriptions(codes, concepts)
    return _build(
        events, visits, codes, persons, concepts, present, metadata, event_values,
        code_units,
    )  # fmt: skip


def _present_modalities(
    tables: Tables, names: set[str], modalities: tuple[str, ...]
) -> list[str]:
    """The modalities whose table is there (a warning for each one that is not)."""
    present = []
    for modality in modalities:
        table = CLINICAL_TABLES[modality].table
        if table in names:
            present.append(modality)
        else:
            logger.warning(
                "%s: no %r table; the %r modality is left out.",
                tables.where,
                table,
                modality,
            )
    if not present:
        wanted = [CLINICAL_TABLES[m].table for m in modalities]
        raise SchemaError(
            f"{tables.where}: none of the tables {wanted} is there, so there is no "
            f"clinical event to read. Tables found: {sorted(names)}."
        )
    return present


def _code_keys(code_source: str) -> list[str]:
    """The columns that identify a code within a modality."""
    return ["concept"] if code_source == "concept_id" else ["concept", "value"]


def _read_persons(tables: Tables) -> pl.DataFrame:
    persons = read_table(tables, "person", PERSON_COLUMNS).collect()
    check_unique(persons, "person_id", tables, "person")
    return persons.filter(pl.col("person_id").is_not_null()).drop("_row")


def _read_events(
    tables: Tables, spec: ClinicalTable, persons: pl.DataFrame, code_source: str
) -> tuple[pl.DataFrame, pl.DataFrame | None, dict[str, int]]:
    """One row per visit group (person, by_day, vkey) of one table, with its earliest
    time and its distinct code keys (list columns); for ``measurement``, the last
    ``value_as_number`` of each (visit group, code) (None for other tables); and the
    number of rows dropped per reason."""
    columns, concept, value, has_code = _event_columns(spec, code_source)
    measured = spec.table == "measurement"
    if measured:
        columns.append(Column("value_as_number", "float", required=False))
        columns.append(Column("unit_source_value", "str", required=False))
    known = persons.select("person_id", pl.lit(True).alias("known")).lazy()
    rows = (
        read_table(tables, spec.table, columns)
        .join(known, on="person_id", how="left")
        .select(
            "person_id",
            pl.col("visit_occurrence_id").alias("visit_id"),
            pl.coalesce(spec.datetime, spec.date).alias("time"),
            # 0 stands for "no concept" (nulls would not match in joins).
            concept.fill_null(0).alias("concept"),
            *([] if value is None else [value.alias("value")]),
            has_code.fill_null(False).alias("has_code"),
            pl.col("known").fill_null(False),
            *(_measured_columns() if measured else []),
        )
    )
    reasons = {
        "no_person": pl.col("person_id").is_null(),
        "unknown_person": ~pl.col("known"),
        "no_time": pl.col("time").is_null(),
        "no_code": ~pl.col("has_code"),
    }
    kept, counts = pl.lit(True), []
    for name, failed in reasons.items():
        counts.append((kept & failed).sum().alias(name))
        kept = kept & ~failed
    keys = _code_keys(code_source)
    reduced = [_visit_groups(rows.filter(kept), keys)]
    if measured:
        reduced.append(_last_numbers(rows.filter(kept), keys))
        reduced.append(_common_units(rows.filter(kept), keys))
    dropped, groups, *numbers = pl.collect_all([rows.select(counts), *reduced])
    counted = {k: int(v) for k, v in dropped.row(0, named=True).items()}
    return groups, (tuple(numbers) if numbers else None), counted


def _measured_columns() -> list[pl.Expr]:
    """A measurement's value and unit, as the reduction names them."""
    return [
        pl.col("value_as_number").alias("number"),
        pl.col("unit_source_value").alias("unit"),
    ]


def _common_units(rows: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Per code: the most frequent ``unit_source_value`` among its rows with a
    value (ties: the first unit in text order)."""
    measured = rows.filter(
        pl.col("number").is_not_null()
        & pl.col("unit").is_not_null()
        & (pl.col("unit") != "")
    )
    counted = measured.group_by([*keys, "unit"]).agg(pl.len().alias("n"))
    return counted.sort(
        [*keys, "n", "unit"], descending=[False] * len(keys) + [True, False]
    ).unique(keys, keep="first")


def _last_numbers(rows: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Per (visit group, code): the time and value of its last row with a value."""
    with_number = _with_visit_keys(rows.filter(pl.col("number").is_not_null()))
    return with_number.group_by([*_KEYS, *keys]).agg(
        pl.col("time").max().alias("last"),
        pl.col("number").sort_by("time").last(),
    )


def _event_columns(
    spec: ClinicalTable, code_source: str
) -> tuple[list[Column], pl.Expr, pl.Expr | None, pl.Expr]:
    """The columns read from a clinical table; its concept, source value (None when
    coding by concept) and whether a row has a code."""
    columns = [
        Column("person_id", "int"),
        Column("visit_occurrence_id", "int", required=False),
        Column(spec.date, "time"),
        Column(spec.datetime, "time", required=False),
    ]
    if code_source == "concept_id":
        columns.append(Column(f"{spec.prefix}_concept_id", "int"))
        concept = pl.col(f"{spec.prefix}_concept_id")
        return columns, concept, None, concept.is_not_null() & (concept != 0)
    columns.append(Column(f"{spec.prefix}_source_value", "str"))
    columns.append(Column(f"{spec.prefix}_source_concept_id", "int", False))
    value = pl.col(f"{spec.prefix}_source_value")
    concept = pl.col(f"{spec.prefix}_source_concept_id")
    return columns, concept, value, value.is_not_null()


def _visit_groups(rows: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Rows reduced to visit groups: by visit id, or by (person, date) without one."""
    rows = _with_visit_keys(rows)
    # Group by as few keys as possible: each costs Polars some 70 bytes a row.
    if keys == ["concept"]:
        return rows.group_by(_KEYS).agg(
            pl.col("time").min().alias("first"), pl.col("concept").unique()
        )
    return (
        rows.group_by([*_KEYS, *keys])
        .agg(pl.col("time").min())
        .group_by(_KEYS)
        .agg(pl.col("time").min().alias("first"), *keys)
    )


def _with_visit_keys(rows: pl.LazyFrame) -> pl.LazyFrame:
    """The rows with their visit group keys: the visit id, or the date without one."""
    return rows.with_columns(
        pl.col("visit_id").is_null().alias("by_day"),
        pl.coalesce(
            "visit_id", pl.col("time").dt.date().cast(pl.Int32).cast(pl.Int64)
        ).alias("vkey"),
    )


def _read_concepts(
    tables: Tables, used: list[pl.DataFrame], persons: pl.DataFrame
) -> pl.DataFrame:
    """The concept rows of the concepts used (codes, gender, race)."""
    ids = pl.concat(
        [
            *[u["concept"] for u in used],
            persons["gender_concept_id"],
            persons["race_concept_id"],
        ]
    )
    ids = ids.drop_nulls().unique().sort().to_numpy()
    concepts = read_table(tables, "concept", CONCEPT_COLUMNS, keep=("concept_id", ids))
    concepts = concepts.collect()
    check_unique(concepts, "concept_id", tables, "concept")
    return concepts.drop("_row")


def _read_visit_starts(tables: Tables) -> pl.DataFrame:
    visits = read_table(tables, "visit_occurrence", VISIT_COLUMNS).collect()
    check_unique(visits, "visit_occurrence_id", tables, "visit_occurrence")
    return visits.select(
        "person_id",
        pl.lit(False).alias("by_day"),
        pl.col("visit_occurrence_id").alias("vkey"),
        pl.coalesce("visit_start_datetime", "visit_start_date").alias("start"),
    ).drop_nulls()


# --------------------------------------------------------------------------- codes


def _code_table(
    used: list[pl.DataFrame], concepts: pl.DataFrame | None, code_source: str
) -> pl.DataFrame:
    """One row per modality and distinct code key: its code string, its
    ``code_index`` (codes sorted by modality, then string) and the concept that
    describes it (or null). Small: the size of the vocabulary."""
    tables, offset = [], 0
    for modality, codes in enumerate(used):
        codes = _code_strings(codes, concepts, code_source)
        index = (
            codes.select("code")
            .unique()
            .sort("code")
            .with_row_index("code_index", offset=offset)
        )
        offset += index.height
        codes = codes.join(index, on="code")
        tables.append(codes.with_columns(pl.lit(modality, pl.Int8).alias("modality")))
    return pl.concat(tables)


def _code_strings(
    codes: pl.DataFrame, concepts: pl.DataFrame | None, code_source: str
) -> pl.DataFrame:
    if code_source == "concept_id":
        return codes.with_columns(
            (pl.lit(CONCEPT_SYSTEM + SEP) + pl.col("concept").cast(pl.String)).alias(
                "code"
            ),
            pl.col("concept").alias("described_by"),
        )
    if concepts is None:
        codes = codes.with_columns(pl.lit(None, pl.String).alias("vocabulary"))
    else:
        vocabularies = concepts.select(
            pl.col("concept_id").alias("concept"),
            pl.col("vocabulary_id").alias("vocabulary"),
        )
        codes = codes.join(vocabularies, on="concept", how="left")
    vocabulary = pl.col("vocabulary")
    known = vocabulary.is_not_null() & ~vocabulary.is_in(["None", ""])
    return codes.with_columns(
        (
            pl.when(known).then(vocabulary).otherwise(pl.lit(UNKNOWN_VOCABULARY))
            + SEP
            + pl.col("value")
        ).alias("code"),
        pl.when(known).then(pl.col("concept")).alias("described_by"),
    ).drop("vocabulary")


def _descriptions(codes: pl.DataFrame, concepts: pl.DataFrame) -> dict[str, str]:
    """Code -> concept name, for the codes of the cohort that have one."""
    pairs = (
        codes.select("code", "described_by")
        .drop_nulls()
        .group_by("code")
        .agg(pl.col("described_by").min())
        .join(
            concepts.select(pl.col("concept_id").alias("described_by"), "concept_name"),
            on="described_by",
        )
        .drop_nulls()
        .sort("code")
    )
    return dict(zip(pairs["code"].to_list(), pairs["concept_name"].to_list()))


# --------------------------------------------------------------------------- visits


def _visits(
    frames: list[pl.DataFrame], visit_starts: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The visit of each visit group, the visits (person, time) in cohort order,
    and the metadata: the visit groups by origin, and how many merged. Groups of one
    person sharing a start time share a visit."""
    groups = (
        pl.concat([f.select(*_KEYS, "first") for f in frames])
        .group_by(_KEYS)
        .agg(pl.col("first").min())
    )
    if visit_starts is None:
        groups = groups.with_columns(pl.lit(None, pl.Datetime("us")).alias("start"))
    else:
        groups = groups.join(visit_starts, on=_KEYS, how="left")
    groups = groups.with_columns(pl.coalesce("start", "first").alias("visit_time"))
    visits = (
        groups.select("person_id", "visit_time")
        .unique()
        .sort("person_id", "visit_time")
        .with_row_index("visit")
    )
    counts = {
        "visit_groups": {
            "from_visit_occurrence": int(groups["start"].is_not_null().sum()),
            "by_visit_id_only": int(
                (~groups["by_day"] & groups["start"].is_null()).sum()
            ),
            "by_person_and_date": int(groups["by_day"].sum()),
        },
        "merged_visits": groups.height - visits.height,
    }
    groups = groups.join(visits, on=["person_id", "visit_time"]).select(*_KEYS, "visit")
    return groups, visits, counts


def _event_keys(
    frame: pl.DataFrame,
    groups: pl.DataFrame,
    codes: pl.DataFrame,
    modality: int,
    keys: list[str],
) -> np.ndarray:
    """(E,) int64 ``visit << 31 | code_index`` of each event of one modality."""
    codes = codes.filter(pl.col("modality") == modality).select(*keys, "code_index")
    events = (
        frame.join(groups, on=_KEYS)
        .select("visit", *keys)
        .explode(keys)
        .join(codes, on=keys)
    )
    return (events["visit"].cast(pl.Int64).to_numpy() << _CODE_BITS) | events[
        "code_index"
    ].cast(pl.Int64).to_numpy()


def _event_values(
    events: np.ndarray,
    results: list[pl.DataFrame | None],
    groups: pl.DataFrame,
    codes: pl.DataFrame,
    keys: list[str],
) -> np.ndarray | None:
    """(E,) float32 value of each event (NaN: none), or None when none has one; where
    visit groups merge into one visit, the value of the latest row wins."""
    parts = []
    for modality, numbers in enumerate(results):
        if numbers is None or numbers.height == 0:
            continue
        index = codes.filter(pl.col("modality") == modality).select(*keys, "code_index")
        parts.append(
            numbers.join(groups, on=_KEYS)
            .join(index, on=keys)
            .select(
                (
                    pl.col("visit").cast(pl.Int64) * 2**_CODE_BITS
                    + pl.col("code_index")
                ).alias("key"),
                "last",
                "number",
            )
        )
    if not parts:
        return None
    found = pl.concat(parts).sort("key", "last").unique("key", keep="last").sort("key")
    key = found["key"].to_numpy()
    where = np.minimum(np.searchsorted(key, events), len(key) - 1)
    hit = key[where] == events
    return np.where(hit, found["number"].to_numpy()[where], np.nan).astype(np.float32)


def _code_units(
    units: list[pl.DataFrame | None], codes: pl.DataFrame, keys: list[str]
) -> np.ndarray | None:
    """(C,) each code's unit (None where it has none), or None when none has one."""
    out = np.full(codes["code_index"].max() + 1 if codes.height else 0, None, object)
    found = False
    for modality, table in enumerate(units):
        if table is None or table.height == 0:
            continue
        index = codes.filter(pl.col("modality") == modality).select(*keys, "code_index")
        joined = table.join(index, on=keys)
        out[joined["code_index"].to_numpy()] = joined["unit"].to_list()
        found = found or joined.height > 0
    return out if found else None


def _sorted_distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys``, sorted (sorting in place: faster than
    np.unique, which hashes first on numpy 2)."""
    keys.sort()
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]


# --------------------------------------------------------------------------- cohort


def _build(
    events: np.ndarray,
    visits: pl.DataFrame,
    codes: pl.DataFrame,
    persons: pl.DataFrame,
    concepts: pl.DataFrame | None,
    modalities: list[str],
    metadata: dict[str, Any],
    event_values: np.ndarray | None = None,
    code_units: np.ndarray | None = None,
) -> Cohort:
    """The cohort from its sorted, distinct event keys (``visit << 31 |
    code_index``), their values, and its visits (person, time) in order."""
    event_visit = events >> _CODE_BITS
    visit_person = visits["person_id"].to_numpy()
    visit_times = visits["visit_time"].to_numpy().astype("datetime64[us]")
    new_patient = np.ones(len(visit_person), dtype=bool)
    new_patient[1:] = visit_person[1:] != visit_person[:-1]
    patient_starts = np.flatnonzero(new_patient)
    patient_ids = visit_person[patient_starts]
    static, categorical, ages = static_features(
        patient_ids, visit_times[patient_starts], persons, concepts
    )
    metadata.update(ages)
    schema = CohortSchema(
        modalities=tuple(modalities), categorical=categorical, numerical=("age",)
    )
    index = codes.select("code_index", "code", "modality").unique().sort("code_index")
    return Cohort(
        schema=schema,
        patient_ids=np.array([str(p) for p in patient_ids.tolist()], dtype=object),
        static=static,
        visit_offsets=np.append(patient_starts, len(visit_person)),
        visit_times=visit_times,
        event_offsets=np.searchsorted(event_visit, np.arange(len(visit_person) + 1)),
        event_codes=(events & _CODE_MASK).astype(np.int32),
        event_values=event_values,
        code_values=np.array(index["code"].to_list(), dtype=object),
        code_modality=index["modality"].to_numpy().astype(np.int8),
        code_units=code_units,
        metadata=metadata,
    )


def _report_drops(where: str, dropped: dict[str, Any]) -> None:
    parts = [
        f"{table}: {', '.join(f'{n} {reason}' for reason, n in counts.items() if n)}"
        for table, counts in dropped.items()
        if isinstance(counts, dict) and any(counts.values())
    ]
    if dropped.get("persons_without_events"):
        parts.append(f"{dropped['persons_without_events']} persons without events")
    if parts:
        logger.warning("%s: dropped %s.", where, "; ".join(parts))
