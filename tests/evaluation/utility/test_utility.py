"""Tests of the utility evaluation: recall@k by hand, the LSTM against the baselines
and random codes on the demo cohort, sizes, the label task, errors and outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError
from ehrgen.evaluation.utility import (
    FAMILIES,
    UtilityConfig,
    UtilityResult,
    recall_at_k,
    utility,
)
from ehrgen.evaluation.utility import _model as _utility_model

torch.set_num_threads(1)

# Enough training for the demo cohort's structure, in a few seconds on one core.
FAST = UtilityConfig.tiny(hidden=32, epochs=6, learning_rate=3e-3)


def _random_codes(cohort: Cohort, seed: int) -> Cohort:
    """The same patients and visit shapes, each visit's codes drawn uniformly from
    the cohort's vocabulary of the same modality."""
    rng = np.random.default_rng(seed)
    vocabulary: dict[str, list[str]] = {}
    for patient in cohort:
        for visit in patient.visits:
            for modality, codes in visit.events.items():
                vocabulary.setdefault(modality, []).extend(codes)
    vocabulary = {m: sorted(set(c)) for m, c in vocabulary.items()}
    patients = []
    for patient in cohort:
        visits = []
        for visit in patient.visits:
            events = {
                m: list(rng.choice(vocabulary[m], len(codes), replace=False))
                for m, codes in visit.events.items()
            }
            visits.append(Visit(events, visit.time))
        patients.append(Patient(patient.patient_id, patient.static, tuple(visits)))
    return Cohort.from_patients(patients, cohort.schema)


@pytest.fixture(scope="module")
def demo() -> tuple[Cohort, Cohort]:
    train, test = demo_cohort(1500, seed=0).split([0.8, 0.2], seed=0)
    return train, test


@pytest.fixture(scope="module")
def run(demo) -> tuple[UtilityResult, list[str]]:
    train, test = demo
    synthetic = _random_codes(train, seed=1)
    names: list[str] = []
    out = utility(
        train,
        synthetic,
        test,
        real_sizes=[300, 1200],
        synthetic_sizes=[1200],
        config=FAST,
        progress=names.append,
    )
    return out, names


@pytest.fixture(scope="module")
def result(run) -> UtilityResult:
    return run[0]


# --------------------------------------------------------------------------- recall


def test_recall_at_k_hand_checked():
    """Check recall@k on a hand-made case: |top-k ∩ true| / |true|, non-finite scores
    never predicted, NaN without a true code."""
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.5],  # top 2: {0, 1}; true {0, 2, 3}: 1/3
            [0.1, 0.2, 0.3, 0.4],  # top 2: {3, 2}; true {3}: 1
            [-np.inf, 0.5, np.nan, -np.inf],  # only column 1 can be predicted
            [0.4, 0.3, 0.2, 0.1],  # no true code
        ]
    )
    truth = np.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    got = recall_at_k(scores, truth, 2)
    np.testing.assert_allclose(got[:3], [1 / 3, 1.0, 1 / 3])
    assert np.isnan(got[3])
    np.testing.assert_allclose(recall_at_k(scores, truth, 10)[:3], [1.0, 1.0, 1 / 3])
    np.testing.assert_allclose(recall_at_k(scores, truth, 1)[:3], [1 / 3, 1.0, 1 / 3])


def test_recall_at_k_rejects_bad_input():
    """Check that recall_at_k names mismatched shapes and a bad k."""
    with pytest.raises(ConfigError, match="same shape"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ConfigError, match="'k' parameter of recall_at_k"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 3)), 0)


def _patient(pid: str, *visits: dict) -> Patient:
    return Patient(pid, {}, tuple(Visit(v) for v in visits))


