"""Tests of the data model: visits, patients, schema, cohort."""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings

from ehrgen.data import Cohort, CohortBuilder, CohortSchema, Patient, Visit
from ehrgen.errors import SchemaError
from tests.strategies import SCHEMA, cohorts


def _patients() -> list[Patient]:
    return [
        Patient(
            "a",
            {"gender": "F", "age": 70.5},
            (
                Visit({"diagnosis": ["4019", "25000", "4019"]}, datetime(2020, 1, 1)),
                Visit({"drug": ["C09A"], "lab": ["HbA1c"]}, datetime(2020, 3, 1)),
            ),
        ),
        Patient(
            "b",
            {"gender": "M"},
            (Visit({"procedure": ["3722"]}, datetime(2021, 1, 1)),),
        ),
        Patient(
            "c", {"age": 3.0}, (Visit({"diagnosis": ["4660"]}, datetime(2019, 5, 5)),)
        ),
    ]


def test_visit_deduplicates_codes_and_drops_empty_modalities():
    """Check that a visit keeps each code once, in order, and no empty modality."""
    visit = Visit({"diagnosis": ["b", "a", "b"], "drug": []})
    assert visit.events == {"diagnosis": ("b", "a")}
    assert visit == Visit({"diagnosis": ("b", "a")})
    assert visit.n_codes == 2


def test_visit_rejects_a_bare_string():
    """Check that a single string given as codes is refused, not split into letters."""
    with pytest.raises(SchemaError, match="not one string"):
        Visit({"diagnosis": "4019"})


def test_cohort_gives_back_its_patients():
    """Check that patients come back from the columnar store as they went in."""
    patients = _patients()
    cohort = Cohort.from_patients(patients)
    assert len(cohort) == 3 and cohort.n_visits == 4 and cohort.n_events == 6
    assert list(cohort) == patients
    assert cohort[-1] == patients[-1]
    assert cohort.patient("b") == patients[1]


@settings(max_examples=40, deadline=None)
@given(cohorts())
def test_from_patients_round_trip(cohort):
    """Check that rebuilding a cohort from its own patients gives an equal cohort."""
    assert Cohort.from_patients(list(cohort), SCHEMA) == cohort


def test_schema_inference_and_dict_round_trip():
    """Check that the schema is inferred from the patients and survives to_dict."""
    schema = CohortSchema.infer(_patients())
    assert schema.categorical == {"gender": ("F", "M")}
    assert schema.numerical == ("age",)
    assert schema.modalities == ("diagnosis", "procedure", "drug", "lab")
    assert CohortSchema.from_dict(schema.to_dict()) == schema


def test_schema_from_dict_rejects_unknown_keys_with_a_hint():
    """Check that a typo in a schema key is named with a suggestion."""
    with pytest.raises(SchemaError, match="Did you mean 'modalities'"):
        CohortSchema.from_dict({"modalitis": ["diagnosis"]})


def test_select_and_split_partition_the_patients():
    """Check that split is a seeded partition by patient with the asked sizes."""
    cohort = Cohort.from_patients(
        [Patient(str(i), {}, (Visit({"diagnosis": [f"d{i}"]}),)) for i in range(10)]
    )
    a, b, c = cohort.split([0.5, 0.3, 0.2], seed=3)
    assert (len(a), len(b), len(c)) == (5, 3, 2)
    ids = [p.patient_id for part in (a, b, c) for p in part]
    assert sorted(ids) == sorted(str(i) for i in range(10))
    assert [list(x.patient_ids) for x in cohort.split([0.5, 0.3, 0.2], seed=3)] == [
        list(x.patient_ids) for x in (a, b, c)
    ]
    assert cohort.split([0.5, 0.5], seed=1)[0] != cohort.split([0.5, 0.5], seed=2)[0]
    assert cohort[[3, 1]][0] == cohort[3]
    with pytest.raises(SchemaError, match="must add up to 1"):
        cohort.split([0.5, 0.4])


