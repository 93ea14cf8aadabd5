"""Tests of the ehrgen command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ehrgen.cli import main
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.jsonl import read_jsonl
from ehrgen.data.formats.meds import read_meds, write_meds


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``ehrgen ARGS`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ehrgen", *args])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_light():
    """Check that `ehrgen --help` imports neither torch nor the data libraries."""
    script = (
        "import sys\n"
        "sys.argv = ['ehrgen', '--help']\n"
        "import ehrgen.cli\n"
        "try:\n    ehrgen.cli.main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'polars', 'pyarrow', 'numpy', 'transformers'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "quickstart" in result.stdout


def test_version(monkeypatch, capsys):
    """Check that `ehrgen --version` prints the version alone."""
    from ehrgen import __version__

    code, out, _ = run(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"ehrgen {__version__}"


def test_demo_stats_export_import(monkeypatch, capsys, tmp_path):
    """Check the data commands chain: demo -> stats -> export JSONL -> import JSONL."""
    code, out, _ = run(
        monkeypatch,
        capsys,
        "data",
        "demo",
        "--patients",
        "60",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "demo"),
    )
    assert code == 0 and "60 patients" in out
    cohort = read_meds(tmp_path / "demo")
    assert len(cohort) == 60
    assert len(read_meds(tmp_path / "demo", split="train")) == 48

    code, out, _ = run(
        monkeypatch, capsys, "data", "stats", str(tmp_path / "demo"), "--json"
    )
    assert code == 0 and json.loads(out)["n_patients"] == 60

    code, out, _ = run(monkeypatch, capsys, "data", "stats", str(tmp_path / "demo"))
    assert code == 0 and "Codes per visit" in out and "diagnosis" in out

    jsonl = tmp_path / "demo.jsonl"
    code, _, _ = run(
        monkeypatch,
        capsys,
        "data",
        "export",
        str(tmp_path / "demo"),
        "--format",
        "jsonl",
        "--out",
        str(jsonl),
    )
    assert code == 0 and read_jsonl(jsonl) == cohort

    code, _, _ = run(
        monkeypatch,
        capsys,
        "data",
        "import",
        "jsonl",
        str(jsonl),
        "--out",
        str(tmp_path / "again"),
    )
    assert code == 0 and read_meds(tmp_path / "again") == cohort


def test_errors_are_one_line_with_status_2(monkeypatch, capsys, tmp_path):
    """Check that an EhrgenError prints one line and exits 2; --debug raises it."""
    (tmp_path / "out").mkdir()
    code, _, err = run(
        monkeypatch,
        capsys,
        "data",
        "demo",
        "--patients",
        "5",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert err.strip().startswith("error:") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1

    code, _, err = run(monkeypatch, capsys, "data", "stats", str(tmp_path / "missing"))
    assert code == 2 and "no such file or folder" in err

    code, _, err = run(
        monkeypatch,
        capsys,
        "data",
        "demo",
        "--split",
        "1,2",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "--split must be three non-negative numbers" in err

    from ehrgen._io import OutputExistsError

    with pytest.raises(OutputExistsError):
        run(
            monkeypatch,
            capsys,
            "--debug",
            "data",
            "demo",
            "--patients",
            "5",
            "--out",
            str(tmp_path / "out"),
        )


@pytest.mark.slow
def test_quickstart_fast_end_to_end(monkeypatch, capsys, tmp_path):
    """Check that quickstart --fast writes the split MEDS cohort, a trained model,
    the synthetic cohort as MEDS and JSONL, every suite's metrics and a report, and
    prints the summary table."""
    from html.parser import HTMLParser

    from ehrgen.models.promptehr import PromptEHR

    out_dir = tmp_path / "qs"
    code, out, err = run(
        monkeypatch, capsys, "quickstart", "--fast", "--patients", "300",
        "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    assert "Done." in out and "Evaluation summary" in out and "report.html" in out
    assert len(read_meds(out_dir / "cohort", split="held_out")) == 30
    model = PromptEHR.from_pretrained(out_dir / "model")
    assert model.training_.train_patients == 240
    assert json.loads((out_dir / "stats.json").read_text())["n_patients"] == 300
    assert len(read_meds(out_dir / "synthetic")) == 240
    assert len(read_jsonl(out_dir / "synthetic.jsonl")) == 240
    metrics = json.loads((out_dir / "evaluation" / "metrics.json").read_text())
    for suite in ("perplexity", "fidelity", "privacy", "utility", "summary"):
        assert suite in metrics, suite
    page = (out_dir / "evaluation" / "report.html").read_text()
    HTMLParser().feed(page)  # parses
    for section in ("summary", "fidelity", "perplexity", "privacy", "utility", "facts"):
        assert f'<section id="{section}">' in page
    code, _, err = run(
        monkeypatch, capsys, "quickstart", "--fast", "--out", str(out_dir)
    )
    assert code == 2 and "--overwrite" in err


def test_train_and_resume(monkeypatch, capsys, tmp_path):
    """Check `ehrgen train` on a MEDS cohort, its refusal to overwrite, and
    --resume from a checkpoint."""
    from ehrgen.models.promptehr import PromptEHR

    cohort_dir, model_dir = tmp_path / "cohort", tmp_path / "model"
    run(
        monkeypatch,
        capsys,
        "data",
        "demo",
        "--patients",
        "40",
        "--out",
        str(cohort_dir),
    )
    args = [
        "train",
        str(cohort_dir),
        "--out",
        str(model_dir),
        "--preset",
        "tiny",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ]
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    model = PromptEHR.from_pretrained(model_dir)
    assert model.training_.train_patients == 32 and model.training_.val_patients == 4
    assert model.time_values_ is not None
    assert (model_dir / "time_values.safetensors").is_file()
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2 and "already holds a model" in err
    bare_dir = tmp_path / "bare"
    code, _, err = run(
        monkeypatch, capsys, *args[:2], "--out", str(bare_dir), *args[4:],
        "--epochs", "1", "--no-times", "--no-values",
    )  # fmt: skip
    assert code == 0, err
    bare = PromptEHR.from_pretrained(bare_dir)
    assert bare.time_values_ is None
    assert not (bare_dir / "time_values.safetensors").exists()
    assert bare.generate(5, seed=0).event_values is None
    checkpoint = sorted((model_dir / "training" / "checkpoints").iterdir())[-1]
    code, _, err = run(
        monkeypatch,
        capsys,
        *args,
        "--epochs",
        "3",
        "--resume",
        str(checkpoint),
        "--overwrite",
    )
    assert code == 0, err
    resumed = PromptEHR.from_pretrained(model_dir)
    assert resumed.training_.epochs_completed == 3
    assert resumed.training_.steps > model.training_.steps


def test_generate_and_impute(monkeypatch, capsys, tmp_path):
    """Check `ehrgen generate` (conditions, sampling, formats, errors) and
    `ehrgen impute` in its three modes."""
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.training import TrainingConfig

    cohort = demo_cohort(30, seed=0)
    model = PromptEHR(PromptEHRConfig.tiny()).fit(
        cohort, training=TrainingConfig(epochs=1)
    )
    model_dir = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "synthetic"
    code, text, err = run(
        monkeypatch,
        capsys,
        "generate",
        str(model_dir),
        "--n",
        "12",
        "--condition",
        "gender=F",
        "--condition",
        "age=70",
        "--top-p",
        "0.9",
        "--seed",
        "1",
        "--out",
        str(out),
    )
    assert code == 0, err
    synthetic = read_meds(out)
    assert len(synthetic) == 12 and "Wrote 12 patients" in text
    assert all(p.static["gender"] == "F" and p.static["age"] == 70 for p in synthetic)
    code, _, err = run(
        monkeypatch,
        capsys,
        "generate",
        str(model_dir),
        "--n",
        "3",
        "--format",
        "jsonl",
        "--out",
        str(tmp_path / "s.jsonl"),
    )
    assert code == 0 and len(read_jsonl(tmp_path / "s.jsonl")) == 3
    code, _, err = run(
        monkeypatch,
        capsys,
        "generate",
        str(model_dir),
        "--n",
        "3",
        "--condition",
        "sex=F",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "features are ['gender', 'ethnicity', 'age']" in err

    write_meds(cohort, tmp_path / "real")
    for mode, extra in (
        ("next-visit", ["--visit", "1"]),
        ("modality:drug", []),
        ("complete", ["--visit", "0"]),
    ):
        target = tmp_path / mode.replace(":", "-")
        code, _, err = run(
            monkeypatch,
            capsys,
            "impute",
            str(model_dir),
            str(tmp_path / "real"),
            "--mode",
            mode,
            *extra,
            "--out",
            str(target),
        )
        assert code == 0, err
        assert len(read_meds(target)) > 0
    next_visits = read_meds(tmp_path / "next-visit")
    assert all(len(p.visits) == 2 for p in next_visits)
    code, _, err = run(
        monkeypatch,
        capsys,
        "impute",
        str(model_dir),
        str(tmp_path / "real"),
        "--mode",
        "guess",
        "--out",
        str(tmp_path / "y"),
    )
    assert code == 2 and "--mode must be" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "lstm-mlp", "halo"])
def test_baselines_train_generate_and_evaluate_like_promptehr(
    monkeypatch, capsys, tmp_path, name
):
    """Check that `ehrgen train --model NAME`, `ehrgen generate` and `ehrgen
    evaluate` work for a baseline exactly as for PromptEHR, that `--max-steps`
    bounds training (and a run stopped inside an epoch is validated), and that
    imputation is refused with a clear message."""
    from ehrgen.models.registry import load_model

    cohort_dir, model_dir = tmp_path / "cohort", tmp_path / "model"
    run(
        monkeypatch,
        capsys,
        "data",
        "demo",
        "--patients",
        "40",
        "--out",
        str(cohort_dir),
    )
    code, _, err = run(
        monkeypatch, capsys, "train", str(cohort_dir), "--out", str(model_dir),
        "--model", name, "--preset", "tiny", "--epochs", "5", "--max-steps", "3",
    )  # fmt: skip
    assert code == 0, err
    model = load_model(model_dir)
    assert model.name == name and model.training_.steps == 3
    # Stopped inside the first epoch, it is still validated once.
    assert model.training_.best_val_perplexity > 1
    synthetic = tmp_path / "synthetic"
    code, _, err = run(
        monkeypatch, capsys, "generate", str(model_dir), "--n", "12",
        "--max-visits", "4", "--out", str(synthetic),
    )  # fmt: skip
    assert code == 0, err
    assert len(read_meds(synthetic)) == 12
    code, _, err = run(
        monkeypatch, capsys, "evaluate", str(model_dir), "--cohort", str(cohort_dir),
        "--synthetic", str(synthetic), "--suite", "perplexity,fidelity",
        "--resamples", "10", "--out", str(tmp_path / "evaluation"),
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert {"perplexity", "fidelity"} <= set(metrics)
    code, _, err = run(
        monkeypatch, capsys, "impute", str(model_dir), str(cohort_dir),
        "--mode", "next-visit", "--out", str(tmp_path / "imputed"),
    )  # fmt: skip
    assert code == 2 and "imputation needs a PromptEHR model" in err
    code, _, err = run(
        monkeypatch, capsys, "train", str(cohort_dir), "--out", str(tmp_path / "x"),
        "--model", "not-a-model",
    )  # fmt: skip
    assert code == 2 and "known models are" in err


def test_data_export_omop(monkeypatch, capsys, tmp_path):
    """Check that `data export --format omop` writes a CDM that reads back with the
    cohort's patients, visits and events, and refuses to overwrite it."""
    from ehrgen.data.formats.omop import read_omop

    demo, cdm = str(tmp_path / "demo"), str(tmp_path / "cdm")
    code, _, _ = run(
        monkeypatch, capsys, "data", "demo", "--patients", "12", "--out", demo
    )
    assert code == 0
    args = ("data", "export", demo, "--format", "omop", "--out", cdm)
    code, out, _ = run(monkeypatch, capsys, *args)
    assert code == 0 and "12 patients" in out
    cohort = read_meds(demo)
    back = read_omop(cdm, code_source="source_value")
    assert (len(back), back.n_visits, back.n_events) == (
        len(cohort),
        cohort.n_visits,
        cohort.n_events,
    )
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2 and "already exists" in err
