"""Tests of the demo simulator: determinism, hard constraints and known structure."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort, demo_schema, demo_truth
from ehrgen.errors import ConfigError

TRUTH = demo_truth()
CODE_FORMAT = {
    "diagnosis": re.compile(r"^ICD9CM//(\d{3,5}|V\d{2,4}|E\d{3,4})$"),
    "procedure": re.compile(r"^ICD9PROC//\d{2,4}$"),
    "drug": re.compile(r"^ATC//[A-Z]\d{2}[A-Z]{1,2}$"),
    "lab": re.compile(r"^[A-Za-z0-9%][^/]*$"),
}


@pytest.fixture(scope="module")
def big() -> Cohort:
    return demo_cohort(10_000, seed=0)


def has_code(cohort: Cohort, code: str) -> np.ndarray:
    """(V,) whether each visit holds ``code``."""
    out = np.zeros(cohort.n_visits, dtype=bool)
    hits = np.flatnonzero(cohort.code_values == code)
    if hits.size:
        out[cohort.event_visit[np.isin(cohort.event_codes, hits)]] = True
    return out


def ever(cohort: Cohort, codes: tuple[str, ...]) -> np.ndarray:
    """(P,) whether each patient has any of ``codes`` at some visit."""
    visits = np.zeros(cohort.n_visits, dtype=bool)
    for code in codes:
        visits |= has_code(cohort, code)
    out = np.zeros(len(cohort), dtype=bool)
    out[cohort.visit_patient[visits]] = True
    return out


def visit_rank(cohort: Cohort) -> np.ndarray:
    """(V,) the index of each visit within its patient's visits."""
    return np.arange(cohort.n_visits) - cohort.visit_offsets[cohort.visit_patient]


def age_at_visit(cohort: Cohort) -> np.ndarray:
    """(V,) age at each visit, years: age at the first visit plus time elapsed."""
    first = cohort.visit_times[cohort.visit_offsets[:-1]][cohort.visit_patient]
    elapsed = (cohort.visit_times - first) / np.timedelta64(1, "m")
    return cohort.static["age"][cohort.visit_patient] + elapsed / (365.25 * 24 * 60)


def test_same_seed_gives_equal_cohorts() -> None:
    """Check that a seed fixes the cohort and another seed changes it."""
    assert demo_cohort(150, seed=3) == demo_cohort(150, seed=3)
    assert demo_cohort(150, seed=3) != demo_cohort(150, seed=4)


def test_size_schema_and_metadata() -> None:
    """Check that the cohort has the requested patients, the schema and metadata."""
    cohort = demo_cohort(40, seed=1)
    assert len(cohort) == 40
    assert list(cohort.patient_ids) == [str(i) for i in range(40)]
    assert cohort.schema == demo_schema()
    assert cohort.schema.categorical["gender"] == ("F", "M")
    assert cohort.schema.numerical == ("age",)
    assert cohort.metadata["source"] == "ehrgen demo simulator"
    assert (cohort.metadata["seed"], cohort.metadata["n_patients"]) == (1, 40)


