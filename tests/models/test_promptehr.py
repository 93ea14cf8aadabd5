"""Tests of the PromptEHR model: learning, prompts, resume, persistence, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, CohortSchema, Patient, Visit
from ehrgen.data.demo import demo_cohort, demo_truth
from ehrgen.errors import ConfigError, NotFittedError, SchemaError
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.models.promptehr.tasks import TaskConfig
from ehrgen.training import TrainingConfig

NO_CORRUPTION = TaskConfig(
    mask_rate=0,
    delete_rate=0,
    infill_rate=0,
    shuffle_rate=0,
    permute_rate=0,
    shuffle_targets=False,
)


def quick(**changes) -> TrainingConfig:
    base = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2,
            "checkpoint_every_steps": None}  # fmt: skip
    return TrainingConfig(**{**base, **changes})


def weights(model: PromptEHR) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.model_.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "batch_size"), [("one-pass", 2), ("paper", 8)])
def test_tiny_model_overfits_eight_patients(objective, batch_size):
    """Check that a tiny model learns 8 patients almost by heart.

    Without corruption, the teacher-forced perplexity of its own training patients
    must fall below 1.5 (each next token predicted with probability > 2/3 on
    average), while an untrained model sits near the size of the grammar-restricted
    choice (tens of tokens)."""
    cohort = demo_cohort(8, seed=1)
    untrained = PromptEHR(PromptEHRConfig.tiny(), NO_CORRUPTION).fit(
        cohort, training=quick(epochs=1, max_steps=1, learning_rate=1e-9),
    )  # fmt: skip
    assert untrained.perplexity(cohort) > 10
    # One-pass items are patients, paper examples are targets: about as many
    # optimiser steps per epoch with a quarter of the batch size.
    model = PromptEHR(PromptEHRConfig.tiny(objective=objective), NO_CORRUPTION).fit(
        cohort,
        val=cohort,
        training=quick(epochs=80, patience=None, batch_size=batch_size),
    )
    assert model.perplexity(cohort) < 1.5
    assert model.training_.best_val_perplexity == pytest.approx(
        model.perplexity(cohort)
    )


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "batch_size"), [("one-pass", 16), ("paper", 32)])
def test_prompts_carry_gender(objective, batch_size):
    """Check that, trained briefly on first visits of 15-45-year-olds of the demo
    cohort, the model puts a female-only diagnosis first in a woman's first visit
    far more often than in a man's (the simulator never gives it to men)."""
    full = demo_cohort(1500, seed=0)
    young = [p for p in full if 15 <= p.static["age"] < 45]
    cohort = Cohort.from_patients(
        [Patient(p.patient_id, p.static, p.visits[:1]) for p in young], full.schema
    )
    # A paper example is a target (two per patient here), a one-pass item a patient:
    # the same optimiser steps with half the batch size.
    tasks = TaskConfig(longitudinal_share=1.0, cloze_rate=0.0)
    model = PromptEHR(PromptEHRConfig.tiny(objective=objective), tasks).fit(
        cohort, training=quick(epochs=20, batch_size=batch_size),
    )  # fmt: skip
    female = [c for c, g in demo_truth().gender_specific_codes.items()
              if g == "F" and c in model.tokenizer_.codes["diagnosis"]]  # fmt: skip
    assert female
    p_woman = _first_code_probability(model, "F", female)
    p_man = _first_code_probability(model, "M", female)
    assert p_woman > 0.05
    assert p_woman > 5 * p_man


def _first_code_probability(model: PromptEHR, gender: str, codes: list[str]) -> float:
    tok, schema = model.tokenizer_, model.schema_
    categorical = torch.tensor(
        [
            [
                schema.categorical["gender"].index(gender),
                schema.categorical["ethnicity"].index("white"),
            ]
        ]
    )
    numerical = torch.tensor([[30.0]])
    source = torch.tensor([[tok.bos_id, tok.eos_id]])
    target = torch.tensor([[tok.bos_id, tok.visit_open_id, tok.open_ids["diagnosis"]]])
    net = model.model_
    with torch.no_grad():
        states, mask = net.encode(
            source, torch.ones_like(source), categorical, numerical
        )
        hidden, _ = net.decode(target, torch.ones_like(target), states, mask,
                               categorical, numerical)  # fmt: skip
        logits = net.logits(hidden, torch.tensor([[-1, -1, 0]]))
    probs = torch.softmax(logits[0, -1], -1)
    return float(sum(probs[tok.code_id("diagnosis", c)] for c in codes))


