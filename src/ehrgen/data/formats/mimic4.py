"""Read MIMIC-IV (v1 to v3) from its ``hosp`` module into a
:class:`~ehrgen.data.cohort.Cohort`.

``root`` is the ``hosp`` folder or the folder that holds ``hosp/``; tables are
``.csv.gz`` or ``.csv`` as distributed, file and column names in any case. The reader
follows :mod:`ehrgen.data.formats.mimic3` (the same visits, drug and lab codes, orders
within a visit, dropped rows, errors and streaming), with MIMIC-IV's columns:

* ``patients`` (required): ``gender``, ``anchor_age`` and ``anchor_year``;
* ``admissions`` (required): one visit per ``hadm_id`` at its ``admittime``; ``race``
  (``ethnicity`` before v2) and ``insurance``;
* ``diagnoses_icd`` and ``procedures_icd`` (required when their modality is read): the
  code keeps its ICD version, ``ICD9CM//4019`` or ``ICD10CM//I10`` for diagnoses,
  ``ICD9PROC//3722`` or ``ICD10PCS//0DTJ4ZZ`` for procedures; an ``icd_version`` other
  than 9 or 10 is an error (or, with ``invalid_rows="drop"``, a dropped row);
* ``prescriptions`` (``drug`` or ``ndc``, ordered by ``starttime``) and ``labevents``
  (``itemid``, with ``d_labitems``' ``label`` for ``lab_code="label"``; ordered by
  ``charttime``; the last ``valuenum`` of the visit), optional. A lab code's unit is
  the most frequent ``valueuom`` among its rows that have a ``valuenum`` and a
  non-empty ``valueuom``, ties broken by the smaller unit string; None for a code
  with no such row; ``code_units`` is None when no code has one (as without a
  ``valueuom`` column).

Age is years at the first admission, ``anchor_age + (admission year - anchor_year)``,
**capped at 90**: MIMIC-IV gives an ``anchor_age`` of 91 to every patient over 89, so
they all read 90. Ethnicity groups, gender and insurance are as for MIMIC-III.

``labevents`` has about 118M rows; it is read a block of rows at a time, each block
reduced at once to the events of the patients it completes, about 8 bytes per event
(code and value) in the cohort; units are counted per (code, unit) pair as blocks go,
never kept per row.
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
    INVALID_ROWS,
    Table,
    check_choice,
    check_codes,
    check_ids,
    find_table,
    finish,
    missing_table,
    read_visits,
    wanted_modalities,
)
from ehrgen.data.formats._mimic_events import EventQuery, read_events
from ehrgen.data.formats.mimic3 import (
    build_mimic_cohort,
    capped_age,
    clean_text,
    drug_query,
    gender,
    lab_query,
    read_lab_items,
    static_features,
)
from ehrgen.data.preprocess import Preprocessing
from ehrgen.errors import SchemaError

__all__ = ["read_mimic4"]

logger = logging.getLogger(__name__)

TABLES = {
    "diagnosis": "diagnoses_icd",
    "procedure": "procedures_icd",
    "drug": "prescriptions",
    "lab": "labevents",
}
OPTIONAL = ("prescriptions", "labevents")
COLUMNS = {
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year"),
    "admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "insurance"),
    "diagnoses_icd": ("hadm_id", "seq_num", "icd_code", "icd_version"),
    "procedures_icd": ("hadm_id", "seq_num", "icd_code", "icd_version"),
    "prescriptions": ("hadm_id", "starttime"),
    "labevents": ("subject_id", "hadm_id", "itemid", "charttime"),
    "d_labitems": ("itemid", "label"),
}
SYSTEMS = {
    "diagnosis": {9: "ICD9CM", 10: "ICD10CM"},
    "procedure": {9: "ICD9PROC", 10: "ICD10PCS"},
}


def read_mimic4(
    root: str | os.PathLike[str],
    *,
    preprocessing: Preprocessing | None = None,
    drug_code: Literal["name", "ndc"] = "name",
    lab_code: Literal["itemid", "label"] = "itemid",
    assign_orphan_labs: bool = True,
    invalid_rows: Literal["error", "drop"] = "error",
) -> Cohort:
    """Read the MIMIC-IV ``hosp`` tables as a cohort (see the module docstring).

    Args:
        root: the ``hosp`` folder, or the folder that holds ``hosp/``.
        preprocessing: options applied once read (see
            :func:`ehrgen.data.preprocess.preprocess`); its ``modalities`` also choose
            which tables are read.
        drug_code: ``"name"`` (the normalised drug name) or ``"ndc"``.
        lab_code: ``"itemid"`` or ``"label"`` (needs ``d_labitems``).
        assign_orphan_labs: assign lab rows without ``hadm_id`` to the admission
            whose interval holds their time (else drop them).
        invalid_rows: ``"error"`` (default) or ``"drop"`` rows with a timestamp that
            does not parse or an ``icd_version`` other than 9 or 10.

    Returns:
        The cohort; ``metadata["dropped"]`` counts what was left out, per table and
        reason, and ``metadata["preprocessing"]`` what ``preprocessing`` removed.

    Raises:
        SchemaError: bad input, naming the file, line, column, row and a fix.
        ConfigError: an invalid option.

    Example:
        >>> cohort = read_mimic4("mimiciv/3.1/hosp")  # doctest: +SKIP
        >>> cohort[0].visits[0].codes("diagnosis")[:2]  # doctest: +SKIP
        ('ICD10CM//I10', 'ICD10CM//E785')
    """
    started = time.perf_counter()
    check_choice("read_mimic4", "drug_code", drug_code, ("name", "ndc"))
    check_choice("read_mimic4", "lab_code", lab_code, ("itemid", "label"))
    check_choice("read_mimic4", "invalid_rows", invalid_rows, INVALID_ROWS)
    root = _hosp_folder(Path(root))
    modalities = wanted_modalities("read_mimic4", preprocessing)
    tables = _tables(root, modalities, drug_code, lab_code)
    dropped: dict[str, Any] = {}
    patients = _read_patients(tables["patients"])
    admissions = tables["admissions"]
    names = {
        "subject": "subject_id",
        "hadm": "hadm_id",
        "start": "admittime",
        "end": "dischtime",
        "ethnicity": "race" if admissions.has("race") else "ethnicity",
        "insurance": "insurance",
    }
    visits = read_visits(admissions, names, patients["subject"], invalid_rows, dropped)
    dropped["patients_without_admission"] = int(
        (~patients["subject"].is_in(visits["subject"].implode())).sum()
    )
    present = [m for m in modalities if TABLES[m] in tables]
    events = []
    for modality in present:
        table = tables[TABLES[modality]]
        query = _query(modality, table, tables, drug_code, assign_orphan_labs)
        events.append(read_events(table, query, visits, invalid_rows, dropped))
    age = capped_age(
        pl.col("anchor_age") + pl.col("first_start").dt.year() - pl.col("anchor_year")
    )
    static = static_features(visits, patients, age)
    cohort = build_mimic_cohort(
        "MIMIC-IV", root, visits, events, static, dropped,
        options={
            "drug_code": drug_code,
            "lab_code": lab_code,
            "assign_orphan_labs": assign_orphan_labs,
            "invalid_rows": invalid_rows,
        },
        missing=[TABLES[m] for m in modalities if m not in present],
    )  # fmt: skip
    return finish(cohort, preprocessing, str(root), started)


def _hosp_folder(root: Path) -> Path:
    if (root / "hosp").is_dir():
        return root / "hosp"
    if not root.is_dir():
        raise SchemaError(
            f"{root}: not a folder; expected MIMIC-IV's hosp folder, or the folder "
            f"that holds hosp/."
        )
    return root


def _tables(
    root: Path, modalities: list[str], drug_code: str, lab_code: str
) -> dict[str, Table]:
    """Every table needed, its columns checked before any row is read."""
    wanted = ["patients", "admissions", *(TABLES[m] for m in modalities)]
    if lab_code == "label" and "lab" in modalities:
        wanted.append("d_labitems")
    tables = {}
    for name in wanted:
        table = find_table(root, name, upper=False)
        if table is None:
            missing_table(root, name, "read_mimic4", required=name not in OPTIONAL)
            continue
        columns = COLUMNS[name]
        if name == "prescriptions":
            columns = (*columns, "drug" if drug_code == "name" else "ndc")
        if name == "admissions" and not table.has("race"):
            columns = (*columns, "ethnicity")  # MIMIC-IV v1 names race "ethnicity"
        table.require(columns, "Use the MIMIC-IV hosp tables as distributed.")
        tables[name] = table
    return tables


def _read_patients(table: Table) -> pl.DataFrame:
    """``subject``, ``gender`` (F, M or null), ``anchor_age``, ``anchor_year``."""
    dtypes = {
        "subject_id": pl.Int64,
        "gender": pl.String,
        "anchor_age": pl.Int64,
        "anchor_year": pl.Int64,
    }
    (frame,) = table.collect(table.scan(dtypes).with_row_index("_row"))
    check_ids(frame, ["subject_id"], table, unique="subject_id")
    return frame.select(
        pl.col("subject_id").alias("subject"),
        gender("gender"),
        "anchor_age",
        "anchor_year",
    )


def _query(
    modality: str,
    table: Table,
    tables: dict[str, Table],
    drug_code: str,
    assign_orphan_labs: bool,
) -> EventQuery:
    if modality in SYSTEMS:
        return _icd_query(modality, table)
    if modality == "drug":
        return drug_query(table, drug_code, "starttime")
    items = tables.get("d_labitems")
    return lab_query(
        table, None if items is None else read_lab_items(items), assign_orphan_labs
    )


def _icd_query(modality: str, table: Table) -> EventQuery:
    """ICD codes with their version: ``ICD9CM//4019``, ``ICD10CM//I10``..."""
    systems = SYSTEMS[modality]
    version = pl.col("icd_version").str.strip_chars()
    valid = version.is_in(["9", "10"]).fill_null(False)
    dtypes = {
        "hadm_id": pl.Int64,
        "seq_num": pl.Int64,
        "icd_code": pl.String,
        "icd_version": pl.String,
    }

    def derive(raw: pl.LazyFrame) -> pl.LazyFrame:
        return raw.select(
            pl.col("hadm_id").alias("hadm"),
            version.cast(pl.Int8, strict=False).alias("version"),
            clean_text("icd_code", upper=True).alias("code"),
            pl.col("seq_num").alias("order"),
            (~valid).alias("bad"),
        )

    def format_codes(distinct: pl.DataFrame) -> list[str]:
        check_codes(distinct["code"], table, "icd_code")
        return [
            f"{systems[v]}//{c}"
            for v, c in zip(distinct["version"].to_list(), distinct["code"].to_list())
        ]

    def explain() -> SchemaError:
        row = table.first_row(~valid) or {"_row": -2, "icd_version": None}
        return table.error(
            row,
            "icd_version",
            f"expected 9 or 10, got {row['icd_version']!r}",
            "Fix the value, or pass invalid_rows='drop' to drop such rows.",
        )

    return EventQuery(
        modality, dtypes, derive, ("version", "code"), format_codes, explain
    )
