"""Tests of `ehrgen evaluate`."""

from __future__ import annotations

import json

import pytest

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import write_meds
from tests.test_cli import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PromptEHR model and the MEDS cohort (train / held_out) it saw."""
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    root = tmp_path_factory.mktemp("evaluate")
    cohort = demo_cohort(60, seed=0)
    train, holdout = cohort[:40], cohort[40:]
    write_meds({"train": train, "held_out": holdout}, root / "cohort")
    model = PromptEHR(PromptEHRConfig.tiny()).fit(
        train, training=TrainingConfig(epochs=1)
    )
    model.save_pretrained(root / "model")
    return root


@pytest.mark.slow
def test_evaluate_privacy_from_scratch_and_from_seeds(monkeypatch, capsys, trained):
    """Check that evaluate generates when no --synthetic is given, assesses both
    generation modes, writes privacy.json and the ROC curves, and prints a table."""
    out = trained / "eval"
    code, text, err = run(
        monkeypatch,
        capsys,
        "evaluate",
        str(trained / "model"),
        "--cohort",
        str(trained / "cohort"),
        "--suite",
        "privacy",
        "--resamples",
        "10",
        "--out",
        str(out),
    )
    assert code == 0, err
    privacy = json.loads((out / "privacy.json").read_text())
    assert set(privacy) == {"from_scratch", "from_seeds"}
    for mode in privacy.values():
        assert mode["sizes"] == {"train": 40, "holdout": 20, "synthetic": 40}
        assert "likelihood_membership" in mode["attacks"]
    assert (out / "privacy" / "from_seeds" / "roc" / "shadow_model.png").exists()
    assert "NNAAR" in text and "from seeds" in text
    assert (out / "report.html").exists() and (out / "metrics.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "privacy" in metrics and "fidelity" not in metrics
    code, _, err = run(
        monkeypatch,
        capsys,
        "evaluate",
        str(trained / "model"),
        "--cohort",
        str(trained / "cohort"),
        "--out",
        str(out),
    )
    assert code == 2 and "--overwrite" in err


@pytest.mark.slow
def test_evaluate_every_suite_with_given_synthetic(monkeypatch, capsys, trained):
    """Check that by default every suite runs on the given synthetic cohort and the
    report has a section for each."""
    from ehrgen.models.promptehr import PromptEHR

    model = PromptEHR.from_pretrained(trained / "model")
    synthetic_dir = trained / "synthetic"
    write_meds(model.generate(40, seed=3), synthetic_dir)
    out = trained / "eval-all"
    code, text, err = run(
        monkeypatch, capsys, "evaluate", str(trained / "model"),
        "--cohort", str(trained / "cohort"), "--synthetic", str(synthetic_dir),
        "--no-from-seeds", "--resamples", "10", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["fidelity"]) == {"from_scratch"}
    assert metrics["utility"]["settings"]
    page = (out / "report.html").read_text()
    for section in ("summary", "fidelity", "perplexity", "privacy", "utility"):
        assert f'<section id="{section}">' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "R² code prevalence per patient" in text


def test_evaluate_errors(monkeypatch, capsys, trained):
    """Check that a misspelt suite, missing real cohorts and a folder that is not a
    model each fail with one line naming the fix."""
    model, cohort = str(trained / "model"), str(trained / "cohort")
    out = str(trained / "bad")
    code, _, err = run(
        monkeypatch, capsys, "evaluate", model, "--cohort", cohort, "--out", out,
        "--suite", "privacyy",
    )  # fmt: skip
    assert code == 2 and "Did you mean 'privacy'?" in err
    code, _, err = run(
        monkeypatch, capsys, "evaluate", model, "--train", cohort, "--out", out
    )
    assert code == 2 and "give --train and --holdout" in err
    code, _, err = run(
        monkeypatch, capsys, "evaluate", cohort, "--cohort", cohort, "--out", out
    )
    assert code == 2 and "is not a model folder" in err


def test_summary_marks_calibrated_visit_counts(monkeypatch):
    """Check that the printed summary notes, beside the visits-per-patient figure
    only, that a calibrated model was tuned to the training cohort's visit counts."""
    from types import SimpleNamespace

    from rich.console import Console

    from ehrgen.cli import evaluate as command
    from ehrgen.evaluation import evaluate
    from tests.evaluation.test_suites import StubModel

    real = demo_cohort(40, seed=0)
    calibration = SimpleNamespace(cohort="training cohort", n_patients=20)
    evaluation = evaluate(
        StubModel(calibration), real[:20], real[20:], demo_cohort(20, seed=1),
        suites="fidelity",
    )  # fmt: skip
    screen = Console(record=True, width=160)
    monkeypatch.setattr(command, "console", screen)
    command.print_summary(evaluation)
    lines = screen.export_text().splitlines()
    noted = [line for line in lines if "calibrated to the training cohort" in line]
    assert len(noted) == 1 and "KS visits per patient" in noted[0]
    assert "20 patients" in noted[0]
