"""Tests of the paper's Table 2 benchmark (`run_benchmark` and `ehrgen benchmark`)."""

from __future__ import annotations

import json
import math

import pytest

from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import write_meds
from ehrgen.errors import ConfigError
from ehrgen.evaluation.benchmark import run_benchmark, table2_markdown
from ehrgen.training import TrainingConfig
from tests.test_cli import run

MODELS = ("lstm-mlp", "gpt2")


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """Two tiny registry models trained one epoch on a 40-patient demo cohort, and
    the folder of outputs their benchmark wrote."""
    cohort = demo_cohort(40, seed=0)
    train, val, test = cohort.split([0.5, 0.1, 0.4], seed=0)
    training = TrainingConfig(epochs=1, batch_size=8, checkpoint_every_steps=None)
    out = tmp_path_factory.mktemp("benchmark")
    results = run_benchmark(train, val, test, MODELS, training, "tiny", out)
    return results, out, list(test.schema.modalities)


@pytest.mark.slow
def test_outputs_are_written(benchmark):
    """Check that table2.md, results.json and table2.png are written, and that
    results.json holds what run_benchmark returned."""
    results, out, _ = benchmark
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == json.loads(
        json.dumps(results)
    )
    assert (out / "table2.md").read_text().startswith("| model | protocol |")
    assert results["cohorts"] == {"train": 20, "val": 4, "test": 16}
    assert results["preset"] == "tiny" and results["budget"]["epochs"] == 1


@pytest.mark.slow
def test_every_model_and_protocol_has_finite_figures(benchmark):
    """Check that each model has finite lpl and mpl medians and intervals in every
    modality under each protocol it supports, and that lstm-mlp has no chain row."""
    results, _, modalities = benchmark
    assert list(results["models"]) == list(MODELS)
    assert set(results["models"]["gpt2"]["lpl"]) == {"chain", "set"}
    for name, entry in results["models"].items():
        assert set(entry["lpl"]) == set(entry["mpl"])
        for metric in ("lpl", "mpl"):
            for protocol, result in entry[metric].items():
                assert (result["metric"], result["protocol"]) == (metric, protocol)
                for modality in modalities:
                    figure = result["modalities"][modality]
                    assert figure["n_patients"] > 0, (name, metric, modality)
                    values = [figure[k] for k in ("median", "ci_low", "ci_high")]
                    assert all(math.isfinite(v) and v >= 1 for v in values), values
    assert set(results["models"]["lstm-mlp"]["lpl"]) == {"set"}


@pytest.mark.slow
def test_table_has_one_row_per_model_and_protocol(benchmark):
    """Check that table2.md has one row per (model, protocol) pair, lstm-mlp's set
    row only, and a cell per modality and metric."""
    results, out, modalities = benchmark
    text = (out / "table2.md").read_text()
    assert text == table2_markdown(results, modalities)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    header, separator, *body = rows
    pairs = [(cells[0].removeprefix("| "), cells[1]) for cells in body]
    assert pairs == [("lstm-mlp", "set"), ("gpt2", "chain"), ("gpt2", "set")]
    assert separator[0] == "| ---" and header[1] == "protocol"
    assert all(len(cells) == 2 + 2 * len(modalities) for cells in rows)
    assert "lower is better" in text and "Budget: 1 epochs" in text


def test_unknown_model_is_refused_before_training():
    """Check that an unknown name among known ones is refused before any model
    trains, with a suggestion, and that an empty list is refused."""
    cohort = demo_cohort(8, seed=0)
    training = TrainingConfig(epochs=1)
    with pytest.raises(ConfigError, match="Did you mean 'lstm-mlp'"):
        run_benchmark(cohort, None, cohort, ["gpt2", "lstm-mpl"], training, "tiny")
    with pytest.raises(ConfigError, match="at least one model"):
        run_benchmark(cohort, None, cohort, [], training, "tiny")


def test_cli_unknown_model_fails_in_one_line(monkeypatch, capsys, tmp_path):
    """Check that `ehrgen benchmark --models` with an unknown name exits with code 2
    and a one-line error naming it, and writes nothing."""
    write_meds(demo_cohort(20, seed=0), tmp_path / "cohort")
    out = tmp_path / "table2"
    code, _, err = run(
        monkeypatch, capsys, "benchmark", str(tmp_path / "cohort"),
        "--models", "lstm-mlp,promptehrr", "--preset", "tiny", "--epochs", "1",
        "--out", str(out),
    )  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "Unknown model 'promptehrr'" in err and "Did you mean 'promptehr'" in err
    assert not out.exists()
