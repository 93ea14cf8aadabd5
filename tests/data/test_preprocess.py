"""Tests of the shared preprocessing options."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.preprocess import (
    PAPER_TOP_K,
    Preprocessing,
    icd9_category,
    preprocess,
)
from ehrgen.errors import ConfigError
from tests.strategies import cohorts

T0 = datetime(2020, 1, 1)


def _visit(day: int, **events: list[str]) -> Visit:
    return Visit(events, T0 + timedelta(days=day))


def _cohort() -> Cohort:
    """Four patients; ICD9CM//4019 is in 3 visits, 25000 in 2, the rest in 1."""
    return Cohort.from_patients(
        [
            Patient(
                "a",
                {"gender": "F", "age": 60.0},
                (
                    _visit(0, diagnosis=["ICD9CM//4019", "ICD9CM//4011"], lab=["K"]),
                    _visit(
                        5, diagnosis=["ICD9CM//25000"], procedure=["ICD9PROC//3722"]
                    ),
                ),
            ),
            Patient(
                "b",
                {"gender": "M"},
                (
                    _visit(0, diagnosis=["ICD9CM//4019", "ICD9CM//25000"]),
                    _visit(1, diagnosis=["ICD9CM//E8889"], lab=["K", "NA"]),
                    _visit(2, procedure=["ICD9PROC//3723"]),
                ),
            ),
            Patient("c", {"age": 30.0}, (_visit(0, diagnosis=["ICD9CM//4019"]),)),
            Patient("d", {}, (_visit(0, lab=["NA"]),)),
        ],
        labels={"mortality": [1.0, 0.0, 1.0, 0.0]},
    )


def _codes(cohort: Cohort, modality: str) -> list[tuple[str, ...]]:
    return [v.codes(modality) for p in cohort for v in p.visits]


def test_no_options_keep_the_cohort_equal():
    """Check that default options return an equal cohort and say nothing dropped."""
    cohort = _cohort()
    result = preprocess(cohort, Preprocessing())
    assert result == cohort
    report = result.metadata["preprocessing"]
    assert report["before"] == report["after"]
    assert report["dropped"] == {
        "modalities": {},
        "visits_left_empty": 0,
        "patients_left_without_visits": 0,
        "patients_below_min_visits": 0,
        "visits_of_dropped_patients": 0,
    }
    json.dumps(report)


@settings(max_examples=20, deadline=None)
@given(cohort=cohorts())
def test_no_options_round_trip(cohort):
    """Check that preprocess with no-op options returns an equal cohort."""
    assert preprocess(cohort, Preprocessing()) == cohort


def test_min_code_count_drops_rare_codes_then_empty_visits_and_patients():
    """Check min_code_count=2: codes seen once go, and so do the visits and the
    patient they leave empty; static values and labels follow their patients."""
    result = preprocess(_cohort(), Preprocessing(min_code_count=2))
    assert [p.patient_id for p in result] == ["a", "b", "c", "d"]
    assert _codes(result, "diagnosis") == [
        ("ICD9CM//4019",),
        ("ICD9CM//25000",),
        ("ICD9CM//4019", "ICD9CM//25000"),
        (),
        ("ICD9CM//4019",),
        (),
    ]
    assert _codes(result, "procedure") == [()] * 6
    dropped = result.metadata["preprocessing"]["dropped"]
    assert dropped["modalities"]["diagnosis"] == {"rare_events": 2, "rare_codes": 2}
    assert dropped["modalities"]["procedure"] == {"rare_events": 2, "rare_codes": 2}
    assert dropped["visits_left_empty"] == 1
    result = preprocess(_cohort(), Preprocessing(min_code_count=3))
    assert [p.patient_id for p in result] == ["a", "b", "c"]
    assert result.labels["mortality"].tolist() == [1.0, 0.0, 1.0]
    assert result[0].static == {"gender": "F", "age": 60.0}
    assert (
        result.metadata["preprocessing"]["dropped"]["patients_left_without_visits"] == 1
    )


def test_top_k_per_modality_breaks_ties_by_code():
    """Check top_k_codes as an int and as a mapping; ties go to the smaller code."""
    result = preprocess(_cohort(), Preprocessing(top_k_codes=1))
    assert set(np.unique(result.code_values).tolist()) == {
        "ICD9CM//4019",
        "ICD9PROC//3722",
        "K",
    }
    result = preprocess(_cohort(), Preprocessing(top_k_codes={"diagnosis": 2}))
    vocabulary = result.stats().vocabulary
    assert vocabulary == {"diagnosis": 2, "procedure": 2, "lab": 2}
    assert result.metadata["preprocessing"]["dropped"]["modalities"] == {
        "diagnosis": {"top_k_events": 2, "top_k_codes": 2}
    }


def test_modalities_keep_order_and_unknown_ones_are_errors():
    """Check that modalities keep the schema's order, and a typo is a ConfigError."""
    result = preprocess(_cohort(), Preprocessing(modalities=("lab", "diagnosis")))
    assert result.schema.modalities == ("diagnosis", "lab")
    assert [p.patient_id for p in result] == ["a", "b", "c", "d"]
    assert len(result[1].visits) == 2  # the procedure-only visit is gone
    removed = result.metadata["preprocessing"]["dropped"]["modalities"]
    assert removed["procedure"] == {"modality_removed_events": 2}
    with pytest.raises(ConfigError, match="Did you mean 'diagnosis'"):
        preprocess(_cohort(), Preprocessing(modalities=("diagnoses",)))