def test_baselines_and_truth_hand_checked():
    """Check the test examples, their true codes and both baselines' rankings on a
    hand-made case.

    train: t1 {x, y} -> {x}; t2 {x, z}: x in 3 visits, y and z in 1.
    test:  s1 {a, drug d} -> {a, b} -> {b, x}: two examples, each with two true codes.
    """
    train = Cohort.from_patients(
        [
            _patient("t1", {"diagnosis": ["x", "y"]}, {"diagnosis": ["x"]}),
            _patient("t2", {"diagnosis": ["x", "z"]}),
        ]
    )
    test = Cohort.from_patients(
        [
            _patient(
                "s1",
                {"diagnosis": ["a"], "drug": ["d"]},
                {"diagnosis": ["a", "b"]},
                {"diagnosis": ["b", "x"]},
            )
        ]
    )
    is_target, (tr, te) = _utility_model.joint_records(
        [train, test], test, None, "diagnosis"
    )
    codes = ["x", "y", "z", "a", "d", "b"]  # the joint numbering: train's codes first
    assert is_target.tolist() == [True, True, True, True, False, True]
    held_out = _utility_model.HeldOut.of(te, is_target)
    assert held_out.examples.tolist() == [0, 1]
    assert held_out.n_true.tolist() == [2, 2]
    ranked = _utility_model.baseline_rankings(tr, te, held_out.examples, is_target, 4)

    def names(rows):
        return [[codes[c] if c >= 0 else "-" for c in row] for row in rows]

    # Codes the training data never had (a, b) are not ranked by frequency.
    assert names(ranked["frequency"]) == [["x", "y", "z", "-"]] * 2
    # Own past first (a twice, then b), then by training frequency.
    assert names(ranked["history"]) == [["a", "x", "y", "z"], ["a", "b", "x", "y"]]
    hits = held_out.hits(ranked["history"])
    assert hits.tolist() == [[True, False, False, False], [False, True, True, False]]


# --------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_lstm_on_real_data_beats_the_frequency_baseline(result):
    """Check that the LSTM trained on all real data beats predicting the most
    frequent diagnoses for everyone, beyond its interval."""
    real = result.setting("real:1200").recall[10]
    frequency = result.setting("baseline:frequency").recall[10]
    assert real.value > frequency.value + 0.1
    assert real.ci_low > frequency.ci_high
    assert real.ci_low <= real.value <= real.ci_high


@pytest.mark.slow
def test_random_codes_give_much_lower_recall(result):
    """Check that synthetic visits of uniformly random codes train a far worse
    predictor than real data, and no better than the frequency baseline."""
    real = result.setting("real:1200").recall
    random = result.setting("synthetic:1200").recall
    frequency = result.setting("baseline:frequency").recall
    for k in (10, 20):
        assert random[k].value < real[k].value - 0.2
        assert random[k].value < frequency[k].value + 0.02


@pytest.mark.slow
def test_sizes_are_the_asked_sizes(result):
    """Check the settings' families and training sizes, and the baselines' data."""
    got = [(s.family, s.n_real, s.n_synthetic) for s in result.settings]
    assert got == [
        ("real", 300, 0),
        ("real", 1200, 0),
        ("synthetic", 0, 1200),
        ("real+synthetic", 1200, 1200),
    ]
    assert [s.name for s in result.baselines] == [
        "baseline:frequency",
        "baseline:history",
    ]
    assert all(s.n_real == 1200 for s in result.baselines)
    assert result.ks == (10, 20)
    assert result.n_test_examples >= result.n_test_patients > 0


@pytest.mark.slow
def test_progress_names_each_step(run):
    """Check that progress is called with each setting's name, then the baselines."""
    result, names = run
    assert names == [s.name for s in result.settings] + ["baselines"]


@pytest.mark.slow
def test_no_label_is_skipped_with_a_note(result):
    """Check that a cohort without labels gets no label AUC, and a note says so."""
    assert result.label is None
    assert all(s.label_auc is None for s in result.settings)
    assert any("no patient-level label" in note for note in result.notes)


