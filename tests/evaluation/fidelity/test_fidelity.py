"""Tests of fidelity: hand-computed statistics, identical and shuffled cohorts, the
demo simulator, undefined figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort, demo_truth
from ehrgen.errors import ConfigError
from ehrgen.evaluation.fidelity import KINDS, fidelity
from ehrgen.evaluation.fidelity import _stats as _fidelity_stats


def _patient(pid, static, *visits):
    return Patient(pid, static, tuple(Visit(v) for v in visits))


def _real() -> Cohort:
    """Three patients, codes a, b (diagnosis) and x (drug); no visit times.

    p1: {a, b} -> {a, x}            gender F, age 30
    p2: {b}                         gender M, age 40
    p3: {a, b} -> {b} -> {a} -> {b} gender F, age 50

    P = 3 patients, V = 7 visits, S = 1 + 0 + 3 = 4 consecutive-visit pairs.
    """
    return Cohort.from_patients(
        [
            _patient(
                "p1",
                {"gender": "F", "age": 30.0},
                {"diagnosis": ["a", "b"]},
                {"diagnosis": ["a"], "drug": ["x"]},
            ),
            _patient("p2", {"gender": "M", "age": 40.0}, {"diagnosis": ["b"]}),
            _patient(
                "p3",
                {"gender": "F", "age": 50.0},
                {"diagnosis": ["a", "b"]},
                {"diagnosis": ["b"]},
                {"diagnosis": ["a"]},
                {"diagnosis": ["b"]},
            ),
        ]
    )


def _synthetic() -> Cohort:
    """q1: {a, b}; q2: {b} -> {y}, y a code the real data never has (both F)."""
    return Cohort.from_patients(
        [
            _patient("q1", {"gender": "F", "age": 30.0}, {"diagnosis": ["a", "b"]}),
            _patient(
                "q2",
                {"gender": "F", "age": 40.0},
                {"diagnosis": ["b"]},
                {"diagnosis": ["y"]},
            ),
        ]
    )


def _points(result, kind) -> dict[str, tuple[float, float]]:
    points = result.prevalence_points(kind)
    return {
        label: (float(r), float(s))
        for label, r, s in zip(points.labels, points.real, points.synthetic)
    }


def assert_points(result, kind, expected) -> None:
    """Check (real, synthetic) prevalence pairs label by label (pytest.approx takes
    no nested dictionaries since pytest 9)."""
    points = _points(result, kind)
    assert points.keys() == expected.keys()
    for label, pair in expected.items():
        assert points[label] == pytest.approx(pair), label


def _r2(truth, prediction) -> float:
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    return 1 - ((truth - prediction) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()


def _shuffled(cohort: Cohort, seed: int = 0) -> Cohort:
    """The same patients with every code renamed to another code of the vocabulary."""
    perm = np.random.default_rng(seed).permutation(len(cohort.code_values))
    return cohort.replace(
        code_values=cohort.code_values[perm],
        code_modality=cohort.code_modality[perm],
    )


@pytest.fixture(scope="module")
def hand():
    return fidelity(_real(), _synthetic(), discriminator=False)


def test_hand_checked_code_prevalences(hand):
    """Check per-patient and per-visit code prevalences on the hand cohorts.

    Real: a in p1, p3 (2/3); b in all (1); x in p1 (1/3). a in 4 of 7 visits, b in
    5, x in 1. Synthetic (P = 2, V = 3): a 1/2, b 1, x 0; a in 1 of 3 visits, b in 2.
    """
    assert_points(
        hand,
        "patient_code",
        {"diagnosis:a": (2 / 3, 1 / 2), "diagnosis:b": (1, 1), "drug:x": (1 / 3, 0)},
    )
    assert_points(
        hand,
        "visit_code",
        {
            "diagnosis:a": (4 / 7, 1 / 3),
            "diagnosis:b": (5 / 7, 2 / 3),
            "drug:x": (1 / 7, 0),
        },
    )
    # R² = 1 - SS_res / SS_tot: (1/36 + 1/9) / (1/9 + 1/9) = 5/8, so R² = 3/8.
    assert hand.r2["patient_code"] == pytest.approx(3 / 8)
    assert hand.r2["visit_code"] == pytest.approx(_r2([4, 5, 1], [7 / 3, 14 / 3, 0]))


def test_hand_checked_pairs(hand):
    """Check co-occurrence: {a,b} in visits p1v1 and p3v1 (2/7, 2 of 3 patients),
    {a,x} in p1v2 (1/7, 1/3); synthetic {a,b} in q1v1 (1/3 of visits, 1/2 of
    patients). Visit R²: truth (2/7, 1/7), prediction (1/3, 0) gives -11/9."""
    assert_points(
        hand,
        "visit_pair",
        {
            "diagnosis:a + diagnosis:b": (2 / 7, 1 / 3),
            "diagnosis:a + drug:x": (1 / 7, 0),
        },
    )
    assert_points(
        hand,
        "patient_pair",
        {
            "diagnosis:a + diagnosis:b": (2 / 3, 1 / 2),
            "diagnosis:a + drug:x": (1 / 3, 0),
        },
    )
    assert hand.r2["visit_pair"] == pytest.approx(-11 / 9)
    assert hand.n_keys["visit_pair"] == 2


def test_hand_checked_transitions(hand):
    """Check transitions: p1 v1->v2 gives (a,a) (a,x) (b,a) (b,x); p3 gives (a,b)
    (b,b), then (b,a), then (a,b). Per visit over S = 4: (a,b) and (b,a) 2/4, the rest
    1/4; per patient over P = 3: (b,a) in p1 and p3 (2/3), (a,b) only in p3 (1/3).
    The synthetic transition (b,y) is unseen in real, so every synthetic value is 0:
    R² = 1 - sum y² / sum (y - mean)² = 1 - (3/4) / (1/12) = -8."""
    quarter, third = 1 / 4, 1 / 3
    visit = {
        "diagnosis:a -> diagnosis:a": quarter,
        "diagnosis:a -> diagnosis:b": 2 * quarter,
        "diagnosis:a -> drug:x": quarter,
        "diagnosis:b -> diagnosis:a": 2 * quarter,
        "diagnosis:b -> diagnosis:b": quarter,
        "diagnosis:b -> drug:x": quarter,
    }
    assert_points(hand, "visit_transition", {k: (v, 0) for k, v in visit.items()})
    patient = {k: third for k in visit} | {"diagnosis:b -> diagnosis:a": 2 * third}
    assert_points(hand, "patient_transition", {k: (v, 0) for k, v in patient.items()})
    assert hand.r2["visit_transition"] == pytest.approx(-8)


def test_hand_checked_modalities_long_tail_and_unseen(hand):
    """Check per modality (diagnosis codes a, b: truth (2/3, 1), prediction (1/2, 1),
    R² = 1/2), the long tail (10th percentile of (1/3, 2/3, 1) is 0.4, so only x: one
    code, R² undefined) and the unseen synthetic code y (1 of 4 synthetic events)."""
    assert hand.r2_by_modality["diagnosis"]["patient_code"] == pytest.approx(1 / 2)
    assert math.isnan(hand.r2_by_modality["diagnosis"]["patient_pair"])
    assert math.isnan(hand.r2_by_modality["drug"]["patient_code"])
    assert hand.long_tail_threshold == pytest.approx(0.4)
    assert all(math.isnan(v) for v in hand.r2_long_tail.values())
    assert any(n.startswith("r2_long_tail['patient_code']") for n in hand.notes)
    assert hand.unseen == {"codes": 1, "event_share": 0.25}
    assert "diagnosis:y" not in _points(hand, "patient_code")


def test_hand_checked_distributions_and_demographics(hand):
    """Check visits per patient (2, 1, 4 vs 1, 2), codes per visit, age (KS 1/3,
    Wasserstein 5), gender shares (TVD 1/3), and that gaps are left out when times
    are placeholders."""
    visits = hand.distributions["visits_per_patient"]
    assert (visits["real_mean"], visits["synthetic_mean"]) == pytest.approx(
        (7 / 3, 1.5)
    )
    codes = hand.distributions["codes_per_visit"]
    assert (codes["real_mean"], codes["synthetic_mean"]) == pytest.approx(
        (10 / 7, 4 / 3)
    )
    drug = hand.distributions["codes_per_visit/drug"]
    assert (drug["real_mean"], drug["synthetic_mean"]) == pytest.approx((1 / 7, 0))
    assert "gap_days" not in hand.distributions
    assert any(n.startswith("gap_days") for n in hand.notes)
    age = hand.demographics["age"]
    assert (age["real_mean"], age["synthetic_mean"]) == pytest.approx((40, 35))
    assert (age["ks"], age["wasserstein"]) == pytest.approx((1 / 3, 5))
    gender = hand.demographics["gender"]
    assert gender["real"] == pytest.approx({"F": 2 / 3, "M": 1 / 3})
    assert gender["synthetic"] == pytest.approx({"F": 1, "M": 0})
    assert gender["tvd"] == pytest.approx(1 / 3)


def test_hand_checked_conditional(hand):
    """Check prevalence within gender F: real p1, p3 give a 1, b 1, x 1/2; synthetic
    q1, q2 give a 1/2, b 1, x 0 (and y 1/2): R² = 1 - (1/2) / (1/6) = -2. M has no
    synthetic patient: NaN."""
    female = hand.conditional["gender"]["F"]
    assert female["r2"] == pytest.approx(-2)
    assert (female["n_real"], female["n_synthetic"]) == (2, 2)
    assert [row["code"] for row in female["top_disagreeing"]] == [
        "diagnosis:a",
        "drug:x",
        "diagnosis:y",
    ]
    male = hand.conditional["gender"]["M"]
    assert math.isnan(male["r2"]) and male["n_synthetic"] == 0


def test_identical_cohorts_score_perfectly():
    """Check that a cohort against itself gives R² = 1, distances 0 and a
    discriminator at 0.5."""
    cohort = demo_cohort(300, seed=0)
    result = fidelity(cohort, cohort)
    assert result.r2 == {kind: 1.0 for kind in KINDS}
    assert result.r2_long_tail == {kind: 1.0 for kind in KINDS}
    for figures in result.r2_by_modality.values():
        assert all(v == 1.0 or math.isnan(v) for v in figures.values())
    for name, figures in result.distributions.items():
        assert (figures["ks"], figures["wasserstein"]) == (0, 0), name
    assert "gap_days" in result.distributions
    assert result.demographics["age"]["ks"] == 0
    assert result.demographics["gender"]["tvd"] == 0
    assert result.conditional["gender"]["F"]["r2"] == 1.0
    assert result.discriminator["accuracy"] == pytest.approx(0.5, abs=0.05)
    assert result.discriminator["auc"] == pytest.approx(0.5, abs=0.05)
    assert result.unseen == {"codes": 0, "event_share": 0.0}


def test_shuffled_codes_score_clearly_worse():
    """Check that renaming codes across the vocabulary ruins every R² and lets the
    discriminator tell the cohorts apart, while visit counts stay identical."""
    cohort = demo_cohort(300, seed=0)
    result = fidelity(cohort, _shuffled(cohort))
    assert all(value < 0.5 for value in result.r2.values())
    assert result.discriminator["accuracy"] > 0.8
    assert result.distributions["visits_per_patient"]["ks"] == 0


def test_independent_demo_samples_agree():
    """Check that two independent demo samples of 2,000 patients agree: overall R²
    above 0.9 and a discriminator near 0.5."""
    result = fidelity(demo_cohort(2000, seed=0), demo_cohort(2000, seed=1), seed=3)
    assert all(value > 0.9 for value in result.r2.values()), result.r2
    assert result.discriminator["accuracy"] < 0.6
    assert result.distributions["gap_days"]["ks"] < 0.1


def _brute_force(cohort: Cohort) -> dict[str, dict]:
    """The six statistics by plain loops over patients (HALO's way)."""
    counts = {kind: {} for kind in KINDS}

    def add(kind, keys):
        for key in keys:
            counts[kind][key] = counts[kind].get(key, 0) + 1

    for patient in cohort:
        visits = [
            {f"{m}:{c}" for m, codes in v.events.items() for c in codes}
            for v in patient.visits
        ]
        pairs = [{f"{a} + {b}" for a in v for b in v if a < b} for v in visits]
        moves = [
            {f"{a} -> {b}" for a in x for b in y} for x, y in zip(visits, visits[1:])
        ]
        for name, per_visit in (
            ("code", visits),
            ("pair", pairs),
            ("transition", moves),
        ):
            add(f"patient_{name}", set().union(*per_visit))
            for keys in per_visit:
                add(f"visit_{name}", keys)
    n_visits, n = cohort.n_visits, len(cohort)
    denominators = dict(patient=n, visit=n_visits)
    denominators["transition"] = n_visits - n
    return {
        kind: {k: v / denominators[key] for k, v in table.items()}
        for kind, table in counts.items()
        for key in ["transition" if kind == "visit_transition" else kind.split("_")[0]]
    }


def test_sparse_statistics_match_brute_force():
    """Check the six statistics against plain loops on two random demo cohorts."""
    real, synthetic = demo_cohort(60, seed=4), demo_cohort(40, seed=5)
    result = fidelity(real, synthetic, discriminator=False)
    expected_real, expected_synthetic = _brute_force(real), _brute_force(synthetic)
    for kind in KINDS:
        points = {
            " + ".join(sorted(k.split(" + "))): v
            for k, v in _points(result, kind).items()
        }
        assert set(points) == set(expected_real[kind]), kind
        for label, (r, s) in points.items():
            assert r == pytest.approx(expected_real[kind][label]), (kind, label)
            assert s == pytest.approx(expected_synthetic[kind].get(label, 0)), label


def test_blocks_of_patients_give_the_same_counts(monkeypatch):
    """Check that counting per-patient pairs block by block (the memory bound)
    changes nothing."""
    real, synthetic = demo_cohort(150, seed=0), demo_cohort(150, seed=1)
    whole = fidelity(real, synthetic, discriminator=False)
    monkeypatch.setattr(_fidelity_stats, "_BLOCK_WORK", 50)
    blocked = fidelity(real, synthetic, discriminator=False)
    for kind in ("patient_pair", "patient_transition"):
        np.testing.assert_array_equal(
            whole.tables[kind].synthetic, blocked.tables[kind].synthetic
        )
    assert whole.r2 == blocked.r2


def test_discriminator_needs_enough_patients():
    """Check that the discriminator is NaN with a note below 5 patients a side."""
    result = fidelity(_real(), _synthetic())
    assert math.isnan(result.discriminator["accuracy"])
    assert any(n.startswith("discriminator: undefined") for n in result.notes)


def test_single_visit_cohorts_have_no_transitions():
    """Check that transitions are NaN with a note when real patients have one visit,
    and 0 when only the synthetic ones do."""
    single = Cohort.from_patients(
        [_patient(str(i), {}, {"diagnosis": ["a", "b"][: i % 2 + 1]}) for i in range(4)]
    )
    result = fidelity(single, _real(), discriminator=False)
    assert math.isnan(result.r2["visit_transition"])
    assert math.isnan(result.r2["patient_transition"])
    assert any("one visit per patient" in n for n in result.notes)
    reverse = fidelity(_real(), single, discriminator=False)
    assert not reverse.tables["visit_transition"].synthetic.any()
    assert reverse.r2["visit_transition"] < 0


def test_result_keys_json_and_summary(hand):
    """Check per-modality and long-tail keys, that to_dict is JSON-ready and that
    summary rows carry a direction."""
    assert set(hand.r2_by_modality) == {"diagnosis", "drug"}
    assert all(set(f) == set(KINDS) for f in hand.r2_by_modality.values())
    assert set(hand.r2_long_tail) == set(KINDS)
    data = json.loads(json.dumps(hand.to_dict()))
    assert data["prevalence_points"]["patient_code"]["labels"] == [
        "diagnosis:a",
        "diagnosis:b",
        "drug:x",
    ]
    figures = {row.metric: row for row in hand.figures()}
    assert figures["r2/patient_code"].value == pytest.approx(3 / 8)
    assert figures["r2/patient_code"].direction == "higher"
    assert {row.direction for row in figures.values()} <= {"higher", "lower"}
    summary = {row.metric: row for row in hand.summary(visit_count_note="tuned")}
    assert summary["R² code prevalence per patient"].value == pytest.approx(3 / 8)
    assert summary["real-vs-synthetic classifier accuracy"].value is None  # not run
    assert summary["KS visits per patient"].note == "tuned"
    assert [r.metric for r in summary.values() if r.note] == ["KS visits per patient"]
    assert hand.discriminator == {}
    drug = hand.prevalence_points("visit_code", modality="drug")
    assert drug.labels == ("drug:x",) and drug.modalities == ("drug",)
    assert drug.top(1) == [("drug:x", pytest.approx(1 / 7), 0.0)]


def test_bad_arguments_raise_clear_errors(hand):
    """Check that empty cohorts, non-cohorts and unknown kinds raise ConfigError."""
    with pytest.raises(
        ConfigError, match="'synthetic' parameter of fidelity must hold"
    ):
        fidelity(_real(), Cohort.from_patients([]))
    with pytest.raises(ConfigError, match="must be a Cohort. Got list"):
        fidelity([], _real())
    with pytest.raises(ConfigError, match="Did you mean 'visit_pair'"):
        hand.prevalence_points("visit_pairs")
    with pytest.raises(ConfigError, match="'modality' parameter"):
        hand.prevalence_points("visit_code", modality="lab")


def test_lab_values_are_compared_for_the_most_measured_codes():
    """Check the value/<code> rows: zero for equal values, clearly positive for
    values scaled by 1.5, and a note (no rows) when the synthetic cohort has no
    values."""
    cohort = demo_cohort(300, seed=0)
    same = fidelity(cohort, cohort).distributions
    rows = [name for name in same if name.startswith("value/") and "|" not in name]
    assert len(rows) == 5 and "value/Potassium" in rows
    assert all(same[name]["ks"] == 0 for name in rows)
    scaled = fidelity(cohort, cohort.replace(event_values=cohort.event_values * 1.5))
    for name in rows:
        figures = scaled.distributions[name]
        assert figures["ks"] > 0.3, name
        assert figures["synthetic_mean"] == pytest.approx(1.5 * figures["real_mean"])
    bare = fidelity(cohort, cohort.replace(event_values=None))
    assert not any(name.startswith("value/") for name in bare.distributions)
    assert any(note.startswith("value/*") for note in bare.notes)


def test_gaps_are_compared_by_visit_and_after_the_codes_that_change_them():
    """Check the gap rows: per visit index, and after the codes whose next gap
    differs most (on the demo, acute events); gaps shuffled across visits keep
    the overall distribution but lose the gap after an acute event."""
    cohort = demo_cohort(600, seed=0)
    same = fidelity(cohort, cohort).distributions
    for t in (2, 3, 4):
        assert same[f"gap_days/visit_{t}"]["ks"] == 0
    after = [name for name in same if name.startswith("gap_days | after ")]
    assert len(after) == 3
    acute = set(demo_truth().acute_codes)
    chosen = {name.removeprefix("gap_days | after ") for name in after}
    assert chosen & acute
    code = sorted(chosen & acute)[0]
    assert (
        same[f"gap_days | after {code}"]["real_mean"]
        < 0.5 * same["gap_days"]["real_mean"]
    )
    rng = np.random.default_rng(0)
    later = np.flatnonzero(np.diff(cohort.visit_patient) == 0) + 1
    gaps = cohort.visit_times[later] - cohort.visit_times[later - 1]
    starts = cohort.visit_times[cohort.visit_offsets[:-1]]
    shuffled = rng.permutation(gaps)
    seconds = np.zeros(cohort.n_visits, dtype="timedelta64[us]")
    seconds[later] = shuffled
    first = np.repeat(starts, np.diff(cohort.visit_offsets))
    offsets = np.cumsum(seconds.astype(np.int64))
    offsets -= np.repeat(
        offsets[cohort.visit_offsets[:-1]], np.diff(cohort.visit_offsets)
    )
    times = first + offsets.astype("timedelta64[us]")
    result = fidelity(cohort, cohort.replace(visit_times=times)).distributions
    assert result["gap_days"]["ks"] < 0.01
    assert result[f"gap_days | after {code}"]["ks"] > 0.3


def test_lab_values_are_compared_at_the_code_that_shifts_them_most():
    """Check the value/<lab> | <code> rows: on the demo, creatinine's is a CKD
    code; values shuffled among a lab's measurements keep the lab's distribution
    but lose its shift at that code."""
    cohort = demo_cohort(600, seed=0)
    same = fidelity(cohort, cohort).distributions
    (row,) = [name for name in same if name.startswith("value/Creatinine | ")]
    assert row.split(" | ")[1] in {"ICD9CM//5853", "ICD9CM//5854", "ICD9CM//5855"}
    assert same[row]["ks"] == 0
    assert same[row]["real_mean"] > same["value/Creatinine"]["real_mean"] + 1
    values = cohort.event_values.copy()
    creatinine = np.flatnonzero(cohort.code_values[cohort.event_codes] == "Creatinine")
    values[creatinine] = np.random.default_rng(0).permutation(values[creatinine])
    result = fidelity(cohort, cohort.replace(event_values=values)).distributions
    assert result["value/Creatinine"]["ks"] == 0
    assert result[row]["ks"] > 0.3
