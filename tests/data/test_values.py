"""Tests of numeric values on events (a lab's result): the data model, the MEDS and
JSONL round trips, the MEDS summary of a code repeated in a visit, preprocessing."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.formats.jsonl import read_jsonl, write_jsonl
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.data.preprocess import Preprocessing, preprocess
from ehrgen.errors import SchemaError
from tests.data.fixtures_meds_extract import write_meds_extract

T = datetime(2020, 1, 1)


def _cohort() -> Cohort:
    return Cohort.from_patients(
        [
            Patient("1", {}, (
                Visit({"diagnosis": ["d1"], "lab": ["k", "na"]}, T,
                      {"lab": {"k": 4.1, "na": 139.0}}),
                Visit({"lab": ["k"]}, datetime(2020, 2, 1)),
            )),
            Patient("2", {}, (Visit({"lab": ["k"]}, T, {"lab": {"k": 5.5}}),)),
        ]
    )  # fmt: skip


def test_values_are_stored_per_event_and_read_back_per_visit():
    cohort = _cohort()
    assert cohort.event_values is not None
    assert np.isnan(cohort.event_values).sum() == 2  # d1 and the second visit's k
    first = cohort[0]
    assert first.visits[0].values == {"lab": {"k": pytest.approx(4.1), "na": 139.0}}
    assert first.visits[1].values == {}
    assert cohort[1:].event_values.tolist() == [pytest.approx(5.5)]
    plain = Cohort.from_patients([Patient("3", {}, (Visit({"lab": ["k"]}, T),))])
    assert plain.event_values is None  # no memory spent on cohorts without values


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lab": {"x": 1.0}}, "not among the visit's codes"),
        ({"diagnosis": {"k": 1.0}}, "not among the visit's codes"),
        ({"lab": {"k": "high"}}, "must be a number"),
        ({"lab": {"k": float("inf")}}, "must be finite"),
        ([1.0], "must be a mapping"),
    ],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(SchemaError, match=message):
        Visit({"lab": ["k"]}, T, values)


def test_meds_keeps_units(tmp_path):
    """Units (one per code) go to MEDS metadata/ehrgen.json and read back."""
    from ehrgen.data.demo import demo_cohort

    cohort = demo_cohort(30, seed=0)
    back = read_meds(write_meds(cohort, tmp_path / "meds"))
    assert back.units() == cohort.units()
    assert back.units()[("lab", "Potassium")] == "mEq/L"


def test_meds_and_jsonl_keep_values(tmp_path):
    cohort = _cohort()
    assert read_meds(write_meds(cohort, tmp_path / "meds")) == cohort
    assert read_jsonl(write_jsonl(cohort, tmp_path / "c.jsonl")) == cohort
    line = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert line["visits"][0]["values"] == {"lab": {"k": pytest.approx(4.1),
                                                   "na": 139.0}}  # fmt: skip
    assert "values" not in line["visits"][1]


def test_jsonl_values_errors_name_the_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    visit = {"time": None, "events": {"lab": ["k"]}, "values": {"lab": {"k": "4"}}}
    path.write_text(json.dumps({"patient_id": "1", "visits": [visit]}) + "\n")
    with pytest.raises(SchemaError, match=r"bad.jsonl:1.*visits\[0\].values.lab.k"):
        read_jsonl(path)


def test_meds_keeps_the_last_value_of_a_code_repeated_in_a_visit(tmp_path):
    """MEDS-Extract's first stay has creatinine 1.2 then 1.0: the visit keeps 1.0;
    the lab outside any stay keeps its own 1.1."""
    src = write_meds_extract(tmp_path / "src")
    cohort = read_meds(
        src,
        prefix_to_modality={"LAB": "lab", "DIAGNOSIS": "diagnosis"},
        unknown_prefixes="drop",
    )
    by_day = {v.time.date().isoformat(): v.values for v in cohort[0].visits}
    assert by_day["2020-01-01"] == {"lab": {"50912//mg/dL": pytest.approx(1.2)}}
    assert by_day["2020-03-01"] == {"lab": {"50912//mg/dL": pytest.approx(1.1)}}
    stays = read_meds(
        src,
        prefix_to_modality={"LAB": "lab", "DIAGNOSIS": "diagnosis"},
        unknown_prefixes="drop",
        visit_id_column="hadm_id",
    )
    assert stays[0].visits[0].values == {"lab": {"50912//mg/dL": pytest.approx(1.0)}}


def test_preprocessing_keeps_the_values_of_kept_events():
    cohort = _cohort()
    kept = preprocess(cohort, Preprocessing(modalities=("lab",)))
    assert [v.values for v in kept[0].visits] == [
        {"lab": {"k": pytest.approx(4.1), "na": 139.0}},
        {},
    ]


def test_mimic_labs_keep_the_last_valuenum_of_the_visit(tmp_path):
    """Two creatinines in one admission (1.0, then 2.0, then one with no VALUENUM,
    in file order) keep 2.0; a LABEVENTS without a VALUENUM column gives no values."""
    from ehrgen.data.formats.mimic3 import read_mimic3
    from tests.data.test_mimic3 import write_mimic3

    labs = """\
ROW_ID,SUBJECT_ID,HADM_ID,ITEMID,CHARTTIME,VALUE,VALUENUM,VALUEUOM,FLAG
1,10,100,50912,2100-01-10 09:00:00,1.0,1.0,mg/dL,
2,10,100,50912,2100-01-10 12:00:00,2.0,2.0,mg/dL,
3,10,100,50912,2100-01-10 15:00:00,pending,,mg/dL,
"""
    cohort = read_mimic3(write_mimic3(tmp_path / "a", LABEVENTS=labs))
    assert cohort[0].visits[0].values == {"lab": {"ITEMID//50912": 2.0}}
    no_values = "\n".join(
        ",".join(f for i, f in enumerate(line.split(",")) if i != 6)
        for line in labs.splitlines()
    )
    cohort = read_mimic3(write_mimic3(tmp_path / "b", LABEVENTS=no_values + "\n"))
    assert cohort.event_values is None


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_omop_measurements_keep_their_values(tmp_path, file_format):
    """A demo cohort (labs with values) written as OMOP and read back by source
    value keeps every lab's value in ``measurement.value_as_number``."""
    from ehrgen.data.demo import demo_cohort
    from ehrgen.data.formats.omop import read_omop
    from ehrgen.data.formats.omop_writer import write_omop

    def lab_values(cohort, prefix=""):
        return sorted(
            (p.patient_id, v.time, code.removeprefix(prefix), round(value, 4))
            for p in cohort
            for v in p.visits
            for code, value in v.values.get("lab", {}).items()
        )

    cohort = demo_cohort(30, seed=0)
    write_omop(cohort, tmp_path / "cdm", file_format=file_format)
    back = read_omop(tmp_path / "cdm", code_source="source_value")
    assert len(lab_values(cohort)) > 50
    assert lab_values(back, "SOURCE//") == lab_values(cohort)
    units = {(m, c.removeprefix("SOURCE//")): u for (m, c), u in back.units().items()}
    assert units == cohort.units() and units[("lab", "Creatinine")] == "mg/dL"
