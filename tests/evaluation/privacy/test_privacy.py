"""Privacy attacks: hand-checked cases, and generators that leak or do not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError
from ehrgen.evaluation.privacy import (
    PrivacyConfig,
    attacks,
    auc_null_tolerance,
    evaluate_privacy,
)
from ehrgen.evaluation.privacy._stats import membership_figures
from ehrgen.evaluation.privacy.code_sets import (
    CodeIndex,
    jaccard_distances,
    nearest_distances,
    patient_sets,
    sequence_keys,
)


def _cohort(*records: list[tuple[str, ...]], prefix: str = "p") -> Cohort:
    """One patient per record; a record is a list of visits of diagnosis codes."""
    patients = [
        Patient(
            f"{prefix}{i}",
            {},
            tuple(Visit({"diagnosis": codes}) for codes in visits),
        )
        for i, visits in enumerate(records)
    ]
    return Cohort.from_patients(patients)


def _mix(copied: Cohort, fresh: Cohort, share: float, seed: int = 0) -> Cohort:
    """A synthetic cohort: ``share`` of it copied from ``copied``, the rest fresh."""
    rng = np.random.default_rng(seed)
    n = len(fresh)
    k = round(share * n)
    pick = rng.choice(len(copied), k, replace=False)
    patients = [copied[int(i)] for i in pick] + [fresh[i] for i in range(k, n)]
    patients = [Patient(f"s{i}", p.static, p.visits) for i, p in enumerate(patients)]
    return Cohort.from_patients(patients, fresh.schema)


# ---------------------------------------------------------------- distances


def test_jaccard_distances_by_hand():
    """Check that code-set distances are 1 - |A & B| / |A | B| across cohorts."""
    a = _cohort([("x", "y")], [("z",)])
    b = _cohort([("y", "w")], [("x", "y")], prefix="q")
    index = CodeIndex.of(a, b)
    d = jaccard_distances(patient_sets(a, index), patient_sets(b, index))
    # {x,y} vs {y,w}: 1 shared of 3; {x,y} vs {x,y}: identical; {z} vs both: disjoint.
    np.testing.assert_allclose(d, [[2 / 3, 0.0], [1.0, 1.0]])


def test_visit_aware_distance_sees_the_order_of_visits():
    """Check that swapping two visits keeps the code-set distance at 0 but not the
    visit-aware one, which counts (visit, code) pairs."""
    a = _cohort([("x",), ("y",)])
    b = _cohort([("y",), ("x",)], prefix="q")
    index = CodeIndex.of(a, b)
    flat = jaccard_distances(patient_sets(a, index), patient_sets(b, index))
    aware = jaccard_distances(
        patient_sets(a, index, visit_aware=True),
        patient_sets(b, index, visit_aware=True),
    )
    assert flat[0, 0] == 0.0
    assert aware[0, 0] == 1.0  # no (position, code) pair in common
    keys_a, keys_b = sequence_keys(a, index), sequence_keys(b, index)
    assert keys_a[0] != keys_b[0]
    copy = _cohort([("x",), ("y",)], prefix="c")  # same record, another id
    assert sequence_keys(copy, CodeIndex.of(a, b, copy))[0] == keys_a[0]


def test_nearest_distances_leave_one_out():
    """Check that exclude_self finds the nearest other row, even among duplicates."""
    m = sparse.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]], np.float32))
    d, i = nearest_distances(m, m, exclude_self=True)
    assert d.tolist() == [0.0, 0.0, 1.0]
    assert i[:2].tolist() == [1, 0]


def test_membership_figures_by_hand():
    """Check AUC, TPR at low FPR and median accuracy on a case worked by hand."""
    rng = np.random.default_rng(0)
    # Scores (minus distances): members 0 and -0.5; non-members -1 and -0.5.
    # Pairs member > non-member: 3 wins and 1 tie of 4: AUC 3.5 / 4.
    figures, curve = membership_figures(
        np.array([0.0, -0.5]), np.array([-1.0, -0.5]), rng, 10, "x"
    )
    assert figures["auc"].value == pytest.approx(0.875)
    assert curve.auc == pytest.approx(0.875)
    # The best score is a member and no non-member beats it: TPR 0.5 at FPR 0.
    assert figures["tpr_at_fpr_1pct"].value == 0.5
    perfect, _ = membership_figures(np.array([3.0, 2]), np.array([1.0, 0]), rng, 10, "")
    assert perfect["accuracy_at_median"].value == 1.0
    assert perfect["auc"].value == 1.0


def test_nnaa_by_hand():
    """Check AA and NNAAR on tiny cohorts where every distance is known.

    Train {a}, {b}; synthetic: copies of them. Test {c}, {c, d}.
    d_TS = 0 < d_TT = 1 and d_ST = 0 < d_SS = 1: AA(train) = 0.
    d_ES = 1 > d_EE = 0.5 (the two test patients share c); d_SE = 1 = d_SS: not
    greater. AA(test) = (1 + 0) / 2 = 0.5, so NNAAR = 0.5.
    """
    train = _cohort([("a",)], [("b",)])
    test = _cohort([("c",)], [("c", "d")], prefix="e")
    synthetic = _cohort([("a",)], [("b",)], prefix="s")
    data = attacks.PrivacyData.of(train, test, synthetic)
    result = attacks.nearest_neighbour_adversarial_accuracy(
        data, np.random.default_rng(0), 20
    )
    assert result.figures["aa_train"].value == 0.0
    assert result.figures["aa_test"].value == 0.5
    assert result.figures["nnaar"].value == 0.5


def test_copies_by_hand():
    """Check exact and near copies: a copy counts, the same codes in other visits do
    not, and one code changed in twelve is a near copy at the default threshold."""
    long_record = [tuple(f"c{i}" for i in range(12))]
    changed = [(*[f"c{i}" for i in range(11)], "other")]
    train = _cohort([("x",), ("y",)], long_record)
    holdout = _cohort([("q",)], [("r",)], prefix="h")
    synthetic = _cohort([("x",), ("y",)], [("y",), ("x",)], changed, prefix="s")
    data = attacks.PrivacyData.of(train, holdout, synthetic)
    result = attacks.copies(data, np.random.default_rng(0), 20, near_threshold=0.2)
    figures = result.figures
    assert figures["exact_copy_rate"].value == pytest.approx(1 / 3)
    # 11 shared (visit, code) pairs of 13: distance 2/13 = 0.154, a near copy.
    assert figures["near_copy_rate"].value == pytest.approx(2 / 3)
    assert figures["exact_copy_rate_holdout"].value == 0.0


def test_config_rejects_unknown_attacks():
    """Check that a misspelt attack name is refused with a suggestion."""
    with pytest.raises(ConfigError, match="Did you mean 'copies'"):
        PrivacyConfig(attacks=("copise",))
    with pytest.raises(ConfigError, match="near_copy_threshold"):
        PrivacyConfig(near_copy_threshold=1.5)


def test_the_white_box_attack_is_skipped_without_a_model():
    """Check that the likelihood attack is reported as skipped when no model is
    given, and the other attacks still run."""
    real = _cohort([("x",)], [("y",)], [("z",)], [("x", "y")])
    config = PrivacyConfig(attacks=("copies", "likelihood_membership"), n_resamples=5)
    result = evaluate_privacy(real[:2], real[2:], real[:2], config=config)
    assert list(result.attacks) == ["copies"]
    assert result.to_dict()["skipped"]["likelihood_membership"].startswith("no model")


def test_too_small_cohorts_are_refused():
    """Check that a one-patient cohort is named in the error."""
    one = _cohort([("x",)])
    with pytest.raises(ConfigError, match="holdout cohort"):
        evaluate_privacy(_cohort([("x",)], [("y",)]), one, one)


# ---------------------------------------------------------------- generators


N = 500  # members and non-members per scenario
CONFIG = PrivacyConfig(
    n_resamples=100,
    attacks=(
        "copies",
        "distance_membership",
        "nnaa",
        "attribute_inference",
        "rare_code_inference",
        "shadow_membership",
    ),
    attribute_targets=400,
)


@pytest.fixture(scope="module")
def scenarios() -> dict:
    """Privacy results for a copying, a 20%-copying and an independent generator."""
    real = demo_cohort(2 * N, seed=0)
    train, holdout = real[:N], real[N:]
    fresh = demo_cohort(N, seed=1)
    out = {}
    for name, share in (("copy", 1.0), ("partial", 0.2), ("independent", 0.0)):
        synthetic = train if share == 1.0 else _mix(train, fresh, share)
        out[name] = evaluate_privacy(train, holdout, synthetic, config=CONFIG)
    return out


def _figure(result, name: str) -> float:
    attack, figure = name.split(".")
    return result.attacks[attack].figures[figure].value


@pytest.mark.slow
def test_a_copying_generator_is_caught(scenarios):
    """Check that DS = D1 fails every test: distance AUC near 1, shadow AUC clearly
    above 0.5, copy rate 1, NNAAR clearly positive, attribute advantages positive."""
    result = scenarios["copy"]
    assert _figure(result, "distance_membership.code_set_auc") > 0.95
    assert _figure(result, "distance_membership.visit_aware_auc") > 0.95
    assert _figure(result, "shadow_membership.auc") > 0.5 + auc_null_tolerance(
        N // 2, N // 2, z=2
    )
    assert _figure(result, "copies.exact_copy_rate") == 1.0
    assert _figure(result, "nnaa.nnaar") > 0.2
    assert _figure(result, "rare_code_inference.f1_advantage") > 0.2
    assert result.attacks["attribute_inference"].figures["advantage_at_0"].ci_low > 0


@pytest.mark.slow
def test_an_independent_generator_looks_private(scenarios):
    """Check that a sample that never saw D1 gives AUCs within chance of 0.5 (four
    null standard errors at this size), copy rates like D2's, NNAAR near 0."""
    result = scenarios["independent"]
    for name in (
        "distance_membership.code_set_auc",
        "distance_membership.visit_aware_auc",
    ):
        assert abs(_figure(result, name) - 0.5) < auc_null_tolerance(N, N)
    half = N // 2
    assert abs(_figure(result, "shadow_membership.auc") - 0.5) < auc_null_tolerance(
        half, half
    )
    holdout_rate = _figure(result, "copies.exact_copy_rate_holdout")
    assert _figure(result, "copies.exact_copy_rate") < holdout_rate + 0.03
    # Fresh samples of this size spread more than NNAAR's bootstrap interval says
    # (seeds 1-4 of the demo gave -0.088, -0.004, -0.019, -0.013); a copying
    # generator scores far above this bound.
    assert abs(_figure(result, "nnaa.nnaar")) < 0.1
    assert abs(_figure(result, "rare_code_inference.f1_advantage")) < 0.15