def test_ten_thousand_patients(big: Cohort) -> None:
    """Check that 10,000 patients are simulated (speed: bench/data_bench.py)."""
    assert len(big) == 10_000
    assert len(set(big.patient_ids.tolist())) == 10_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_patients": 0}, r"'n_patients' parameter of demo_cohort must be .* Got 0"),
        ({"n_patients": -3}, r"'n_patients' parameter .* Got -3 instead"),
        ({"n_patients": 2.5}, r"'n_patients' parameter .* Got 2.5 instead"),
        ({"n_patients": True}, r"'n_patients' parameter .* Got True instead"),
        ({"seed": -1}, r"'seed' parameter of demo_cohort must be .* Got -1 instead"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, match: str) -> None:
    """Check that a bad n_patients or seed raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=match):
        demo_cohort(**kwargs)


def test_gender_specific_codes_stay_in_their_gender(big: Cohort) -> None:
    """Check that no gender-specific code ever appears in the other gender."""
    assert set(TRUTH.gender_specific_codes.values()) == {"F", "M"}
    gender = np.array(big.schema.categorical["gender"])[big.static["gender"]]
    seen = 0
    for code, allowed in TRUTH.gender_specific_codes.items():
        patients = big.visit_patient[has_code(big, code)]
        seen += patients.size > 0
        assert set(gender[patients]) <= {allowed}, code
    assert seen >= 0.8 * len(TRUTH.gender_specific_codes)


def test_age_restricted_codes_respect_their_range(big: Cohort) -> None:
    """Check that age-restricted codes appear only at visits in their age range."""
    age = age_at_visit(big)
    seen = 0
    for code, (lo, hi) in TRUTH.age_restricted_codes.items():
        ages = age[has_code(big, code)]
        seen += ages.size > 0
        assert (ages >= lo - 1e-3).all() and (ages < hi + 1e-3).all(), code
    assert seen >= 0.8 * len(TRUTH.age_restricted_codes)


@pytest.mark.parametrize(
    ("diagnosis", "code"),
    [
        ("ICD9CM//25000", "ATC//A10B"),
        ("ICD9CM//25000", "HbA1c"),
        ("ICD9CM//4280", "ATC//C03C"),
        ("ICD9CM//41071", "Troponin I"),
        ("ICD9CM//41071", "ICD9PROC//0066"),
        ("ICD9CM//2449", "TSH"),
    ],
)
def test_codes_follow_the_diagnosis_of_their_condition(
    big: Cohort, diagnosis: str, code: str
) -> None:
    """Check that a condition's drug, lab or procedure is far likelier with its
    diagnosis in the same visit than without."""
    dx, other = has_code(big, diagnosis), has_code(big, code)
    with_dx, without_dx = other[dx].mean(), other[~dx].mean()
    assert with_dx > 0.3
    assert with_dx > 5 * without_dx


def test_treats_agrees_with_the_cohort(big: Cohort) -> None:
    """Check that each drug of the truth's treats table is likelier with one of its
    diagnoses in the visit than without."""
    assert TRUTH.treats["ATC//A10B"] == ("ICD9CM//25000",)
    noise = set(TRUTH.noise_codes["drug"])
    for drug, diagnoses in TRUTH.treats.items():
        dx = np.zeros(big.n_visits, dtype=bool)
        for code in diagnoses:
            dx |= has_code(big, code)
        given = has_code(big, drug)
        assert given[dx].mean() > (1.5 if drug in noise else 3) * given[~dx].mean()


def later_share(cohort: Cohort, code: str) -> float:
    """The share of visits after a patient's first visit with ``code`` that hold it."""
    has = has_code(cohort, code)
    rank = visit_rank(cohort)
    first = np.full(len(cohort), np.iinfo(np.int64).max)
    np.minimum.at(first, cohort.visit_patient[has], rank[has])
    later = rank > first[cohort.visit_patient]
    return float(has[later].mean())


def test_chronic_diagnoses_persist_and_acute_ones_do_not(big: Cohort) -> None:
    """Check that a chronic diagnosis recurs in most later visits, an acute one
    rarely."""
    for condition in TRUTH.conditions.values():
        code, p = max(condition.codes["diagnosis"].items(), key=lambda kv: kv[1])
        if condition.stages or p < 0.8:
            continue
        share = later_share(big, code)
        if condition.chronic:
            assert share > 0.7, condition.name
        else:
            assert share < 0.3, condition.name


def test_staged_conditions_progress_and_never_regress(big: Cohort) -> None:
    """Check that CKD moves from stage 3 to later stages, never back."""
    stage3, stage4, stage5 = TRUTH.conditions["ckd"].stages
    rank = visit_rank(big)
    patient = big.visit_patient
    for early, late in ((stage3, stage4), (stage4, stage5), (stage3, stage5)):
        first_late = np.full(len(big), np.iinfo(np.int64).max)
        has_late = has_code(big, late)
        np.minimum.at(first_late, patient[has_late], rank[has_late])
        early_after = has_code(big, early) & (rank > first_late[patient])
        assert not early_after.any(), (early, late)
    progressed = ever(big, (stage3,)) & ever(big, (stage4,))
    assert progressed.sum() >= 20


