"""Write a :class:`~ehrgen.data.cohort.Cohort` as an OMOP CDM v5.4 database.

The output is a folder of Parquet or CSV files (one per table: ``person.parquet``...),
or a DuckDB database file when the output path ends with ``.duckdb`` (needs ``pip
install "ehrgen[omop]"``). Each table has every column of its CDM v5.4 definition,
typed (ids Int64, dates, timestamps, text); the columns the cohort says nothing about
are null. What is written, the inverse of :func:`ehrgen.data.formats.omop.read_omop`:

* ``person``: one row per patient. ``person_id`` is the cohort's patient id when every
  id is a canonical non-negative integer (``"42"``, not ``"042"``; synthetic cohorts
  count from 10**15), else the patient's position from 1; ``person_source_value`` is
  the cohort's id either way. ``gender`` (``M`` -> 8507, ``F`` -> 8532), ``race`` and
  ``ethnicity`` become concepts when their label is a standard name (``white`` ->
  8527, ``hispanic`` -> 38003563...) or an integer (a concept id, as the reader gives
  for concepts it cannot name), else concept 0 with the label in ``*_source_value``.
  The birth date is ``age`` whole years before the first visit (28 February for a
  first visit on 29 February), so the reader's completed years give the age back;
  it is null when the age is unknown or negative.
* ``observation_period``: one per patient with a visit, first to last visit date.
* ``visit_occurrence``: one per visit, ids from 1, starting and ending at the visit
  time (``visit_concept_id`` 0: the cohort has no visit type).
* ``condition_occurrence``, ``procedure_occurrence``, ``drug_exposure``,
  ``measurement``: one row per event of the modalities ``diagnosis``, ``procedure``,
  ``drug``, ``lab``, dated at its visit. A code ``OMOP//<concept_id>`` (what the
  reader gives with ``code_source="concept_id"``) is written as that concept; any
  other code has concept 0. ``*_source_value`` is always the cohort's code string
  (``ICD9CM//4019``), so nothing is lost; read such a database back with
  ``code_source="source_value"`` (codes then read as ``SOURCE//<code>``). Events of
  other modalities have no table and are left out with a warning.
* ``cdm_source``: one row saying that the patients are synthetic and which model made
  them.

Type concepts (``*_type_concept_id``) are 0; no ``concept`` table is written, so the
reader names gender ``M`` / ``F`` and other concepts by their ids.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ehrgen._io import atomic_directory, atomic_file
from ehrgen.data.cohort import Cohort
from ehrgen.data.formats._omop_tables import CLINICAL_TABLES
from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["write_omop"]

logger = logging.getLogger(__name__)

CDM_VERSION = "v5.4"
CDM_VERSION_CONCEPT = 756265  # "OMOP CDM Version 5.4"
_FILE_FORMATS = ("parquet", "csv")
_CONCEPT_CODE = re.compile(r"OMOP//([1-9][0-9]{0,17})")
_CANONICAL_ID = re.compile(r"0|[1-9][0-9]{0,17}")  # fits an int64

# Standard concepts for the labels of the baseline features, lower-cased.
_GENDERS = {"m": 8507, "male": 8507, "f": 8532, "female": 8532}
_RACES = {
    "white": 8527,
    "black": 8516,
    "black or african american": 8516,
    "asian": 8515,
    "american indian or alaska native": 8657,
    "native hawaiian or other pacific islander": 8557,
}
_ETHNICITIES = {
    "hispanic": 38003563,
    "hispanic or latino": 38003563,
    "not hispanic": 38003564,
    "not hispanic or latino": 38003564,
}

# The columns of each table, in CDM v5.4 order. Types follow the names: *_id is an
# integer, *_date a date, *_datetime a timestamp, the few numbers are listed in
# _NUMBERS, anything else is text.
_COLUMNS = {
    "person": "person_id gender_concept_id year_of_birth month_of_birth day_of_birth "
    "birth_datetime race_concept_id ethnicity_concept_id location_id provider_id "
    "care_site_id person_source_value gender_source_value gender_source_concept_id "
    "race_source_value race_source_concept_id ethnicity_source_value "
    "ethnicity_source_concept_id",
    "observation_period": "observation_period_id person_id "
    "observation_period_start_date observation_period_end_date "
    "period_type_concept_id",
    "visit_occurrence": "visit_occurrence_id person_id visit_concept_id "
    "visit_start_date visit_start_datetime visit_end_date visit_end_datetime "
    "visit_type_concept_id provider_id care_site_id visit_source_value "
    "visit_source_concept_id admitted_from_concept_id admitted_from_source_value "
    "discharged_to_concept_id discharged_to_source_value "
    "preceding_visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id person_id condition_concept_id "
    "condition_start_date condition_start_datetime condition_end_date "
    "condition_end_datetime condition_type_concept_id condition_status_concept_id "
    "stop_reason provider_id visit_occurrence_id visit_detail_id "
    "condition_source_value condition_source_concept_id "
    "condition_status_source_value",
    "procedure_occurrence": "procedure_occurrence_id person_id procedure_concept_id "
    "procedure_date procedure_datetime procedure_end_date procedure_end_datetime "
    "procedure_type_concept_id modifier_concept_id quantity provider_id "
    "visit_occurrence_id visit_detail_id procedure_source_value "
    "procedure_source_concept_id modifier_source_value",
    "drug_exposure": "drug_exposure_id person_id drug_concept_id "
    "drug_exposure_start_date drug_exposure_start_datetime drug_exposure_end_date "
    "drug_exposure_end_datetime verbatim_end_date drug_type_concept_id stop_reason "
    "refills quantity days_supply sig route_concept_id lot_number provider_id "
    "visit_occurrence_id visit_detail_id drug_source_value drug_source_concept_id "
    "route_source_value dose_unit_source_value",
    "measurement": "measurement_id person_id measurement_concept_id measurement_date "
    "measurement_datetime measurement_time measurement_type_concept_id "
    "operator_concept_id value_as_number value_as_concept_id unit_concept_id "
    "range_low range_high provider_id visit_occurrence_id visit_detail_id "
    "measurement_source_value measurement_source_concept_id unit_source_value "
    "unit_source_concept_id value_source_value measurement_event_id "
    "meas_event_field_concept_id",
    "cdm_source": "cdm_source_name cdm_source_abbreviation cdm_holder "
    "source_description source_documentation_reference cdm_etl_reference "
    "source_release_date cdm_release_date cdm_version cdm_version_concept_id "
    "vocabulary_version",
}
_NUMBERS = {
    "year_of_birth": pl.Int64,
    "month_of_birth": pl.Int64,
    "day_of_birth": pl.Int64,
    "refills": pl.Int64,
    "days_supply": pl.Int64,
    "quantity": pl.Float64,
    "value_as_number": pl.Float64,
    "range_low": pl.Float64,
    "range_high": pl.Float64,
}
# Columns the CDM requires that the reader does not need: the end of a drug exposure.
_END_DATES = {"drug_exposure": "drug_exposure_end_date"}


def write_omop(
    cohort: Cohort,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    model_name: str | None = None,
    file_format: Literal["parquet", "csv"] = "parquet",
) -> Path:
    """Write ``cohort`` as an OMOP CDM v5.4 database, atomically.

    Args:
        cohort: the patients to write.
        out: a folder of tables, or a DuckDB database file when it ends with
            ``.duckdb``.
        overwrite: replace ``out`` if it exists (else an existing ``out`` is refused
            and left untouched).
        model_name: the model that made the patients, for ``cdm_source`` (default:
            the cohort's ``metadata["source"]``).
        file_format: ``"parquet"`` or ``"csv"``, for a folder (ignored for DuckDB).

    Returns:
        The path written.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
        ConfigError: a bad ``file_format``, or a DuckDB file without duckdb installed.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> write_omop(demo_cohort(5), "cdm", file_format="csv")  # doctest: +SKIP
        PosixPath('cdm')
    """
    if file_format not in _FILE_FORMATS:
        raise ConfigError(
            f"The 'file_format' parameter of write_omop must be one of "
            f"{list(_FILE_FORMATS)}. Got {file_format!r} instead."
            f"{did_you_mean(str(file_format), _FILE_FORMATS)}"
        )
    out = Path(out)
    tables = cdm_tables(cohort, model_name=model_name)
    if out.suffix.lower() == ".duckdb":
        _write_duckdb(tables, out, overwrite)
    else:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            for name, frame in tables.items():
                if file_format == "csv":
                    frame.write_csv(tmp / f"{name}.csv")
                else:
                    frame.write_parquet(tmp / f"{name}.parquet")
    logger.info(
        "%s: wrote %d persons, %d visits, %d events as OMOP CDM %s.",
        out,
        len(cohort),
        cohort.n_visits,
        cohort.n_events,
        CDM_VERSION,
    )
    return out


def cdm_tables(
    cohort: Cohort, *, model_name: str | None = None
) -> dict[str, pl.DataFrame]:
    """The CDM tables of ``cohort`` (table name -> Polars frame), as
    :func:`write_omop` writes them."""
    person_ids = _person_ids(cohort.patient_ids)
    visit_times = pl.Series("time", cohort.visit_times, dtype=pl.Datetime("us"))
    visit_person = person_ids[cohort.visit_patient]
    tables = {
        "person": _persons(cohort, person_ids),
        "observation_period": _observation_periods(visit_person, visit_times),
        "visit_occurrence": _visits(visit_person, visit_times),
    }
    for modality, spec in CLINICAL_TABLES.items():
        tables[spec.table] = _events(cohort, modality, visit_person, visit_times)
    left = set(cohort.schema.modalities) - set(CLINICAL_TABLES)
    if left:
        dropped = np.isin(
            cohort.event_modality,
            [cohort.schema.modalities.index(m) for m in sorted(left)],
        )
        logger.warning(
            "The modalities %s have no OMOP table; their %d events are not written.",
            sorted(left),
            int(dropped.sum()),
        )
    source = model_name or str(cohort.metadata.get("source") or "an unknown model")
    tables["cdm_source"] = _cdm_source(source)
    return tables


def _table(name: str, values: dict[str, Any], height: int) -> pl.DataFrame:
    """Table ``name`` with every CDM column, typed, ``values`` filled in (a column or
    a scalar) and the others null."""
    columns = {}
    for column in _COLUMNS[name].split():
        dtype = _dtype(column)
        value = values.get(column)
        if isinstance(value, pl.Series):
            columns[column] = value.alias(column).cast(dtype)
        else:
            columns[column] = pl.repeat(value, height, dtype=dtype, eager=True).alias(
                column
            )
    unknown = set(values) - set(columns)
    assert not unknown, f"not CDM columns of {name}: {unknown}"
    return pl.DataFrame(list(columns.values()))


def _dtype(column: str) -> Any:
    if column in _NUMBERS:
        return _NUMBERS[column]
    if column.endswith("_id"):
        return pl.Int64
    if column.endswith("_datetime"):
        return pl.Datetime("us")
    if column.endswith("_date"):
        return pl.Date
    return pl.String


def _person_ids(patient_ids: np.ndarray) -> np.ndarray:
    """(P,) int64 person ids: the patient ids when all are canonical integers."""
    if all(isinstance(p, str) and _CANONICAL_ID.fullmatch(p) for p in patient_ids):
        ids = [int(p) for p in patient_ids]
        if all(i < 2**63 for i in ids):
            return np.array(ids, dtype=np.int64)
    return np.arange(1, len(patient_ids) + 1, dtype=np.int64)


def _persons(cohort: Cohort, person_ids: np.ndarray) -> pl.DataFrame:
    n = len(cohort)
    has_visit = np.diff(cohort.visit_offsets) > 0
    first = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    first[has_visit] = cohort.visit_times[cohort.visit_offsets[:-1][has_visit]]
    values: dict[str, Any] = {
        "person_id": pl.Series(person_ids),
        "person_source_value": pl.Series(cohort.patient_ids.tolist(), dtype=pl.String),
    }
    for feature, known in (
        ("gender", _GENDERS),
        ("race", _RACES),
        ("ethnicity", _ETHNICITIES),
    ):
        concept, label = _feature_concepts(cohort, feature, known)
        values[f"{feature}_concept_id"] = concept
        values[f"{feature}_source_value"] = label
    if "age" in cohort.schema.numerical:
        values.update(_birth(pl.Series(first), cohort.static["age"]))
    return _table("person", values, n)


def _feature_concepts(
    cohort: Cohort, feature: str, known: dict[str, int]
) -> tuple[pl.Series, pl.Series | None]:
    """(P,) the concept of each patient's ``feature`` (0 when missing or unknown) and
    its label (null when missing)."""
    categories = cohort.schema.categorical.get(feature)
    if categories is None:
        return pl.Series(np.zeros(len(cohort), dtype=np.int64)), None
    concepts = [
        known.get(label.lower())
        or (int(label) if _CANONICAL_ID.fullmatch(label) else 0)
        for label in categories
    ]
    index = cohort.static[feature]  # -1 (missing) picks the trailing 0 / None
    concept = np.array([*concepts, 0], dtype=np.int64)[index]
    labels = np.array([*categories, None], dtype=object)[index]
    return pl.Series(concept), pl.Series(labels.tolist(), dtype=pl.String)


def _birth(first: pl.Series, age: np.ndarray) -> dict[str, pl.Series]:
    """Birth year, month, day and date: ``age`` whole years before ``first`` (null
    when either is unknown, or the age negative)."""
    years = pl.Series(np.floor(age)).fill_nan(None).cast(pl.Int64)
    frame = pl.DataFrame({"first": first, "years": years})
    keep = pl.col("first").is_not_null() & (pl.col("years") >= 0).fill_null(False)
    month, day = pl.col("first").dt.month(), pl.col("first").dt.day()
    born = frame.select(
        year=pl.when(keep).then(pl.col("first").dt.year() - pl.col("years")),
        month=pl.when(keep).then(month),
        # No 29 February in most years: the 28th keeps the completed years.
        day=pl.when(keep).then(
            pl.when((month == 2) & (day == 29)).then(28).otherwise(day)
        ),
    ).with_columns(date=pl.date("year", "month", "day").cast(pl.Datetime("us")))
    return {
        "year_of_birth": born["year"],
        "month_of_birth": born["month"],
        "day_of_birth": born["day"],
        "birth_datetime": born["date"],
    }


def _observation_periods(
    visit_person: np.ndarray, visit_times: pl.Series
) -> pl.DataFrame:
    spans = (
        pl.DataFrame({"person_id": visit_person, "time": visit_times})
        .group_by("person_id", maintain_order=True)
        .agg(pl.col("time").min().alias("start"), pl.col("time").max().alias("end"))
    )
    values = {
        "observation_period_id": pl.Series(np.arange(1, spans.height + 1)),
        "person_id": spans["person_id"],
        "observation_period_start_date": spans["start"].dt.date(),
        "observation_period_end_date": spans["end"].dt.date(),
        "period_type_concept_id": 0,
    }
    return _table("observation_period", values, spans.height)


def _visits(visit_person: np.ndarray, visit_times: pl.Series) -> pl.DataFrame:
    n = len(visit_person)
    values = {
        "visit_occurrence_id": pl.Series(np.arange(1, n + 1)),
        "person_id": pl.Series(visit_person),
        "visit_concept_id": 0,
        "visit_start_date": visit_times.dt.date(),
        "visit_start_datetime": visit_times,
        "visit_end_date": visit_times.dt.date(),
        "visit_end_datetime": visit_times,
        "visit_type_concept_id": 0,
    }
    return _table("visit_occurrence", values, n)


def _events(
    cohort: Cohort, modality: str, visit_person: np.ndarray, visit_times: pl.Series
) -> pl.DataFrame:
    """One row per event of ``modality`` (none when the cohort lacks it)."""
    spec = CLINICAL_TABLES[modality]
    if modality in cohort.schema.modalities:
        chosen = cohort.event_modality == cohort.schema.modalities.index(modality)
    else:
        chosen = np.zeros(cohort.n_events, dtype=bool)
    visit = cohort.event_visit[chosen]
    codes = cohort.event_codes[chosen]
    concepts = np.array(
        [_concept(code) for code in cohort.code_values.tolist()], dtype=np.int64
    )
    times = visit_times.gather(visit)
    values = {
        f"{spec.table}_id": pl.Series(np.arange(1, len(visit) + 1)),
        "person_id": pl.Series(visit_person[visit]),
        f"{spec.prefix}_concept_id": pl.Series(concepts[codes]),
        spec.date: times.dt.date(),
        spec.datetime: times,
        f"{spec.prefix}_type_concept_id": 0,
        "visit_occurrence_id": pl.Series(visit + 1),
        f"{spec.prefix}_source_value": pl.Series(
            cohort.code_values[codes].tolist(), dtype=pl.String
        ),
        f"{spec.prefix}_source_concept_id": 0,
    }
    if spec.table in _END_DATES:
        values[_END_DATES[spec.table]] = times.dt.date()
    if spec.table == "measurement" and cohort.event_values is not None:
        numbers = cohort.event_values[chosen].astype(np.float64)
        values["value_as_number"] = pl.Series(numbers, nan_to_null=True)
    if spec.table == "measurement" and cohort.code_units is not None:
        values["unit_source_value"] = pl.Series(
            cohort.code_units[codes].tolist(), dtype=pl.String
        )
    return _table(spec.table, values, len(visit))


def _concept(code: str) -> int:
    """The concept id of an ``OMOP//<concept_id>`` code, else 0."""
    match = _CONCEPT_CODE.fullmatch(code)
    return int(match.group(1)) if match else 0


def _cdm_source(model: str) -> pl.DataFrame:
    from ehrgen import __version__

    today = datetime.date.today()
    values = {
        "cdm_source_name": f"Synthetic patients generated by {model}",
        "cdm_source_abbreviation": "ehrgen synthetic",
        "cdm_holder": "ehrgen",
        "source_description": (
            f"Synthetic data: every patient was generated by {model} and written by "
            f"ehrgen {__version__}; no row describes a real person."
        ),
        "cdm_etl_reference": f"ehrgen {__version__} write_omop",
        "source_release_date": today,
        "cdm_release_date": today,
        "cdm_version": CDM_VERSION,
        "cdm_version_concept_id": CDM_VERSION_CONCEPT,
    }
    return _table("cdm_source", values, 1)


def _write_duckdb(tables: dict[str, pl.DataFrame], out: Path, overwrite: bool) -> None:
    try:
        import duckdb
    except ImportError:
        raise ConfigError(
            f"{out}: writing an OMOP DuckDB database needs the duckdb package, which "
            f'is not installed. Install it with: pip install "ehrgen[omop]" (or write '
            f"a folder of Parquet / CSV tables)."
        ) from None
    with atomic_file(out, overwrite=overwrite) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name, frame in tables.items():
                con.register("ehrgen_table", frame.to_arrow())
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM ehrgen_table')
                con.unregister("ehrgen_table")
        finally:
            con.close()