@pytest.mark.slow
def test_a_partly_copying_generator_lies_in_between(scenarios):
    """Check that copying 20% of D1 scores between the independent and the copying
    generators, on every figure that measures memorisation."""
    names = (
        "copies.exact_copy_rate",
        "copies.near_copy_rate",
        "distance_membership.code_set_auc",
        "distance_membership.visit_aware_auc",
        "nnaa.nnaar",
        "rare_code_inference.f1_advantage",
    )
    for name in names:
        low, mid, high = (
            _figure(scenarios[k], name) for k in ("independent", "partial", "copy")
        )
        assert low < mid < high, (name, low, mid, high)
    assert _figure(scenarios["partial"], "copies.exact_copy_rate") == pytest.approx(
        0.2, abs=0.03
    )


@pytest.mark.slow
def test_results_save_json_and_roc_curves(scenarios, tmp_path):
    """Check that save writes privacy.json and each ROC curve as PNG and JSON."""
    path = scenarios["partial"].save(tmp_path)
    data = json.loads(path.read_text())
    figure = data["attacks"]["distance_membership"]["figures"]["code_set_auc"]
    assert figure["ci_low"] <= figure["value"] <= figure["ci_high"]
    assert figure["direction"] == "closer to 0.5"
    pngs = sorted(p.name for p in (tmp_path / "roc").glob("*.png"))
    assert "shadow_model.png" in pngs and "distance_code_set.png" in pngs
    points = json.loads((tmp_path / "roc" / "shadow_model.json").read_text())
    assert points["x"][0] == 0.0 and points["y"][-1] == 1.0


