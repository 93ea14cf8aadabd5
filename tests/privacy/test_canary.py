"""A canary: one inserted patient with a code sequence no one else has. Without noise
a small model memorises it (its likelihood ranks first among reference canaries that
were never inserted); at ε = 1 it does not (its rank is no better than chance).

Each canary has three visits, each a random set of codes from a pool of canary codes
that no demo patient holds; the vocabulary is public (it lists every canary code), so
that only DP-SGD stands between the canary and the weights."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from ehrgen.data import Patient, Visit
from ehrgen.data.cohort import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.evaluation.perplexity import patient_log_perplexities
from ehrgen.models.registry import build_model
from ehrgen.privacy import DPConfig
from ehrgen.tokens import CodeTokenizer
from ehrgen.training import TrainingConfig

POOL = [f"CANARY{i:02d}" for i in range(24)]
N_REFERENCES = 39  # the inserted canary is one of 40


def _canaries(template: Patient, n: int, rng: np.random.Generator) -> list[Patient]:
    out = []
    for i in range(n):
        start = template.visits[0].time
        visits = tuple(
            Visit(
                {"diagnosis": tuple(rng.choice(POOL, 4, replace=False).tolist())},
                start + timedelta(days=30 * t),
            )
            for t in range(3)
        )
        out.append(Patient(f"canary-{i}", dict(template.static), visits))
    return out


def _setting():
    real = demo_cohort(40, seed=0)
    template = real[0]
    canaries = _canaries(template, N_REFERENCES + 1, np.random.default_rng(7))
    train = Cohort.from_patients([*real, canaries[0]], real.schema)
    public = CodeTokenizer.fit(demo_cohort(200, seed=99))
    codes = {m: list(c) for m, c in public.codes.items()}
    codes["diagnosis"] += POOL
    vocabulary = CodeTokenizer(public.modalities, codes)
    return train, Cohort.from_patients(canaries, real.schema), vocabulary


def _rank_of_inserted(epsilon: float, seed: int, monkeypatch) -> float:
    """The inserted canary's rank among all canaries by diagnosis lpl, as a share
    (0: it is the likeliest)."""
    import ehrgen.privacy.sgd as sgd

    monkeypatch.setattr(sgd, "secure_seed", lambda: 1000 + seed)
    train, canaries, vocabulary = _setting()
    model = build_model("promptehr-one-pass", "tiny")
    training = TrainingConfig(
        epochs=20, learning_rate=1e-2, warmup_epochs=0, seed=seed,
        dp=DPConfig(epsilon=epsilon, expected_batch_patients=20),
    )  # fmt: skip
    model.fit(train, training=training, vocabulary=vocabulary)
    scores = model.score_longitudinal(canaries, "chain")
    nll = patient_log_perplexities(scores, len(canaries))[:, 0]
    return float((nll < nll[0]).sum()) / (len(canaries) - 1)


@pytest.mark.slow
def test_canary_is_memorised_without_noise_and_hidden_at_epsilon_one(monkeypatch):
    assert _rank_of_inserted(math.inf, 0, monkeypatch) == 0.0  # top 1 of 40
    ranks = [_rank_of_inserted(1.0, seed, monkeypatch) for seed in (1, 2, 3)]
    # Chance puts a canary first with probability 1/40 per seed; memorised, it is
    # first every time (as at ε = ∞).
    assert sum(rank == 0.0 for rank in ranks) <= 1, ranks
    assert 0.15 < float(np.mean(ranks)) < 0.85, ranks  # as chance would place it
