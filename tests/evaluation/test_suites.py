"""Tests of `ehrgen.evaluation.evaluate`: which suites run on which cohorts, the
white-box attack run once per model, and calibrated visit counts said so."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError
from ehrgen.evaluation import SUITES, MetricRow, evaluate, write_report
from ehrgen.evaluation.privacy import ATTACKS, WHITE_BOX, PrivacyConfig
from ehrgen.models.base import CodeScores


class StubModel:
    """A fitted-looking generator: it scores every true code with a probability
    that depends on the patient, counts its scoring calls, and generates demo
    patients; ``calibration`` stands for a length calibration (None: none)."""

    protocols = ("set",)

    def __init__(self, calibration: object = None, seeds: bool = False) -> None:
        self.scoring_calls = 0
        self.generated: list[int] = []
        self._fitted = SimpleNamespace(length_calibration=calibration)
        if seeds:
            self.generate_from_seeds = lambda cohort, seed=None: cohort[: len(cohort)]

    def _scores(self, cohort: Cohort, protocol: str, task: str) -> CodeScores:
        self.scoring_calls += 1
        rows = [
            (i, t, 0, "x", np.log(0.2 + 0.1 * (i % 4)))
            for i, patient in enumerate(cohort)
            for t in range(1, len(patient.visits))
        ]
        return CodeScores.from_rows(rows, cohort.schema.modalities, protocol, task)

    def score_longitudinal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        return self._scores(cohort, protocol, "longitudinal")

    def score_cross_modal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        return self._scores(cohort, protocol, "cross_modal")

    def generate(self, n: int, seed: int | None = None) -> Cohort:
        self.generated.append(n)
        return demo_cohort(n, seed=100 + (seed or 0))


@pytest.fixture(scope="module")
def real() -> tuple[Cohort, Cohort, Cohort]:
    """Training, held-out and one synthetic cohort of 20 demo patients each."""
    cohort = demo_cohort(40, seed=0)
    return cohort[:20], cohort[20:], demo_cohort(20, seed=1)


WHITE_BOX_ONLY = PrivacyConfig(attacks=("copies", WHITE_BOX), n_resamples=5)


def test_white_box_attack_runs_once_per_model(real):
    """Check that the likelihood attack scores the real cohorts once whatever the
    number of generation modes, and that every mode shows that one result."""
    train, held_out, synthetic = real
    one_mode = StubModel()
    evaluate(one_mode, train, held_out, synthetic, suites="privacy",
             privacy_config=WHITE_BOX_ONLY)  # fmt: skip
    assert one_mode.scoring_calls == 4  # lpl and mpl, of members and non-members
    model = StubModel()
    modes = {"from_scratch": synthetic, "from_seeds": train, "other": held_out}
    result = evaluate(model, train, held_out, modes, suites="privacy",
                      privacy_config=WHITE_BOX_ONLY)  # fmt: skip
    assert model.scoring_calls == one_mode.scoring_calls
    attacks = [result.privacy[mode].attacks for mode in modes]
    assert all(a[WHITE_BOX] is attacks[0][WHITE_BOX] for a in attacks)
    assert f"privacy/{WHITE_BOX}" in result.timings
    assert [a["copies"].figures["exact_copy_rate"].value for a in attacks] == [
        0.0,
        1.0,
        0.0,
    ]


def test_white_box_result_is_the_attack_alone(real):
    """Check that the reused white-box result equals the attack run on its own by
    evaluate_privacy, whatever other attacks ran before it."""
    from ehrgen.evaluation.privacy import evaluate_privacy

    train, held_out, synthetic = real
    shared = evaluate(StubModel(), train, held_out, synthetic, suites="privacy",
                      privacy_config=WHITE_BOX_ONLY)  # fmt: skip
    alone = evaluate_privacy(
        train,
        held_out,
        synthetic,
        model=StubModel(),
        config=PrivacyConfig(attacks=(WHITE_BOX,), n_resamples=5),
    )
    figures = shared.privacy["from_scratch"].attacks[WHITE_BOX].figures
    assert figures == alone.attacks[WHITE_BOX].figures


@pytest.mark.slow
def test_generation_modes(real):
    """Check that without synthetic patients the model generates as many as the
    training cohort, that from-seeds generation is added where the model can, and
    that a given mapping of modes is kept."""
    train, held_out, synthetic = real
    model = StubModel(seeds=True)
    result = evaluate(model, train, held_out, suites="fidelity")
    assert model.generated == [len(train)]
    assert result.modes == ["from_scratch", "from_seeds"]
    assert set(result.fidelity) == set(result.modes)
    kept = evaluate(model, train, held_out, {"mine": synthetic}, suites="fidelity",
                    from_seeds=False)  # fmt: skip
    assert kept.modes == ["mine"] and model.generated == [len(train)]


@pytest.mark.slow
def test_every_suite_gives_metric_rows(real):
    """Check that every suite's rows reach the summary and metrics.json, each with
    its mode (none for perplexity, the first mode for utility)."""
    from ehrgen.evaluation.utility import UtilityConfig

    train, held_out, synthetic = real
    result = evaluate(
        StubModel(seeds=True), train, held_out, synthetic, n_resamples=5,
        privacy_config=WHITE_BOX_ONLY,
        utility_config=UtilityConfig.tiny(epochs=1, n_resamples=5),
    )  # fmt: skip
    rows = result.summary()
    assert all(isinstance(row, MetricRow) for row in rows)
    assert {row.suite for row in rows} == set(SUITES)
    modes = {s: {r.mode for r in rows if r.suite == s} for s in SUITES}
    assert modes == {
        "perplexity": {None},
        "privacy": {"from_scratch", "from_seeds"},
        "fidelity": {"from_scratch", "from_seeds"},
        "utility": {"from_scratch"},
    }
    lpl = [r for r in rows if r.metric == "lpl diagnosis, median (set)"]
    assert len(lpl) == 1 and lpl[0].value > 1
    summary = json.loads(json.dumps(result.to_dict()))["summary"]
    assert summary == [row.to_dict() for row in rows]


def test_a_model_is_needed_for_perplexity_and_generation(real):
    """Check that evaluate without a model refuses perplexity and generation, and
    judges given synthetic patients on the other suites."""
    train, held_out, synthetic = real
    with pytest.raises(ConfigError, match="perplexity suite need a model"):
        evaluate(None, train, held_out, synthetic, suites="perplexity")
    with pytest.raises(ConfigError, match="generating synthetic patients"):
        evaluate(None, train, held_out, suites="fidelity")
    with pytest.raises(ConfigError, match="Did you mean 'privacy'"):
        evaluate(None, train, held_out, synthetic, suites="privasy")
    result = evaluate(None, train, held_out, synthetic, suites="privacy",
                      privacy_config=WHITE_BOX_ONLY)  # fmt: skip
    assert WHITE_BOX in result.privacy["from_scratch"].skipped
    assert result.facts["model"]["class"] is None


@pytest.mark.slow
def test_calibrated_visit_counts_are_marked(real, tmp_path):
    """Check that a calibrated model's visits-per-patient figure carries a note
    naming the cohort, in the summary, metrics.json and the report, and that an
    uncalibrated model's does not."""
    train, held_out, synthetic = real
    calibration = SimpleNamespace(cohort="training cohort", n_patients=20)
    result = evaluate(StubModel(calibration), train, held_out, synthetic,
                      suites="fidelity")  # fmt: skip
    note = "calibrated to the training cohort, 20 patients"
    noted = {row.metric: row.note for row in result.summary() if row.note}
    assert noted == {"KS visits per patient": note}
    write_report(result, tmp_path / "calibrated")
    metrics = json.loads((tmp_path / "calibrated" / "metrics.json").read_text())
    assert metrics["facts"]["model"]["length_calibration"] == {
        "cohort": "training cohort",
        "n_patients": 20,
    }
    assert {row["note"] for row in metrics["summary"]} == {"", note}
    page = (tmp_path / "calibrated" / "report.html").read_text()
    assert page.count(note) >= 3  # summary, distributions, model facts
    plain = evaluate(StubModel(), train, held_out, synthetic, suites="fidelity")
    assert not any(row.note for row in plain.summary())
    write_report(plain, tmp_path / "plain")
    assert "calibrated to" not in (tmp_path / "plain" / "report.html").read_text()


