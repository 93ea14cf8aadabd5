"""The vocabulary and the population summary learned with DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data import Patient, Visit
from ehrgen.data.cohort import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.models.population import Population
from ehrgen.privacy.release import (
    _at_most_per_patient,
    private_population,
    private_vocabulary,
)
from ehrgen.privacy.statement import Budget


def _with_rare_code(cohort: Cohort) -> Cohort:
    """The cohort plus one patient holding a code no one else has."""
    first = cohort[0]
    events = {**first.visits[0].events, "diagnosis": ("RARE-ONLY-ONE",)}
    visit = Visit(events, first.visits[0].time)
    rare = Patient("rare", dict(first.static), (visit,))
    return Cohort.from_patients([*cohort, rare], cohort.schema)


def test_a_code_of_one_patient_is_dropped_at_small_epsilon():
    cohort = _with_rare_code(demo_cohort(300, seed=1))
    kept = 0
    for seed in range(20):
        tokenizer, part = private_vocabulary(
            cohort, Budget(1.0, 1e-4), 32, np.random.default_rng(seed)
        )
        kept += "RARE-ONLY-ONE" in tokenizer.codes["diagnosis"]
    assert kept == 0
    assert part.details["threshold_patients"] > 10


def test_common_codes_survive_and_infinite_epsilon_keeps_every_code():
    cohort = _with_rare_code(demo_cohort(300, seed=1))
    exact, _ = private_vocabulary(
        cohort, Budget(math.inf, 1e-4), 10**6, np.random.default_rng(0)
    )
    assert "RARE-ONLY-ONE" in exact.codes["diagnosis"]
    every = {m: set(c) for m, c in exact.codes.items()}
    noisy, _ = private_vocabulary(
        cohort, Budget(8.0, 1e-4), 32, np.random.default_rng(0)
    )
    # The most frequent codes of each modality (held by most patients) are kept.
    for modality, codes in noisy.codes.items():
        assert set(codes) <= every[modality]
    assert sum(len(c) for c in noisy.codes.values()) >= 10


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), max_size=200),
    st.integers(1, 6),
    st.integers(0, 2**32 - 1),
)
def test_each_patient_contributes_at_most_k_codes(pairs, limit, seed):
    pairs = sorted(set(pairs))
    patients = np.array([p for p, _ in pairs], np.int64)
    codes = np.array([c for _, c in pairs], np.int64)
    kept = _at_most_per_patient(codes, patients, limit, np.random.default_rng(seed))
    # every patient keeps min(limit, its codes) codes, all of them its own
    expected = sum(min(limit, int((patients == p).sum())) for p in set(patients))
    assert len(kept) == expected
    assert set(kept.tolist()) <= set(codes.tolist())


def test_population_is_close_at_large_epsilon_and_never_shows_an_outlier():
    cohort = demo_cohort(1000, seed=2)
    exact = Population.from_cohort(cohort)
    noisy, part = private_population(
        cohort, Budget(20.0, 0.0), {}, np.random.default_rng(0)
    )
    assert part.details["histograms"] >= len(cohort.schema.features) + 1
    for name, frequencies in exact.categorical.items():
        for category, share in frequencies.items():
            assert noisy.categorical[name][category] == pytest.approx(share, abs=0.03)
    ages, noisy_ages = (
        np.array(exact.numerical["age"]),
        np.array(noisy.numerical["age"]),
    )
    assert np.abs(np.median(ages) - np.median(noisy_ages)) < 5
    assert noisy.max_visits is not None and noisy.max_visits >= 2
    assert noisy.first_time is not None and set(noisy.gaps) <= {"1", "2", "3"}


def test_one_patient_with_an_extreme_age_barely_moves_the_summary():
    base = demo_cohort(400, seed=3)
    patients = list(base)
    outlier = patients[0]
    patients[0] = Patient(outlier.patient_id, {**outlier.static, "age": 119.0},
                          outlier.visits)  # fmt: skip
    cohort = Cohort.from_patients(patients, base.schema)
    budget = Budget(1.0, 0.0)
    # The same noise draws, with and without the outlier.
    with_it, _ = private_population(cohort, budget, {}, np.random.default_rng(0))
    without, _ = private_population(base, budget, {}, np.random.default_rng(0))
    top = np.array(with_it.numerical["age"][-5:]) - np.array(
        without.numerical["age"][-5:]
    )
    assert np.abs(top).max() < 2.0
    assert max(with_it.numerical["age"]) < 119