def test_stats_counts_and_distributions():
    """Check that stats reports counts, vocabularies and per-modality distributions."""
    stats = Cohort.from_patients(_patients()).stats()
    assert (stats.n_patients, stats.n_visits, stats.n_events) == (3, 4, 6)
    assert stats.vocabulary == {"diagnosis": 3, "procedure": 1, "drug": 1, "lab": 1}
    assert stats.visits_per_patient.max == 2 and stats.visits_per_patient.mean == 4 / 3
    assert stats.codes_per_visit["diagnosis"].max == 2
    assert stats.visits_with_modality["diagnosis"] == 0.5
    assert stats.categorical["gender"] == {"F": 1, "M": 1, "<missing>": 1}
    assert stats.numerical["age"].min == 3.0
    assert stats.to_dict()["visits_per_patient"]["max"] == 2


def test_patients_without_visits_are_dropped_with_one_warning(caplog):
    """Check that empty visits and patients are dropped and counted in one warning."""
    patients = [*_patients(), Patient("empty", {}, (Visit({"drug": []}),))]
    with caplog.at_level(logging.WARNING):
        cohort = Cohort.from_patients(patients)
    assert len(cohort) == 3
    assert len(caplog.records) == 1
    assert "1 visit(s) with no code and 1 patient(s) with no visit" in caplog.text


def test_missing_times_become_placeholders():
    """Check that a cohort without times keeps order with flagged placeholder times."""
    cohort = Cohort.from_patients(
        [Patient("x", {}, (Visit({"diagnosis": ["a"]}), Visit({"diagnosis": ["b"]})))]
    )
    assert cohort.times_are_placeholders
    assert np.all(np.diff(cohort.visit_times) > np.timedelta64(0))
    assert all(v.time is None for v in cohort[0].visits)


@pytest.mark.parametrize(
    ("patient", "message"),
    [
        (
            Patient(
                "p1",
                {},
                (
                    Visit({"diagnosis": ["a"]}, datetime(2020, 1, 2)),
                    Visit({"diagnosis": ["b"]}, datetime(2020, 1, 1)),
                ),
            ),
            r"patient 'p1', field 'time': visit times must strictly increase",
        ),
        (
            Patient("p2", {"gender": "X"}, (Visit({"diagnosis": ["a"]}),)),
            r"patient 'p2', field 'gender': unknown category 'X'",
        ),
        (
            Patient("p3", {"height": 1.0}, (Visit({"diagnosis": ["a"]}),)),
            r"patient 'p3', field 'height': not a feature",
        ),
        (
            Patient("p4", {}, (Visit({"imaging": ["a"]}),)),
            r"patient 'p4', field 'modality': unknown modality 'imaging'",
        ),
        (
            Patient("p5", {"age": "old"}, (Visit({"diagnosis": ["a"]}),)),
            r"patient 'p5', field 'age': expected a number",
        ),
    ],
)
def test_builder_errors_name_patient_and_field(patient, message):
    """Check that invalid patients are refused with the patient and field named."""
    schema = CohortSchema(categorical={"gender": ("F", "M")}, numerical=("age",))
    with pytest.raises(SchemaError, match=message):
        Cohort.from_patients([patient], schema)


def test_builder_rejects_duplicate_ids_and_mixed_times():
    """Check that duplicate patient ids and partly timed cohorts are refused."""
    builder = CohortBuilder(CohortSchema(), source="unit")
    builder.add("1", {}, [(None, {"diagnosis": ["a"]})])
    with pytest.raises(SchemaError, match="unit: patient '1': duplicate patient id"):
        builder.add("1", {}, [(None, {"diagnosis": ["a"]})])
    builder.add("2", {}, [(datetime(2020, 1, 1), {"diagnosis": ["a"]})])
    with pytest.raises(SchemaError, match="some visits have times and others do not"):
        builder.build()


def test_replace_changes_only_what_it_is_given():
    """Check that Cohort.replace shares the other arrays, checks the new ones, and
    names an unknown field."""
    from ehrgen.data.demo import demo_cohort

    cohort = demo_cohort(10, seed=0)
    values = np.zeros(cohort.n_events, np.float32)
    replaced = cohort.replace(event_values=values)
    assert replaced.event_codes is cohort.event_codes
    np.testing.assert_array_equal(replaced.event_values, values)
    assert replaced.replace(event_values=None).event_values is None
    with pytest.raises(SchemaError, match="event_values"):
        cohort.replace(event_values=values[:-1])
    with pytest.raises(TypeError, match="'event_value'"):
        cohort.replace(event_value=values)