def test_visit_counts_have_a_long_tail(big: Cohort) -> None:
    """Check that visits per patient lie in [1, cap] with a mean of 2.5-4 and a long
    tail."""
    counts = np.diff(big.visit_offsets)
    assert counts.min() == 1 and counts.max() <= TRUTH.max_visits
    assert 2.5 <= counts.mean() <= 4.0
    assert counts.max() >= 4 * np.median(counts)
    assert (counts == 1).mean() > 0.2


def test_visit_times_are_real_and_increasing(big: Cohort) -> None:
    """Check that visit times strictly increase within a patient, start in 2010-2020
    in whole minutes, and have gaps of days to years."""
    assert not big.times_are_placeholders
    times = big.visit_times
    assert (times.astype("datetime64[m]") == times).all()
    first_years = times[big.visit_offsets[:-1]].astype("datetime64[Y]").astype(int)
    assert ((first_years + 1970 >= 2010) & (first_years + 1970 <= 2020)).all()
    same_patient = np.diff(big.visit_patient) == 0
    gaps_days = np.diff(times)[same_patient] / np.timedelta64(1, "D")
    assert (gaps_days >= 1).all()
    assert 7 < np.median(gaps_days) < 365
    assert gaps_days.max() > 365
    assert big[0].visits[0].time is not None


def test_all_modalities_present_and_codes_well_formed(big: Cohort) -> None:
    """Check that every modality is used and every code follows the convention of
    its modality and comes from the truth's vocabulary."""
    stats = big.stats()
    assert all(n > 5 for n in stats.vocabulary.values())
    assert all(share > 0.2 for share in stats.visits_with_modality.values())
    vocabulary = TRUTH.vocabulary
    for value, m in zip(big.code_values, big.code_modality, strict=True):
        modality = big.schema.modalities[m]
        assert CODE_FORMAT[modality].match(value), (modality, value)
        assert value in vocabulary[modality]


def test_every_condition_shows_in_the_cohort(big: Cohort) -> None:
    """Check that every condition of the truth leaves its diagnosis in some
    patients."""
    for condition in TRUTH.conditions.values():
        assert ever(big, condition.diagnosis_codes).sum() >= 10, condition.name


def test_prevalence_follows_age_as_the_truth_says(big: Cohort) -> None:
    """Check that dementia is far commoner in the very old, conditions whose risk
    grows with age are commoner in the old, and childhood ones occur in children."""
    age = big.static["age"]
    dementia = ever(big, TRUTH.conditions["dementia"].diagnosis_codes)
    assert dementia[age >= 80].mean() > 4 * dementia[(age >= 60) & (age < 70)].mean()
    assert dementia[age < 40].sum() == 0
    old, young = age >= 65, (age >= 18) & (age < 50)
    checked = 0
    for condition in TRUTH.conditions.values():
        if condition.per_decade >= 1.6 and condition.ages == (0.0, math.inf):
            rate = ever(big, condition.diagnosis_codes)
            assert rate[old].mean() > 2.5 * rate[young].mean(), condition.name
            checked += 1
    assert checked >= 10
    otitis = ever(big, TRUTH.conditions["otitis_media"].diagnosis_codes)
    assert otitis[age < 12].mean() > 0.05
    assert otitis[age >= 12].sum() == 0


@pytest.mark.parametrize(
    ("cause", "effect"),
    [
        ("type2_diabetes", "ckd"),
        ("obesity", "type2_diabetes"),
        ("cad", "myocardial_infarction"),
    ],
)
def test_comorbidity_raises_risk(big: Cohort, cause: str, effect: str) -> None:
    """Check that a condition the truth says raises another's risk does so, within
    one age band."""
    assert cause in TRUTH.conditions[effect].raised_by
    band = (big.static["age"] >= 50) & (big.static["age"] < 75)
    has_cause = ever(big, TRUTH.conditions[cause].diagnosis_codes)
    has_effect = ever(big, TRUTH.conditions[effect].diagnosis_codes)
    with_cause, without = has_effect[band & has_cause], has_effect[band & ~has_cause]
    assert with_cause.mean() > 2 * without.mean()