@pytest.mark.slow
def test_outputs_are_json_ready_and_plot_writes_a_png(result, tmp_path):
    """Check to_dict, summary, curves and plot."""
    data = json.loads(json.dumps(result.to_dict()))
    assert data["settings"][1]["recall"]["recall@10"]["value"] == pytest.approx(
        result.settings[1].recall[10].value, abs=1e-6
    )
    rows = {row.metric: row for row in result.summary()}
    recall = result.settings[1].recall[10]
    row = rows["recall@10, real 1200"]
    assert (row.suite, row.direction) == ("utility", "higher")
    assert row.value == recall.value
    assert row.interval == (recall.ci_low, recall.ci_high)
    curves = result.curves()
    assert list(curves) == list(FAMILIES)
    assert curves["real"]["size"] == [300, 1200]
    assert curves["real+synthetic"]["size"] == [2400]
    assert len(curves["real"]["recall@20_low"]) == 2
    path = result.plot(tmp_path / "utility.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- label


def _labelled(cohort: Cohort, code: str) -> Cohort:
    """The cohort with label y = 1 when a patient ever has diagnosis ``code``."""
    patients = list(cohort)
    y = [float(any(code in v.codes("diagnosis") for v in p.visits)) for p in patients]
    return Cohort.from_patients(patients, cohort.schema, labels={"y": y})


def test_label_auc_on_real_settings_only():
    """Check that a label that depends on a code gets an AUC well above 0.5 for real
    settings, and none (with a note) for settings with unlabelled synthetic data."""
    train, test = demo_cohort(600, seed=2).split([0.6, 0.4], seed=0)
    counts: dict[str, int] = {}
    for p in train:
        for c in {c for v in p.visits for c in v.codes("diagnosis")}:
            counts[c] = counts.get(c, 0) + 1
    code = min(counts, key=lambda c: abs(counts[c] - len(train) / 3))  # ~1/3 have it
    train, test = _labelled(train, code), _labelled(test, code)
    config = UtilityConfig.tiny(epochs=1)
    result = utility(
        train, demo_cohort(50, seed=3), test, synthetic_sizes=[50], config=config
    )
    assert result.label == "y"
    auc = result.setting("real:360").label_auc
    assert auc is not None and auc.value > 0.8 and auc.ci_low > 0.6
    assert result.setting("synthetic:50").label_auc is None
    assert result.setting("real+synthetic:360+50").label_auc is None
    assert any("synthetic data: that cohort has no 'y'" in n for n in result.notes)
    rows = {row.metric: row.value for row in result.summary()}
    assert rows["AUC of y, real 360"] == auc.value
    json.dumps(result.to_dict())


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small() -> tuple[Cohort, Cohort]:
    return demo_cohort(60, seed=0).split([0.5, 0.5], seed=0)


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"real_sizes": [31]}, r"'real_sizes'.*between 1 and 30.*Got 31"),
        ({"real_sizes": [0]}, r"'real_sizes'.*Got 0"),
        ({"real_sizes": []}, r"'real_sizes'.*at least one size"),
        ({"synthetic_sizes": [2.5]}, r"'synthetic_sizes'.*Got 2.5"),
        ({"synthetic_sizes": [99]}, r"between 1 and 30 \(the number of patients"),
    ],
)
def test_bad_sizes_raise(small, sizes, match):
    """Check that sizes out of range name the parameter, the cohort size and the
    value."""
    train, test = small
    with pytest.raises(ConfigError, match=match):
        utility(train, train, test, config=UtilityConfig.tiny(), **sizes)


def test_bad_cohorts_raise(small):
    """Check empty cohorts, a missing target modality, a test cohort with no example
    and an unknown label."""
    train, test = small
    empty = Cohort.from_patients([], train.schema)
    with pytest.raises(ConfigError, match="'test' parameter of utility must hold"):
        utility(train, train, empty)
    with pytest.raises(ConfigError, match="'synthetic' parameter .* must be a Cohort"):
        utility(train, [], test)
    config = UtilityConfig.tiny(target_modality="diagnoses")
    with pytest.raises(ConfigError, match="Did you mean 'diagnosis'"):
        utility(train, train, test, config=config)
    single = Cohort.from_patients(
        [Patient(str(i), {}, (Visit({"diagnosis": ["a"]}),)) for i in range(3)]
    )
    with pytest.raises(ConfigError, match="'test' parameter of utility must have a"):
        utility(train, train, single, config=UtilityConfig.tiny())
    with pytest.raises(ConfigError, match="'label' parameter of UtilityConfig"):
        utility(train, train, test, config=UtilityConfig.tiny(label="y"))


def test_config_validates_and_round_trips():
    """Check the config's checks and its JSON round trip."""
    config = UtilityConfig(ks=[20, 5], epochs=2)
    assert config.ks == (5, 20)
    assert UtilityConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ({"ks": (0,)}, {"ks": ()}, {"hidden": 0}, {"learning_rate": -1.0}):
        with pytest.raises(ConfigError, match="parameter of UtilityConfig"):
            UtilityConfig(**bad)
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        UtilityConfig.from_dict({"epoch": 3})


def test_same_seed_same_result_and_global_rng_untouched():
    """Check that a seed fixes every figure and leaves torch's global generator as
    it was."""
    train, test = demo_cohort(200, seed=4).split([0.5, 0.5], seed=0)
    config = UtilityConfig.tiny(epochs=1, n_resamples=20, validation_fraction=0.2)
    state = torch.get_rng_state()
    first = utility(train, train, test, synthetic_sizes=[], config=config)
    assert torch.equal(state, torch.get_rng_state())
    second = utility(train, train, test, synthetic_sizes=[], config=config)
    assert first.summary() == second.summary()
