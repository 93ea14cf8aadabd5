"""Checks both GAN baselines' tests run (LSTM+MedGAN, SynTEG): learning against the
uniform model and against a generator that ignores its condition, training
stability, Monte Carlo score reproducibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.models.baselines.gan_common import CRITIC, phase_of, pretrain_steps
from ehrgen.training import TrainingConfig

#: Enough steps on 300 demo patients for a tiny GAN to learn (a few seconds).
TRAINING = TrainingConfig(
    epochs=30, batch_size=32, learning_rate=2e-3, weight_decay=0.0,
    warmup_epochs=0.0, checkpoint_every_steps=None,
)  # fmt: skip


def cohorts() -> tuple[Cohort, Cohort]:
    return demo_cohort(300, seed=0), demo_cohort(100, seed=1)


def medians(model, cohort: Cohort, task: str, **kwargs) -> dict[str, float]:
    """Per modality, the median per-patient set perplexity (lpl or mpl)."""
    scorer = model.score_longitudinal if task == "lpl" else model.score_cross_modal
    result = perplexity(scorer(cohort, **kwargs), n_resamples=10)
    return {m: f.median for m, f in result.modalities.items()}


def agree_to_two_figures(a: float, b: float) -> bool:
    """True when a and b differ by less than half a unit of their second
    significant figure (e.g. 8.47 and 8.51: the unit is 0.1)."""
    unit = 10 ** (math.floor(math.log10(max(abs(a), abs(b)))) - 1)
    return abs(a - b) < unit / 2


def distinct_visits(cohort: Cohort) -> int:
    return len(
        {
            tuple(sorted((m, c) for m, codes in v.events.items() for c in codes))
            for p in cohort
            for v in p.visits
        }
    )


def critic_losses(output_dir: Path, training: TrainingConfig, config, n: int):
    """The logged losses of the critic's steps in a run's ``metrics.jsonl``."""
    pretrain = pretrain_steps(n, training, config)
    losses = []
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            step = record["step"] - 1  # logged after the step
            if phase_of(step, pretrain, config.critic_steps) == CRITIC:
                losses.append(record["loss"])
    return np.array(losses)


def cli_round_trip(monkeypatch, capsys, tmp_path, name: str) -> None:
    """`ehrgen train --model NAME`, `generate`, `evaluate` (perplexity, with K in
    the metric's name) and `impute` (refused in one line naming the model)."""
    from tests.test_cli import run

    cohort, model = tmp_path / "cohort", tmp_path / "model"
    code, _, err = run(monkeypatch, capsys, "data", "demo", "--patients", "60",
                       "--out", str(cohort))  # fmt: skip
    assert code == 0, err
    code, _, err = run(monkeypatch, capsys, "train", str(cohort), "--out",
                       str(model), "--model", name, "--preset", "tiny",
                       "--epochs", "3")  # fmt: skip
    assert code == 0, err
    synthetic = tmp_path / "synthetic"
    code, _, err = run(monkeypatch, capsys, "generate", str(model), "--n", "10",
                       "--out", str(synthetic))  # fmt: skip
    assert code == 0, err
    code, _, err = run(monkeypatch, capsys, "evaluate", str(model), "--cohort",
                       str(cohort), "--synthetic", str(synthetic), "--suite",
                       "perplexity", "--resamples", "10", "--out",
                       str(tmp_path / "evaluation"))  # fmt: skip
    assert code == 0, err
    text = (tmp_path / "evaluation" / "metrics.json").read_text()
    assert "MC K=512" in text
    code, _, err = run(monkeypatch, capsys, "impute", str(model), str(cohort),
                       "--mode", "modality:drug", "--out",
                       str(tmp_path / "imputed"))  # fmt: skip
    assert code == 2 and f"({name}) cannot impute a modality" in err
    assert "Traceback" not in err


def states_step_by_step_match(model) -> None:
    """The LSTM state carried visit by visit (as sampling does) equals the states
    of :meth:`GANNetwork.states` read over the whole history at once."""
    import torch

    network = model.model_.eval()
    generator = torch.Generator().manual_seed(0)
    visits = (torch.rand(3, 4, network.n_codes, generator=generator) < 0.1).float()
    gaps = torch.rand(3, 4, generator=generator)
    static = torch.rand(3, network.n_static, generator=generator)
    with torch.no_grad():
        whole = network.states(visits, gaps, static)  # (B, T + 1, H)
        memory, steps = None, [network.initial.expand(3, -1)]
        for t in range(4):
            x = network.visit_inputs(visits[:, t : t + 1], gaps[:, t : t + 1], static)
            out, memory = network.lstm(x, memory)
            steps.append(out[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-5, rtol=1e-5)
