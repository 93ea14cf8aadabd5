"""The model of visit gaps and lab values: bins, fitting, sampling, persistence, and
the simulator's relations reproduced by a trained model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort, demo_truth
from ehrgen.errors import ConfigError
from ehrgen.models.time_values import (
    QuantileBins,
    TimeValueConfig,
    TimeValueModel,
    fit_time_values,
)
from ehrgen.models.time_values.bins import bin_levels

CKD = ("ICD9CM//5853", "ICD9CM//5854", "ICD9CM//5855")


@pytest.fixture(scope="module")
def cohorts() -> tuple[Cohort, Cohort]:
    return demo_cohort(2000, seed=0), demo_cohort(800, seed=1)


@pytest.fixture(scope="module")
def model(cohorts) -> TimeValueModel:
    fitted = fit_time_values(cohorts[0])
    assert fitted is not None
    return fitted


def _stripped(cohort: Cohort) -> Cohort:
    """The cohort's codes alone: placeholder-free times one day apart, no values."""
    days = np.arange(cohort.n_visits).astype("timedelta64[D]")
    return cohort.replace(
        event_values=None, visit_times=np.datetime64("2100-01-01") + days
    )


def _gaps(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """(gap in days before each later visit, whether the visit before it had an
    acute-event code)."""
    days = cohort.visit_times.astype("datetime64[s]").astype(np.int64) / 86400
    later = np.diff(cohort.visit_patient) == 0
    codes = cohort.code_values[cohort.event_codes]
    acute = np.zeros(cohort.n_visits, bool)
    acute[cohort.event_visit[np.isin(codes, demo_truth().acute_codes)]] = True
    return np.diff(days)[later], acute[:-1][later]


def _creatinine_difference(cohort: Cohort) -> float:
    """Mean creatinine at visits with a CKD code minus at other visits."""
    codes = cohort.code_values[cohort.event_codes]
    events = np.flatnonzero(codes == "Creatinine")
    ckd = np.zeros(cohort.n_visits, bool)
    ckd[cohort.event_visit[np.isin(codes, CKD)]] = True
    at_ckd = ckd[cohort.event_visit[events]]
    values = cohort.event_values[events]
    return float(np.nanmean(values[at_ckd]) - np.nanmean(values[~at_ckd]))


# --------------------------------------------------------------------------- bins


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
    st.integers(2, 12),
    st.booleans(),
    st.floats(0, 0.999),
)
def test_a_number_drawn_in_a_bin_falls_back_in_that_bin(values, n_bins, tails, u):
    bins = QuantileBins.fit(np.array(values), bin_levels(n_bins, tails))
    chosen = np.arange(bins.n_classes)
    drawn = bins.draw(chosen, np.full(bins.n_classes, u))
    assert np.all(np.diff(drawn) >= 0)
    edges = bins.edges
    # Inside its bin's edges (equal edges make a bin a single point), give or take
    # the rounding to the values' resolution.
    slack = 1e-9 * (1 + abs(edges))
    if bins.decimals is not None:
        slack += 0.5 * 10.0**-bins.decimals
    assert np.all(drawn[1:] >= edges - slack)
    assert np.all(drawn[:-1] <= edges + slack)
    assert QuantileBins.from_dict(bins.to_dict()) == bins


def test_each_bin_holds_its_share_of_the_values():
    """Each bin holds its share of the values (levels are those of the values
    between the 1st and 99th percentiles: 0.02 is the 2.96th percentile), and
    discrete values tied at edges are spread over the bins they span."""
    values = np.random.default_rng(0).lognormal(3, 1, 10_000)
    levels = bin_levels(10)
    share = np.diff([0, *(0.01 + 0.98 * np.array(levels)), 1])
    bins = QuantileBins.fit(values, levels)
    counts = np.bincount(bins.bin(values), minlength=bins.n_classes)
    np.testing.assert_allclose(counts / len(values), share, atol=0.006)
    whole = np.round(np.random.default_rng(1).normal(140, 3, 10_000))
    bins = QuantileBins.fit(whole, levels)
    rng = np.random.default_rng(2)
    counts = np.bincount(bins.bin(whole, rng), minlength=bins.n_classes)
    np.testing.assert_allclose(counts / len(whole), share, atol=0.03)
    drawn = bins.draw(bins.bin(whole, rng), rng.random(len(whole)))
    assert np.all(drawn == np.round(drawn))  # whole numbers stay whole


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="'dropout'"):
        TimeValueConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="'n_bins'"):
        TimeValueConfig(n_bins=1)


# --------------------------------------------------------------------------- fitting


def test_nothing_to_learn_gives_no_model(cohorts):
    train = cohorts[0]
    placeholders = train.replace(event_values=None, times_are_placeholders=True)
    assert fit_time_values(placeholders) is None
    assert fit_time_values(train, TimeValueConfig(times=False, values=False)) is None


def test_the_model_learns_gaps_and_each_measured_lab(model, cohorts):
    train, test = cohorts
    counts = np.bincount(
        train.event_codes[np.isfinite(train.event_values)],
        minlength=len(train.code_values),
    )
    enough = np.flatnonzero(counts >= model.config.min_values)
    assert {c for _, c in model.labs} == set(train.code_values[enough])
    assert ((counts > 0) & (counts < model.config.min_values)).any()  # left out
    assert model.gap_bins is not None
    figures = model.perplexity(test)
    # Better than a uniform guess on held-out patients, for both.
    assert figures["gap_perplexity"] < model.n_classes
    assert figures["value_perplexity"] < model.n_classes - 1
    assert figures["gaps_scored"] == test.n_visits - len(test)