def test_min_visits_counts_visits_after_code_filtering():
    """Check min_visits=2 after the lab modality is removed."""
    options = Preprocessing(modalities=("diagnosis",), min_visits=2)
    result = preprocess(_cohort(), options)
    assert [p.patient_id for p in result] == ["a", "b"]
    dropped = result.metadata["preprocessing"]["dropped"]
    assert dropped["patients_below_min_visits"] == 1
    assert dropped["patients_left_without_visits"] == 1


def test_icd9_3digit_merges_codes_within_a_visit():
    """Check that 4019 and 4011 merge into 401 once in the visit, E codes keep four
    characters and procedures two digits."""
    result = preprocess(_cohort(), Preprocessing(icd9_3digit=True))
    assert _codes(result, "diagnosis") == [
        ("ICD9CM//401",),
        ("ICD9CM//250",),
        ("ICD9CM//401", "ICD9CM//250"),
        ("ICD9CM//E888",),
        (),
        ("ICD9CM//401",),
        (),
    ]
    assert _codes(result, "procedure")[1] == ("ICD9PROC//37",)
    dropped = result.metadata["preprocessing"]["dropped"]["modalities"]
    assert dropped["diagnosis"] == {
        "merged_by_icd9_3digit_events": 1,
        "merged_by_icd9_3digit_codes": 1,
    }
    assert dropped["procedure"] == {"merged_by_icd9_3digit_codes": 1}


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("ICD9CM//4019", "ICD9CM//401"),
        ("ICD9CM//0389", "ICD9CM//038"),
        ("ICD9CM//V5861", "ICD9CM//V58"),
        ("ICD9CM//E8889", "ICD9CM//E888"),
        ("ICD9CM//401.9", "ICD9CM//401"),
        ("ICD9PROC//3722", "ICD9PROC//37"),
        ("ICD9PROC//37.22", "ICD9PROC//37"),
        ("ICD10CM//I10", "ICD10CM//I10"),
        ("ICD10PCS//0DTJ4ZZ", "ICD10PCS//0DTJ4ZZ"),
        ("4019", "4019"),
        ("ASPIRIN", "ASPIRIN"),
    ],
)
def test_icd9_category(code, category):
    """Check hand-picked ICD-9 categories; other codes are left alone."""
    assert icd9_category(code) == category


@given(
    system=st.sampled_from(["ICD9CM", "ICD9PROC"]),
    value=st.from_regex(r"[EV0-9][0-9]{1,4}", fullmatch=True),
)
def test_icd9_category_is_an_idempotent_prefix(system, value):
    """Check that a category keeps the system, is a prefix of the code, and maps to
    itself."""
    code = f"{system}//{value}"
    category = icd9_category(code)
    assert category.startswith(f"{system}//")
    assert code.startswith(category)
    assert icd9_category(category) == category


@settings(max_examples=20, deadline=None)
@given(cohort=cohorts(), k=st.integers(1, 3), min_count=st.integers(1, 3))
def test_results_keep_the_cohort_invariants(cohort, k, min_count):
    """Check that any options give codes unique in each visit, no empty visit, at
    most k codes per modality, and a JSON-ready report."""
    options = Preprocessing(top_k_codes=k, min_code_count=min_count, icd9_3digit=True)
    result = preprocess(cohort, options)
    assert all(v.n_codes > 0 for p in result for v in p.visits)
    for p in result:
        for v in p.visits:
            for codes in v.events.values():
                assert len(set(codes)) == len(codes)
    assert all(n <= k for n in result.stats().vocabulary.values())
    if len(result):
        assert Cohort.from_patients(list(result), result.schema) == result
    json.dumps(result.metadata["preprocessing"])


def test_options_are_validated_and_round_trip():
    """Check ConfigErrors for bad values and to_dict / from_dict round trips."""
    options = Preprocessing(
        modalities=["diagnosis", "lab"], top_k_codes={"lab": 5}, min_visits=2
    )
    assert options.modalities == ("diagnosis", "lab")
    assert Preprocessing.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert Preprocessing.paper().top_k_codes == PAPER_TOP_K
    assert Preprocessing().is_noop and not options.is_noop
    with pytest.raises(ConfigError, match="'min_visits' parameter .* Got 0"):
        Preprocessing(min_visits=0)
    with pytest.raises(ConfigError, match="'top_k_codes'"):
        Preprocessing(top_k_codes={"lab": -1})
    with pytest.raises(ConfigError, match="'modalities'"):
        Preprocessing(modalities="diagnosis")
    with pytest.raises(ConfigError, match="Did you mean 'min_visits'"):
        Preprocessing.from_dict({"min_visit": 2})
    with pytest.raises(ConfigError, match="must be a Preprocessing"):
        preprocess(_cohort(), {"min_visits": 2})
