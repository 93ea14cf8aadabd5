"""DP-SGD over patients, and a DP model from fit to folder to generation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError
from ehrgen.models.registry import build_model, load_model
from ehrgen.privacy import DPConfig
from ehrgen.privacy.sgd import DPSGD
from ehrgen.privacy.statement import Budget
from ehrgen.tokens import CodeTokenizer
from ehrgen.training import TrainingConfig


class _SumModel(torch.nn.Module):
    """loss_sum = w · (sum of a patient's targets): the gradient norm grows with
    the number of targets a patient has."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch):
        loss = (batch["x"] @ self.w).sum()
        return SimpleNamespace(loss_sum=loss, n_tokens=torch.tensor(len(batch["x"])))


def _mechanism(epsilon: float, n: int = 100, batch: int = 10) -> DPSGD:
    dp = DPConfig(epsilon=epsilon, expected_batch_patients=batch, max_grad_norm=1.0)
    return DPSGD(dp, Budget(epsilon, 1e-5), n, planned_steps=50)


def test_sampling_is_poisson():
    dp = _mechanism(8.0, n=200, batch=20)
    sizes = np.array([len(dp.sample()) for _ in range(400)])
    assert len(set(sizes.tolist())) > 5  # batch sizes vary
    assert sizes.mean() == pytest.approx(20, rel=0.1)  # q n on average
    assert sizes.var() == pytest.approx(200 * 0.1 * 0.9, rel=0.3)  # binomial


def test_clipping_is_per_patient_whatever_its_number_of_targets():
    dp = _mechanism(math.inf)
    model = _SumModel()
    rows = {0: torch.ones(1, 3), 1: torch.ones(40, 3) * 5}  # 1 visit against 40

    def batch_of(patient):
        return {"x": rows[patient]}

    norms = []
    for patient in (0, 1):
        dp.gradients(model, np.array([patient]), batch_of)
        norms.append(float(model.w.grad.norm()) * dp.sample_rate * dp.n_patients)
    assert norms[0] == pytest.approx(1.0, rel=1e-5)  # clipped to C
    assert norms[1] == pytest.approx(1.0, rel=1e-5)  # no more than C, not 200x


def test_noise_has_the_calibrated_scale():
    dp = _mechanism(1.0)
    model = torch.nn.Linear(200, 50)
    dp.gradients(model, np.array([], dtype=np.int64), lambda p: {})
    expected = dp.noise_multiplier * 1.0 / (dp.sample_rate * dp.n_patients)
    assert float(model.weight.grad.std()) == pytest.approx(expected, rel=0.05)
    assert dp.accountant.steps == 1


def _tiny_private(epsilon=8.0, objective="one-pass", **training):
    model = build_model("promptehr-one-pass", "tiny")
    model.config = model.config.replace(objective=objective)
    config = TrainingConfig(
        epochs=1,
        dp=DPConfig(epsilon=epsilon, expected_batch_patients=8),
        **training,
    )
    return model, config


def _public_vocabulary():
    """A vocabulary that owes nothing to the training patients."""
    return CodeTokenizer.fit(demo_cohort(200, seed=99))


def test_a_dp_model_folder_says_it_is_dp_and_needs_nothing_else(tmp_path):
    cohort = demo_cohort(48, seed=0)
    model, training = _tiny_private()
    model.fit(
        cohort, demo_cohort(10, seed=9), training, vocabulary=_public_vocabulary()
    )
    statement = model.privacy_
    names = [p.name for p in statement.parts]
    assert names == ["population summary", "training (DP-SGD)"]
    assert statement.epsilon <= 8.0
    assert statement.delta == pytest.approx(1 / 48)
    assert model.training_.val_patients == 0  # validation patients never read
    assert model.training_.train_visits is None  # no exact count of the cohort
    folder = model.save_pretrained(tmp_path / "model")
    info = json.loads((folder / "ehrgen.json").read_text())
    assert info["privacy"]["epsilon"] == pytest.approx(statement.epsilon)
    assert "Differentially private" in (folder / "model_card.md").read_text()
    again = load_model(folder)
    assert again.privacy_ == statement
    assert len(again.generate(3, seed=0)) == 3
    with pytest.raises(ConfigError, match="differential privacy"):
        again.calibrate_length(cohort)
    # The evaluation report states the guarantee, part by part.
    from ehrgen.evaluation import evaluate, write_report

    result = evaluate(again, cohort, demo_cohort(20, seed=5), suites="fidelity",
                      from_seeds=False, n_resamples=20)  # fmt: skip
    page = write_report(result, tmp_path / "report").read_text()
    assert "Differentially private model" in page
    assert f"ε = {statement.epsilon:.3g}" in page
    assert "population summary" in page and "training (DP-SGD)" in page


def test_a_small_cohort_gets_a_clear_error_not_an_empty_vocabulary(monkeypatch):
    # The threshold lets a code through with probability up to δ = 1/n by design
    # (about 5-8 % of runs keep a lab code with 30 patients), so the release noise
    # is pinned to a draw that keeps none; the message is what is under test.
    monkeypatch.setattr("ehrgen.privacy.sgd.secure_seed", lambda: 0)
    model, training = _tiny_private()
    with pytest.raises(ConfigError, match="vocabulary is empty.*needs about"):
        model.fit(demo_cohort(30, seed=0), training=training)


def test_dp_training_stops_at_its_budget_when_resumed_for_more(tmp_path):
    cohort = demo_cohort(40, seed=0)
    model, training = _tiny_private(checkpoint_every_steps=1)
    vocabulary = _public_vocabulary()
    model.fit(cohort, training=training, output_dir=tmp_path / "run",
              vocabulary=vocabulary)  # fmt: skip
    first = model.privacy_.part("training (DP-SGD)")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert not any("loss" in record or "tokens_per_s" in record for record in log)
    assert log[-1]["epsilon"] == pytest.approx(first.epsilon)
    last = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    more = training.replace(epochs=4)
    again, _ = _tiny_private()
    again.fit(cohort, training=more, output_dir=tmp_path / "run", resume_from=last)
    assert next(p.name for p in again.privacy_.parts) == "population summary"
    part = again.privacy_.part("training (DP-SGD)")
    assert part.details["noise_multiplier"] == first.details["noise_multiplier"]
    assert part.details["steps"] >= first.details["steps"]
    assert part.details["steps"] < 4 * first.details["steps"]  # stopped by budget
    assert again.privacy_.epsilon <= 8.0


def test_dp_needs_a_model_and_objective_that_support_it():
    cohort = demo_cohort(20, seed=0)
    model, training = _tiny_private(objective="paper")
    with pytest.raises(ConfigError, match="one-pass"):
        model.fit(cohort, training=training)
    with pytest.raises(ConfigError, match="cannot be trained with differential"):
        build_model("lstm-mlp", "tiny").fit(cohort, training=training)


def test_cli_trains_a_dp_model_and_states_epsilon(monkeypatch, capsys, tmp_path):
    from ehrgen.data.formats.meds import write_meds
    from tests.test_cli import run

    write_meds(demo_cohort(40, seed=0), tmp_path / "cohort")
    _public_vocabulary().save(tmp_path / "tokenizer.json")
    code, out, err = run(
        monkeypatch, capsys, "train", str(tmp_path / "cohort"), "--out",
        str(tmp_path / "model"), "--preset", "tiny", "--epochs", "1",
        "--dp-epsilon", "8", "--dp-batch-patients", "8",
        "--vocabulary", str(tmp_path / "tokenizer.json"),
    )  # fmt: skip
    assert code == 0, err
    assert "one-pass objective" in out
    assert "Differentially private: (ε = " in out
    model = load_model(tmp_path / "model")
    assert model.privacy_.epsilon <= 8.0
    assert model._check_fitted().length_calibration is None  # not calibrated