def test_annotating_keeps_codes_and_first_times_and_is_reproducible(model, cohorts):
    codes_only = _stripped(cohorts[1])
    a = model.annotate(codes_only, np.random.default_rng(3))
    b = model.annotate(codes_only, np.random.default_rng(3))
    assert a == b
    np.testing.assert_array_equal(a.event_codes, codes_only.event_codes)
    starts = codes_only.visit_offsets[:-1]
    np.testing.assert_array_equal(a.visit_times[starts], codes_only.visit_times[starts])
    assert np.all(np.diff(a.visit_times)[np.diff(a.visit_patient) == 0] > 0)
    labs = {c for _, c in model.labs}
    has_value = np.isfinite(a.event_values)
    is_lab = np.isin(a.code_values[a.event_codes], list(labs))
    assert not has_value[~is_lab].any()
    assert has_value[is_lab].mean() > 0.95  # every demo lab has a result
    units = a.units()
    trained = cohorts[0].units()
    assert all(units[lab] == trained[lab] for lab in model.labs if lab in units)
    assert units[("lab", "Creatinine")] == "mg/dL"


def test_times_only_and_values_only(cohorts):
    """Check that a times-only model changes gaps and gives no values, and a
    values-only model keeps the times and gives every modelled lab a value."""
    train, test = cohorts
    small = train[:300]
    times_only = fit_time_values(small, TimeValueConfig(values=False, epochs=2))
    codes_only = _stripped(test)
    out = times_only.annotate(codes_only, np.random.default_rng(0))
    assert times_only.labs == () and out.event_values is None
    assert not np.array_equal(out.visit_times, codes_only.visit_times)
    values_only = fit_time_values(small, TimeValueConfig(times=False, epochs=2))
    codes_only = _stripped(test)
    out = values_only.annotate(codes_only, np.random.default_rng(0))
    np.testing.assert_array_equal(out.visit_times, codes_only.visit_times)
    modelled = np.isin(
        out.code_values[out.event_codes], [code for _, code in values_only.labs]
    )
    assert modelled.sum() > 100
    assert np.isfinite(out.event_values[modelled]).mean() > 0.9
    assert not np.isfinite(out.event_values[~modelled]).any()


def test_reproduces_the_simulators_relations(model, cohorts):
    """Given real codes, sampled values and gaps keep what the simulator put in:
    creatinine higher at CKD visits (the real difference's sign and at least half
    its size), and the gap after an acute event shorter than after other visits."""
    test = cohorts[1]
    sampled = model.annotate(_stripped(test), np.random.default_rng(0))
    real = _creatinine_difference(test)
    assert real > 0.5
    assert _creatinine_difference(sampled) > real / 2
    gaps, after_acute = _gaps(sampled)
    assert np.median(gaps[after_acute]) < 0.75 * np.median(gaps[~after_acute])
    real_gaps, real_acute = _gaps(test)
    assert np.median(real_gaps[real_acute]) < 0.5 * np.median(real_gaps[~real_acute])


def test_save_and_load_give_the_same_samples(model, cohorts, tmp_path):
    model.save_weights(tmp_path)
    loaded = TimeValueModel.from_dict(model.to_dict(), model.schema)
    loaded.load_weights(tmp_path)
    codes_only = _stripped(cohorts[1][:100])
    assert model.annotate(codes_only, np.random.default_rng(1)) == loaded.annotate(
        codes_only, np.random.default_rng(1)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([0.5, 1.0, 7.0]), st.floats(-50, 50)),
        min_size=1,
        max_size=300,
    ),
    st.lists(st.floats(-100, 100), min_size=2, max_size=20),
)
def test_bins_never_decrease_as_values_grow(values, probes):
    """Check that bin and level are monotone in the value, tied runs and values
    outside the table included (a floor value repeated, as labs have)."""
    bins = QuantileBins.fit(np.array(values), bin_levels(10))
    probes = np.sort(np.concatenate([probes, values]))
    levels = bins.levels_of(probes)
    assert np.all(np.diff(levels) >= -1e-12)
    assert np.all(np.diff(bins.bin(probes)) >= 0)
    assert np.all((levels >= 0) & (levels <= 1))


def test_sampled_values_stay_in_each_labs_range_and_resolution(model, cohorts):
    """Check that every sampled value lies within its lab's stored 1st-99th
    percentiles (give or take the rounding) and is written at the lab's
    resolution."""
    sampled = model.annotate(_stripped(cohorts[1]), np.random.default_rng(4))
    codes = sampled.code_values[sampled.event_codes]
    checked = 0
    for (_, lab), bins in zip(model.labs, model.lab_bins):
        values = sampled.event_values[codes == lab]
        values = values[np.isfinite(values)].astype(np.float64)
        low, high = bins.quantiles[0], bins.quantiles[-1]
        slack = 1e-4 + (0 if bins.decimals is None else 0.5 * 10.0**-bins.decimals)
        assert np.all((values >= low - slack) & (values <= high + slack)), lab
        if bins.decimals is not None:
            scaled = values * 10.0**bins.decimals
            np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-2)
        checked += len(values)
    assert checked > 1000


def test_a_validation_cohort_without_gaps_does_not_stop_training(cohorts):
    """Check that a validation cohort with nothing of a task to score (one visit
    per patient: no gap) lets that network train every epoch, and that the facts
    hold no figure for it."""
    train = cohorts[0][:300]
    one_visit = cohorts[1].select(
        np.flatnonzero(np.diff(cohorts[1].visit_offsets) == 1)
    )
    model = fit_time_values(train, TimeValueConfig(epochs=6, patience=1), one_visit)
    assert model.facts["epochs"]["gap"] == 6
    assert "gap_perplexity" not in model.facts
    assert model.facts["value_perplexity"] > 1
