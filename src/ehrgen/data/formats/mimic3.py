"""Read MIMIC-III (v1.4) from its raw tables into a :class:`~ehrgen.data.cohort.Cohort`.

``root`` holds the tables as distributed (``ADMISSIONS.csv.gz`` or ``.csv``; file and
column names match in any case). What is read:

* ``PATIENTS`` (required): ``GENDER`` (``F`` / ``M``) and ``DOB``;
* ``ADMISSIONS`` (required): one visit per ``HADM_ID`` at its ``ADMITTIME``; the
  ``ETHNICITY`` and ``INSURANCE`` baseline features;
* ``DIAGNOSES_ICD`` -> ``diagnosis`` (``ICD9CM//4019``), ``PROCEDURES_ICD`` ->
  ``procedure`` (``ICD9PROC//3722``), both in ``SEQ_NUM`` order. Required when their
  modality is read;
* ``PRESCRIPTIONS`` -> ``drug``: the ``DRUG`` name upper-cased with its whitespace
  collapsed (``ASPIRIN``), or with ``drug_code="ndc"`` the ``NDC``
  (``NDC//00904198261``; MIMIC's ``0`` means none); in ``STARTDATE`` order;
* ``LABEVENTS`` -> ``lab``: the test's ``ITEMID`` (``ITEMID//50912``), or with
  ``lab_code="label"`` its ``D_LABITEMS`` label (``LABEL//Creatinine``; ITEMIDs that
  share a label merge); in ``CHARTTIME`` order. A lab row without ``HADM_ID`` (an
  outpatient test) goes to the patient's admission whose [``ADMITTIME``,
  ``DISCHTIME``] holds its ``CHARTTIME`` (the latest-starting one when two overlap),
  and is dropped when none does, or always with ``assign_orphan_labs=False``.
  Each lab code has a unit (``cohort.code_units``, ``cohort.units()``): the most
  frequent ``VALUEUOM`` among the code's rows that have a ``VALUENUM`` and a
  non-empty ``VALUEUOM`` (every such row of the table, whether or not it makes an
  event; with ``lab_code="label"``, those of all the label's ITEMIDs), ties broken by
  the smaller unit string; None for a code without such a row, and ``code_units`` is
  None when no code has a unit (or without a ``VALUEUOM`` column). Units are kept
  as written (``mg/dL``), whitespace trimmed.

``PRESCRIPTIONS`` and ``LABEVENTS`` are optional: when absent, their modality is left
out with a warning. Codes repeated within a visit are kept once, at their first place.

Baseline features: ``gender`` (``F``, ``M``); ``ethnicity`` grouped into ``white``,
``black``, ``hispanic``, ``asian``, ``other`` and ``unknown`` (WHITE and PORTUGUESE ->
white; BLACK... -> black; HISPANIC, LATINO, SOUTH AMERICAN -> hispanic; ASIAN... ->
asian; UNKNOWN, UNABLE TO OBTAIN, DECLINED -> unknown; the rest -> other), from the
first admission that states one; ``insurance`` as the first admission writes it
(``Medicare``, ``Private``...); ``age`` in completed years at the first admission,
**capped at 90**: MIMIC-III shifts the birth date of patients older than 89 to about
300 years before their first admission, so every one of them reads 90.

Dropped, counted in ``metadata["dropped"]`` and logged: rows without a code, rows
whose ``HADM_ID`` is not an admission, lab rows outside every admission, admissions
of subjects missing from ``PATIENTS``, admissions with no code, and patients with no
admission left. Two admissions of a patient at the same time are kept apart by one
microsecond (``metadata["visits_sharing_a_time"]``).

Bad input is a :class:`~ehrgen.errors.SchemaError` that names the file, the line, the
column, the row and a fix: a missing table or column, an id that is not an integer, an
ICD code that is not a string of letters and digits (a column that went through a
number type and lost its leading zeros), a repeated ``HADM_ID`` or ``SUBJECT_ID``, a
timestamp that does not parse (or, with ``invalid_rows="drop"``, such rows are dropped
and counted).

Event tables are read a block of rows at a time, only the columns used, and each
block reduced at once to the compact events of the patients it completes (the tables
are grouped by patient), so memory follows the size of the cohort rather than of
``LABEVENTS`` (27.9M rows). A table not grouped by patient is read whole instead,
with more memory (see :mod:`ehrgen.data.formats._mimic_events`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl

from ehrgen.data import Cohort
from ehrgen.data.formats._mimic_common import (
    AGE_CAP,
    GENDERS,
    INVALID_ROWS,
    Table,
    build_cohort,
    check_choice,
    check_codes,
    check_ids,
    find_table,
    finish,
    invalid_time,
    missing_table,
    parse_time,
    read_visits,
    time_error,
    wanted_modalities,
)
from ehrgen.data.formats._mimic_events import EventQuery, read_events
from ehrgen.data.preprocess import Preprocessing
from ehrgen.errors import SchemaError

__all__ = ["ETHNICITY_GROUPS", "read_mimic3"]

logger = logging.getLogger(__name__)

ETHNICITY_GROUPS = ("white", "black", "hispanic", "asian", "other", "unknown")
# The table of each modality, and the columns each table needs (PRESCRIPTIONS also
# needs DRUG or NDC, after drug_code).
TABLES = {
    "diagnosis": "DIAGNOSES_ICD",
    "procedure": "PROCEDURES_ICD",
    "drug": "PRESCRIPTIONS",
    "lab": "LABEVENTS",
}
COLUMNS = {
    "PATIENTS": ("SUBJECT_ID", "GENDER", "DOB"),
    "ADMISSIONS": (
        "SUBJECT_ID",
        "HADM_ID",
        "ADMITTIME",
        "DISCHTIME",
        "ETHNICITY",
        "INSURANCE",
    ),
    "DIAGNOSES_ICD": ("HADM_ID", "SEQ_NUM", "ICD9_CODE"),
    "PROCEDURES_ICD": ("HADM_ID", "SEQ_NUM", "ICD9_CODE"),
    "PRESCRIPTIONS": ("HADM_ID", "STARTDATE"),
    "LABEVENTS": ("SUBJECT_ID", "HADM_ID", "ITEMID", "CHARTTIME"),
    "D_LABITEMS": ("ITEMID", "LABEL"),
}
ADMISSION_NAMES = {
    "subject": "SUBJECT_ID",
    "hadm": "HADM_ID",
    "start": "ADMITTIME",
    "end": "DISCHTIME",
    "ethnicity": "ETHNICITY",
    "insurance": "INSURANCE",
}


def read_mimic3(
    root: str | os.PathLike[str],
    *,
    preprocessing: Preprocessing | None = None,
    drug_code: Literal["name", "ndc"] = "name",
    lab_code: Literal["itemid", "label"] = "itemid",
    assign_orphan_labs: bool = True,
    invalid_rows: Literal["error", "drop"] = "error",
) -> Cohort:
    """Read the raw MIMIC-III tables in ``root`` as a cohort (see the module docstring).

    Args:
        root: the folder of the MIMIC-III ``.csv`` / ``.csv.gz`` tables.
        preprocessing: options applied once read (see
            :func:`ehrgen.data.preprocess.preprocess`); its ``modalities`` also choose
            which tables are read.
        drug_code: ``"name"`` (the normalised drug name) or ``"ndc"``.
        lab_code: ``"itemid"`` or ``"label"`` (needs ``D_LABITEMS``).
        assign_orphan_labs: assign lab rows without ``HADM_ID`` to the admission
            whose interval holds their time (else drop them).
        invalid_rows: ``"error"`` (default) or ``"drop"`` rows whose timestamp does
            not parse.

    Returns:
        The cohort; ``metadata["dropped"]`` counts what was left out, per table and
        reason, and ``metadata["preprocessing"]`` what ``preprocessing`` removed.

    Raises:
        SchemaError: bad input, naming the file, line, column, row and a fix.
        ConfigError: an invalid option.

    Example:
        >>> cohort = read_mimic3("mimic-iii-1.4/")  # doctest: +SKIP
        >>> cohort.schema.modalities  # doctest: +SKIP
        ('diagnosis', 'procedure', 'drug', 'lab')
    """
    started = time.perf_counter()
    check_choice("read_mimic3", "drug_code", drug_code, ("name", "ndc"))
    check_choice("read_mimic3", "lab_code", lab_code, ("itemid", "label"))
    check_choice("read_mimic3", "invalid_rows", invalid_rows, INVALID_ROWS)
    root = Path(root)
    modalities = wanted_modalities("read_mimic3", preprocessing)
    tables = _tables(root, modalities, drug_code, lab_code)
    dropped: dict[str, Any] = {}
    patients = _read_patients(tables["PATIENTS"], invalid_rows, dropped)
    visits = read_visits(
        tables["ADMISSIONS"],
        ADMISSION_NAMES,
        patients["subject"],
        invalid_rows,
        dropped,
    )
    dropped["patients_without_admission"] = int(
        (~patients["subject"].is_in(visits["subject"].implode())).sum()
    )
    present = [m for m in modalities if TABLES[m] in tables]
    events = []
    for modality in present:
        table = tables[TABLES[modality]]
        query = _query(modality, table, tables, drug_code, assign_orphan_labs)
        events.append(read_events(table, query, visits, invalid_rows, dropped))
    static = static_features(visits, patients, age_at_first_admission())
    cohort = build_mimic_cohort(
        "MIMIC-III", root, visits, events, static, dropped,
        options={
            "drug_code": drug_code,
            "lab_code": lab_code,
            "assign_orphan_labs": assign_orphan_labs,
            "invalid_rows": invalid_rows,
        },
        missing=[TABLES[m] for m in modalities if m not in present],
    )  # fmt: skip
    return finish(cohort, preprocessing, str(root), started)


def build_mimic_cohort(
    fmt: str,
    root: Path,
    visits: Any,
    events: list[Any],
    static: Any,
    dropped: dict[str, Any],
    *,
    options: dict[str, Any],
    missing: list[str],
) -> Any:
    """The cohort of a MIMIC reader, with the metadata both readers record."""
    metadata = {
        "source": str(root),
        "format": fmt,
        "options": options,
        "age_cap": AGE_CAP,
        "ages_capped": int((static["age"] >= AGE_CAP).sum()),
        "missing_tables": missing,
        "dropped": dropped,
    }
    return build_cohort(visits, events, static, categorical_features(static), metadata)


def _tables(
    root: Path, modalities: list[str], drug_code: str, lab_code: str
) -> dict[str, Table]:
    """Every table needed, its columns checked before any row is read."""
    if not root.is_dir():
        raise SchemaError(
            f"{root}: not a folder; expected the folder of the MIMIC-III tables."
        )
    wanted = ["PATIENTS", "ADMISSIONS", *(TABLES[m] for m in modalities)]
    if lab_code == "label" and "lab" in modalities:
        wanted.append("D_LABITEMS")
    tables = {}
    for name in wanted:
        table = find_table(root, name, upper=True)
        if table is None:
            optional = name in ("PRESCRIPTIONS", "LABEVENTS")
            missing_table(root, name, "read_mimic3", required=not optional)
            continue
        columns = COLUMNS[name]
        if name == "PRESCRIPTIONS":
            columns = (*columns, "DRUG" if drug_code == "name" else "NDC")
        table.require(columns, "Use the MIMIC-III v1.4 tables as distributed.")
        tables[name] = table
    return tables


def _read_patients(table: Table, invalid_rows: str, dropped: dict) -> pl.DataFrame:
    """``subject``, ``gender`` (F, M or null) and ``born`` (null when unknown)."""
    scan = table.scan({"SUBJECT_ID": pl.Int64, "GENDER": pl.String, "DOB": pl.String})
    (frame,) = table.collect(scan.with_row_index("_row"))
    check_ids(frame, ["SUBJECT_ID"], table, unique="SUBJECT_ID")
    bad = frame.filter(invalid_time("DOB"))
    if bad.height and invalid_rows == "error":
        raise time_error(table, ["DOB"])
    dropped["patients_with_invalid_birth_dates"] = bad.height
    return frame.select(
        pl.col("SUBJECT_ID").alias("subject"),
        gender("GENDER"),
        parse_time("DOB").alias("born"),
    )


def age_at_first_admission(born: str = "born", at: str = "first_start") -> pl.Expr:
    """Completed years from birth to the first admission, capped at ``AGE_CAP``
    (patients over 89 have shifted birth dates); null when unknown or negative."""
    birth, first = pl.col(born), pl.col(at)
    years = first.dt.year().cast(pl.Int32) - birth.dt.year().cast(pl.Int32)
    day = (first.dt.month().cast(pl.Int32) * 100) + first.dt.day()
    birthday = (birth.dt.month().cast(pl.Int32) * 100) + birth.dt.day()
    before_birthday = day < birthday
    years = years - before_birthday.cast(pl.Int32)
    return capped_age(years)


def capped_age(years: pl.Expr) -> pl.Expr:
    """Ages as floats, capped at ``AGE_CAP``; negative ones are unknown (null)."""
    years = years.cast(pl.Float64)
    return pl.when(years >= 0).then(pl.min_horizontal(years, AGE_CAP)).alias("age")


def gender(column: str) -> pl.Expr:
    """``F`` or ``M``; anything else is unknown (null)."""
    text = pl.col(column).str.strip_chars().str.to_uppercase()
    return pl.when(text.is_in(GENDERS)).then(text).alias("gender")


def _query(
    modality: str,
    table: Table,
    tables: dict[str, Table],
    drug_code: str,
    assign_orphan_labs: bool,
) -> EventQuery:
    if modality in ("diagnosis", "procedure"):
        return _icd9_query(modality, table)
    if modality == "drug":
        return drug_query(table, drug_code, "STARTDATE")
    items = tables.get("D_LABITEMS")
    return lab_query(
        table, None if items is None else read_lab_items(items), assign_orphan_labs
    )


def _icd9_query(modality: str, table: Table) -> EventQuery:
    system = "ICD9CM" if modality == "diagnosis" else "ICD9PROC"
    columns = {"HADM_ID": pl.Int64, "SEQ_NUM": pl.Int64, "ICD9_CODE": pl.String}

    def derive(raw: pl.LazyFrame) -> pl.LazyFrame:
        return raw.select(
            pl.col("HADM_ID").alias("hadm"),
            clean_text("ICD9_CODE", upper=True).alias("code"),
            pl.col("SEQ_NUM").alias("order"),
            pl.lit(False).alias("bad"),
        )

    def format_codes(distinct: pl.DataFrame) -> list[str]:
        check_codes(distinct["code"], table, "ICD9_CODE")
        return [f"{system}//{c}" for c in distinct["code"].to_list()]

    return EventQuery(
        modality,
        columns,
        derive,
        ("code",),
        format_codes,
        lambda: time_error(table, []),
    )


# --------------------------------------------------------------------------- shared
# What MIMIC-IV's hosp module shares with MIMIC-III: the same columns in lower case.


def static_features(
    visits: pl.DataFrame, patients: pl.DataFrame, age: pl.Expr
) -> pl.DataFrame:
    """Per subject with an admission: ``gender``, ``ethnicity``, ``insurance`` and
    ``age`` (``age`` is evaluated over the first admission joined with
    ``patients``)."""
    return (
        first_admissions(visits)
        .join(patients, on="subject", how="left")
        .select("subject", "gender", "ethnicity", "insurance", age.alias("age"))
    )


def categorical_features(static: pl.DataFrame) -> dict[str, tuple[str, ...]]:
    """The categories of gender, ethnicity and insurance (those seen, sorted)."""
    insurance = static["insurance"].drop_nulls().unique().sort().to_list()
    return {
        "gender": GENDERS,
        "ethnicity": ETHNICITY_GROUPS,
        "insurance": tuple(insurance),
    }


def ethnicity_group(column: str) -> pl.Expr:
    """MIMIC's ethnicity / race strings grouped into :data:`ETHNICITY_GROUPS`."""
    text = pl.col(column).str.to_uppercase()
    return (
        pl.when(
            text.is_null() | text.str.contains("UNKNOWN|UNABLE|DECLINED|NOT SPECIFIED")
        )
        .then(pl.lit("unknown"))
        .when(text.str.contains("WHITE|PORTUGUESE"))
        .then(pl.lit("white"))
        .when(text.str.contains("BLACK"))
        .then(pl.lit("black"))
        .when(text.str.contains("HISPANIC|LATINO|SOUTH AMERICAN"))
        .then(pl.lit("hispanic"))
        .when(text.str.contains("ASIAN"))
        .then(pl.lit("asian"))
        .otherwise(pl.lit("other"))
    )