def test_resume_continues_where_it_stopped(tmp_path):
    """Check that stopping after k steps and resuming gives the same step count,
    learning-rate schedule and weights as one uninterrupted run."""
    cohort = demo_cohort(16, seed=2)
    settings = quick(epochs=3, learning_rate=3e-3)
    whole = PromptEHR(PromptEHRConfig.tiny()).fit(cohort, training=settings)
    steps = whole.training_.steps
    k = 3  # mid-epoch: 16 patients give more than 3 batches per epoch
    PromptEHR(PromptEHRConfig.tiny()).fit(
        cohort, training=settings.replace(max_steps=k, checkpoint_every_steps=k),
        output_dir=tmp_path,
    )  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / f"step-{k:07d}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["state"]["step"] == k and state["scheduler"]["last_epoch"] == k
    resumed = PromptEHR(PromptEHRConfig.tiny()).fit(
        cohort, training=settings, resume_from=checkpoint
    )
    assert resumed.training_.steps == steps
    expected, got = weights(whole), weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_checkpoints_are_complete_models(tmp_path):
    """Check that checkpoints and best/ load as models and old ones are pruned."""
    cohort = demo_cohort(16, seed=4)
    train, val = cohort.split([0.75, 0.25], seed=0)
    PromptEHR(PromptEHRConfig.tiny()).fit(
        train, val, quick(epochs=2, checkpoint_every_steps=1, keep_checkpoints=2),
        output_dir=tmp_path,
    )  # fmt: skip
    checkpoints = sorted((tmp_path / "checkpoints").iterdir())
    assert len(checkpoints) == 2
    assert PromptEHR.from_pretrained(checkpoints[-1]).perplexity(val) > 1
    assert PromptEHR.from_pretrained(tmp_path / "best").perplexity(val) > 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any("val_perplexity" in r for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r)


@pytest.mark.slow
def test_two_processes_on_cpu(tmp_path):
    """Check that two processes (torchrun, as `accelerate launch --multi_gpu` on
    GPUs) train together and write one valid checkpoint."""
    script = Path(__file__).with_name("_ddp_train.py")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["world"] == 2
    checkpoints = list((tmp_path / "checkpoints").iterdir())
    assert checkpoints
    model = PromptEHR.from_pretrained(checkpoints[-1])
    assert model.perplexity(demo_cohort(6, seed=9)) > 1


def test_bad_input_is_refused(tmp_path):
    """Check the errors for an empty cohort, a cohort lacking a modality the model
    expects, and invalid configs."""
    with pytest.raises(NotFittedError, match="not fitted yet"):
        _ = PromptEHR().tokenizer_
    empty = Cohort.from_patients([], CohortSchema())
    with pytest.raises(SchemaError, match="training cohort is empty"):
        PromptEHR(PromptEHRConfig.tiny()).fit(empty)
    cohort = demo_cohort(8, seed=0)
    model = PromptEHR(PromptEHRConfig.tiny()).fit(cohort, training=quick(epochs=1))
    no_lab = Cohort.from_patients(
        [Patient("1", {}, (Visit({"diagnosis": ["ICD9CM//4019"]}),))],
        CohortSchema(modalities=("diagnosis", "procedure", "drug")),
    )
    with pytest.raises(SchemaError, match="Use a cohort of the same modalities"):
        model.perplexity(no_lab)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(SchemaError, match="Use a cohort of the same modalities"):
        PromptEHR().fit(no_lab, resume_from=tmp_path / "m")
    with pytest.raises(ConfigError, match="'encoder_attention_heads' .* divisor of"):
        PromptEHRConfig(d_model=30, encoder_attention_heads=4)
    with pytest.raises(ConfigError, match="'batch_size' parameter of TrainingConfig"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ConfigError, match="'mixed_precision'"):
        TrainingConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="'preset' parameter"):
        PromptEHRConfig.preset("huge")


def test_configs_round_trip():
    """Check to_dict/from_dict of the configs."""
    for config in (PromptEHRConfig.tiny(), PromptEHRConfig.paper(), TrainingConfig()):
        assert type(config).from_dict(config.to_dict()) == config
    assert PromptEHRConfig.paper().d_model == 768
    assert np.isclose(TrainingConfig().weight_decay, 1e-4)


def test_cohorts_without_or_with_missing_features_train():
    """Check that a cohort with no baseline feature trains (empty prompt), and that
    missing values use the unknown category and the learned missing vector."""
    bare = Cohort.from_patients(
        [Patient(str(i), {}, (Visit({"diagnosis": ["a", "b"][: i % 2 + 1]}),))
         for i in range(6)]
    )  # fmt: skip
    model = PromptEHR(PromptEHRConfig.tiny()).fit(bare, training=quick(epochs=1))
    assert model.model_.n_prompts == 0 and np.isfinite(model.perplexity(bare))
    cohort = demo_cohort(10, seed=0)
    patients = list(cohort)
    patients[0] = Patient(patients[0].patient_id, {}, patients[0].visits)
    gappy = Cohort.from_patients(patients, cohort.schema)
    model = PromptEHR(PromptEHRConfig.tiny()).fit(gappy, training=quick(epochs=1))
    assert model.model_.n_prompts == 3 and np.isfinite(model.perplexity(gappy))


def test_early_stopping_when_validation_worsens():
    """Check that training stops once validation perplexity fails to improve for
    `patience` evaluations, and keeps the best epoch's weights."""
    train, val = demo_cohort(8, seed=1), demo_cohort(8, seed=2)
    model = PromptEHR(PromptEHRConfig.tiny(), NO_CORRUPTION).fit(
        train, val, quick(epochs=60, patience=2)
    )
    facts = model.training_
    assert facts.stopped_early and facts.epochs_completed < 60
    assert facts.epochs_completed == facts.best_epoch + 2
    assert model.perplexity(val) == pytest.approx(facts.best_val_perplexity)