@pytest.mark.slow
def test_likelihood_attack_catches_an_overfitted_model():
    """Check that the white-box attack sees a model trained to memorise its members,
    and that an independent model (trained on other patients) shows nothing."""
    from ehrgen.models.baselines.lstm_mlp import LSTMMLP, LSTMMLPConfig
    from ehrgen.training import TrainingConfig

    real = demo_cohort(240, seed=3)
    train, holdout, other = real[:80], real[80:160], real[160:]
    training = TrainingConfig(epochs=60, batch_size=8, learning_rate=3e-3)
    config = PrivacyConfig(attacks=("likelihood_membership",), n_resamples=50)
    aucs = {}
    for name, fitted_on in (("member", train), ("independent", other)):
        model = LSTMMLP(LSTMMLPConfig(hidden=64, layers=1, mlp=128, dropout=0.0))
        model.fit(fitted_on, training=training)
        result = evaluate_privacy(train, holdout, train, model=model, config=config)
        aucs[name] = _figure(result, "likelihood_membership.auc")
    assert aucs["member"] > 0.7
    assert abs(aucs["independent"] - 0.5) < auc_null_tolerance(80, 80)


@pytest.mark.slow
def test_shadow_attack_trains_on_ids_of_the_synthetic_range():
    """Check that the shadow model trains on synthetic patients whose ids are in the
    range that training cohorts may not use, as generated patients' are."""
    real = demo_cohort(60, seed=0)
    fake = demo_cohort(30, seed=1)
    patients = [
        Patient(str(10**15 + i), p.static, p.visits) for i, p in enumerate(fake)
    ]
    synthetic = Cohort.from_patients(patients, fake.schema)
    config = PrivacyConfig(
        attacks=("shadow_membership",), n_resamples=5, shadow_epochs=1
    )
    result = evaluate_privacy(real[:30], real[30:], synthetic, config=config)
    assert 0 <= _figure(result, "shadow_membership.auc") <= 1