def first_admissions(visits: pl.DataFrame) -> pl.DataFrame:
    """Per subject: the first admission's time and insurance, and the ethnicity group
    of the first admission that states one (``unknown`` when none does)."""
    return (
        visits.with_columns(group=ethnicity_group("ethnicity"))
        .group_by("subject", maintain_order=True)
        .agg(
            pl.col("start").first().alias("first_start"),
            pl.col("insurance").first(),
            pl.col("group").filter(pl.col("group") != "unknown").first(),
        )
        .select(
            "subject",
            "first_start",
            "insurance",
            pl.col("group").fill_null("unknown").alias("ethnicity"),
        )
    )


def clean_text(column: str, *, upper: bool) -> pl.Expr:
    """Whitespace collapsed and trimmed (and upper-cased); empty -> null."""
    text = pl.col(column).str.replace_all(r"\s+", " ").str.strip_chars()
    text = text.str.to_uppercase() if upper else text
    return pl.when(text.str.len_bytes() > 0).then(text)


def drug_query(table: Table, drug_code: str, start: str) -> EventQuery:
    """Drugs by normalised name (``ASPIRIN``) or by NDC (``NDC//00904198261``; MIMIC's
    ``0`` means none), ordered by start time within a visit."""
    hadm = table.name_of("hadm_id")
    column = table.name_of("drug" if drug_code == "name" else "ndc")
    key = clean_text(column, upper=drug_code == "name")
    if drug_code == "ndc":
        key = pl.when(key.str.contains(r"^0+$")).then(None).otherwise(key)
    columns = {hadm: pl.Int64, column: pl.String, start: pl.String}

    def derive(raw: pl.LazyFrame) -> pl.LazyFrame:
        return raw.select(
            pl.col(hadm).alias("hadm"),
            key.alias("code"),
            parse_time(start).alias("order"),
            invalid_time(start).alias("bad"),
        )

    def format_codes(distinct: pl.DataFrame) -> list[str]:
        if drug_code == "name":
            return distinct["code"].to_list()
        check_codes(distinct["code"], table, column)
        return [f"NDC//{c}" for c in distinct["code"].to_list()]

    return EventQuery(
        "drug",
        columns,
        derive,
        ("code",),
        format_codes,
        lambda: time_error(table, [start]),
    )