def test_prevalence_follows_gender_as_the_truth_says(big: Cohort) -> None:
    """Check that each condition with a strong gender effect is commoner in the
    gender the truth favours."""
    male = big.static["gender"] == big.schema.categorical["gender"].index("M")
    checked = 0
    for condition in TRUTH.conditions.values():
        if condition.gender is not None or 0.5 < condition.male_or < 2.0:
            continue
        rate = ever(big, condition.diagnosis_codes)
        ratio = rate[male].mean() / rate[~male].mean()
        assert (ratio > 1.3) if condition.male_or >= 2.0 else (ratio < 0.77), (
            condition.name
        )
        checked += 1
    assert checked >= 4


def test_truth_tables_are_consistent() -> None:
    """Check that the truth has 15-25 chronic conditions, valid probabilities, and
    comorbidities that only name earlier chronic conditions."""
    chronic = [c.name for c in TRUTH.conditions.values() if c.chronic]
    assert 15 <= len(chronic) <= 25
    for name, condition in TRUTH.conditions.items():
        earlier = chronic[: chronic.index(name)] if condition.chronic else chronic
        assert set(condition.raised_by) <= set(earlier), name
        assert 0 < condition.base < 1
        for table in condition.codes.values():
            assert all(0 < p <= 1 for p in table.values())
        assert set(condition.stages) <= set(condition.diagnosis_codes)
    assert set(TRUTH.chronic_codes).isdisjoint(TRUTH.acute_codes)
    assert demo_truth() == TRUTH


def _lab_value_by_visit(cohort: Cohort, lab: str) -> np.ndarray:
    """(V,) the value of ``lab`` at each visit, NaN where it was not measured."""
    out = np.full(cohort.n_visits, np.nan)
    is_lab = cohort.code_values[cohort.event_codes] == lab
    out[cohort.event_visit[is_lab]] = cohort.event_values[is_lab]
    return out


def test_every_lab_has_a_value_and_only_labs_do(big: Cohort) -> None:
    is_lab = cohort_modality(big) == "lab"
    assert np.isfinite(big.event_values[is_lab]).all()
    assert np.isnan(big.event_values[~is_lab]).all()
    assert set(TRUTH.lab_values) == set(TRUTH.vocabulary["lab"])


@pytest.mark.parametrize(
    "lab, condition_codes, at_least",
    [
        ("Creatinine", ("ICD9CM//5853", "ICD9CM//5854", "ICD9CM//5855"), 1.0),
        ("Glucose", ("ICD9CM//25000",), 40.0),
        ("White Blood Cells", ("ICD9CM//486", "ICD9CM//0389"), 4.0),
    ],
)
def test_lab_values_follow_the_conditions(big, lab, condition_codes, at_least) -> None:
    """Mean creatinine is higher with a CKD code, glucose with diabetes, white cells
    with pneumonia or sepsis, by most of the truth's shift."""
    values = _lab_value_by_visit(big, lab)
    sick = np.zeros(big.n_visits, dtype=bool)
    for code in condition_codes:
        sick |= has_code(big, code)
    measured = np.isfinite(values)
    difference = values[measured & sick].mean() - values[measured & ~sick].mean()
    assert difference > at_least, difference


def test_ckd_stage_raises_creatinine_step_by_step(big: Cohort) -> None:
    values = _lab_value_by_visit(big, "Creatinine")
    means = [np.nanmean(values[has_code(big, f"ICD9CM//585{s}")]) for s in (3, 4, 5)]
    assert means[0] < means[1] < means[2], means
    table = TRUTH.lab_values["Creatinine"]
    assert means[2] == pytest.approx(table.expected({"ckd": 2}), rel=0.15)


def test_acute_events_bring_the_next_visit_sooner(big: Cohort) -> None:
    acute = np.zeros(big.n_visits, dtype=bool)
    for code in TRUTH.acute_codes:
        acute |= has_code(big, code)
    last = np.zeros(big.n_visits, dtype=bool)
    last[big.visit_offsets[1:] - 1] = True
    gaps = np.diff(big.visit_times).astype("timedelta64[m]").astype(float) / 1440
    after_acute = np.median(gaps[(acute & ~last)[:-1]])
    after_other = np.median(gaps[(~acute & ~last)[:-1]])
    assert after_acute < 0.5 * after_other, (after_acute, after_other)


def cohort_modality(cohort: Cohort) -> np.ndarray:
    """(E,) each event's modality name."""
    names = np.array(cohort.schema.modalities, dtype=object)
    return names[cohort.event_modality]