def test_attack_names_are_listed_once():
    """Check that the summary's attacks and the configurable attacks are the same
    names, with the white-box attack last."""
    from ehrgen.evaluation.privacy import _privacy

    assert {attack for attack, _, _ in _privacy._HEADLINES} == set(ATTACKS)
    assert ATTACKS[-1] == WHITE_BOX and len(set(ATTACKS)) == len(ATTACKS)
    assert PrivacyConfig().attacks == ATTACKS


def test_importing_evaluate_is_light():
    """Check that `from ehrgen.evaluation import evaluate` imports neither torch
    nor numpy."""
    script = (
        "import sys\n"
        "from ehrgen.evaluation import evaluate, SUITES, MetricRow\n"
        "heavy = {'torch', 'numpy', 'polars', 'pyarrow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_gaps_and_values_reach_the_report(real, tmp_path):
    """Check that a model with a model of gaps and values gets that model's
    held-out perplexity in the facts and the report, and that the report plots
    gaps and lab values when the cohorts carry them."""
    from ehrgen.models.time_values import TimeValueConfig, fit_time_values

    train, held_out, synthetic = real
    model = StubModel()
    model.time_values_ = fit_time_values(
        demo_cohort(200, seed=3), TimeValueConfig(epochs=2)
    )
    result = evaluate(model, train, held_out, synthetic,
                      suites="perplexity,fidelity", n_resamples=5)  # fmt: skip
    figures = result.facts["time_values_perplexity"]
    assert figures["gaps_scored"] == held_out.n_visits - len(held_out)
    assert 1 < figures["gap_perplexity"] < 3 * figures["classes"]
    write_report(result, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("Visit gaps and lab values") == 2  # perplexity, fidelity
    assert 'alt="visit gaps and lab values"' in page