def lab_query(
    table: Table, items: pl.DataFrame | None, assign_orphans: bool
) -> EventQuery:
    """Labs by ITEMID (``ITEMID//50912``) or, given ``items`` (``itemid`` -> label),
    by label (``LABEL//Creatinine``; ITEMIDs without a label keep their ITEMID);
    ordered by first chart time within a visit; each with its ``VALUENUM``, the last
    one in the file's row order within the visit. Each code's unit is the most
    frequent ``VALUEUOM`` among its rows with a ``VALUENUM`` (see
    :class:`~ehrgen.data.formats._mimic_events._UnitTally`); a table without either
    column has no units."""
    subject, hadm, item, time = (
        table.name_of(c) for c in ("subject_id", "hadm_id", "itemid", "charttime")
    )
    labels: list[str] = []
    key = pl.col(item)
    if items is not None:
        labels = items["label"].unique().drop_nulls().sort().to_list()
        index = {label: i for i, label in enumerate(labels)}
        known = items.drop_nulls("label")
        ids = [index[label] for label in known["label"].to_list()]
        # An ITEMID without a label becomes -ITEMID, so that it keeps its own code.
        key = key.replace_strict(
            known["itemid"].to_list(), ids, default=-key, return_dtype=pl.Int64
        )
    columns = {hadm: pl.Int64, item: pl.Int64, time: pl.String}
    extra = []
    number = table.name_of("valuenum")
    has_values = table.has(number)
    if has_values:
        columns[number] = pl.String
        # A result that does not parse as a number is no value (MIMIC leaves some
        # empty).
        extra.append(pl.col(number).cast(pl.Float64, strict=False).alias("value"))
    unit = table.name_of("valueuom")
    has_units = has_values and table.has(unit)  # a unit is counted with a value
    if has_units:
        columns[unit] = pl.String
        # As written (mg/dL and MG/DL stay apart); blank is no unit.
        extra.append(clean_text(unit, upper=False).alias("unit"))
    if assign_orphans:
        columns[subject] = pl.Int64
        extra.append(pl.col(subject).alias("subject"))

    def derive(raw: pl.LazyFrame) -> pl.LazyFrame:
        return raw.select(
            pl.col(hadm).alias("hadm"),
            key.alias("code"),
            parse_time(time).alias("order"),
            invalid_time(time).alias("bad"),
            *extra,
        )

    def format_codes(distinct: pl.DataFrame) -> list[str]:
        return [
            f"LABEL//{labels[k]}"
            if items is not None and k >= 0
            else f"ITEMID//{abs(k)}"
            for k in distinct["code"].to_list()
        ]

    return EventQuery(
        "lab",
        columns,
        derive,
        ("code",),
        format_codes,
        lambda: time_error(table, [time]),
        assign_orphans=assign_orphans,
        values=has_values,
        units=has_units,
    )


def read_lab_items(table: Table) -> pl.DataFrame:
    """``itemid`` -> ``label`` (whitespace collapsed) from D_LABITEMS."""
    item, label = table.name_of("itemid"), table.name_of("label")
    table.require([item, label])
    frame = table.scan({item: pl.Int64, label: pl.String}).with_row_index("_row")
    (frame,) = table.collect(frame)
    check_ids(frame, [item], table, unique=item)
    return frame.select(
        pl.col(item).alias("itemid"), clean_text(label, upper=False).alias("label")
    )
