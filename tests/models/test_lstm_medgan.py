"""Tests of what is specific to LSTM+MedGAN: learning (against the uniform model and
a generator that ignores its condition), training stability, the Monte Carlo set
score, refused modes, config checks (the contract is in test_contract.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ehrgen.errors import ConfigError, EhrgenError
from ehrgen.evaluation.benchmark import table2_markdown
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.models.base import Generator
from ehrgen.models.baselines import LSTMMedGAN, LSTMMedGANConfig
from ehrgen.models.registry import build_model
from tests.models._gan_checks import (
    TRAINING,
    agree_to_two_figures,
    cli_round_trip,
    cohorts,
    critic_losses,
    distinct_visits,
    medians,
    states_step_by_step_match,
)


@pytest.fixture(scope="module")
def data():
    return cohorts()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The tiny model trained on 300 demo patients, and its output folder."""
    train, _ = data
    out = tmp_path_factory.mktemp("medgan")
    model = LSTMMedGAN(LSTMMedGANConfig.tiny())
    return model.fit(train, training=TRAINING, output_dir=out), out


@pytest.mark.slow
def test_beats_uniform_and_a_generator_that_ignores_its_condition(data, trained):
    """Check that lpl and mpl are below the vocabulary size (a uniform model) on
    every modality, and that lpl is below that of the same GAN whose generator
    sees zeros instead of its condition, on every modality."""
    train, test = data
    model, _ = trained
    ablated = LSTMMedGAN(LSTMMedGANConfig.tiny(ignore_condition=True))
    ablated.fit(train, training=TRAINING)
    sizes = {m: len(c) for m, c in model.tokenizer_.codes.items()}
    for task in ("lpl", "mpl"):
        figures = medians(model, test, task)
        assert all(figures[m] < sizes[m] for m in sizes), (task, figures, sizes)
    conditional, blind = medians(model, test, "lpl"), medians(ablated, test, "lpl")
    for m in sizes:
        assert conditional[m] < blind[m], (m, conditional, blind)


@pytest.mark.slow
def test_training_is_stable_and_does_not_collapse(data, trained):
    """Check that every discriminator loss logged is finite (and off its trivial
    values), and that generated visits are varied: at least half as many distinct
    visits as the real cohort has."""
    train, _ = data
    model, out = trained
    losses = critic_losses(out, TRAINING, model.config, len(train))
    assert len(losses) > 50 and np.isfinite(losses).all()
    assert losses.max() > 0.1  # the discriminator never won outright for good
    synthetic = model.generate(len(train), seed=0)
    assert distinct_visits(synthetic) >= distinct_visits(train) / 2
    visits = np.diff(synthetic.visit_offsets)
    assert visits.max() > 1 and visits.min() >= 1  # the end head stops some early


@pytest.mark.slow
def test_monte_carlo_score_is_reproducible_and_recorded(data, trained):
    """Check that the same noise seed gives identical scores, that two seeds give
    medians agreeing to two significant figures on every modality of both tasks,
    and that K flows into the scores and the perplexity result."""
    _, test = data
    model, _ = trained
    a = model.score_cross_modal(test, seed=1)
    np.testing.assert_array_equal(
        a.log_prob, model.score_cross_modal(test, seed=1).log_prob
    )
    for task in ("lpl", "mpl"):
        one, two = (
            medians(model, test, task, seed=1),
            medians(model, test, task, seed=2),
        )
        for m in one:
            assert agree_to_two_figures(one[m], two[m]), (task, m, one[m], two[m])
    assert a.mc_samples == model.config.score_samples == 512
    result = perplexity(model.score_longitudinal(test, samples=64), n_resamples=10)
    assert result.to_dict()["mc_samples"] == 64
    assert result.summary()[0].metric == "lpl diagnosis, median (set, MC K=64)"
    entry = {"lpl": {"set": result.to_dict()}, "mpl": {"set": result.to_dict()}}
    budget = {"epochs": 1, "batch_size": 8}
    results = {"models": {"lstm-medgan": entry}, "budget": budget, "preset": "tiny",
               "cohorts": {}}  # fmt: skip
    table = table2_markdown(results, list(model.tokenizer_.codes))
    assert "| lstm-medgan | set, MC K=64 |" in table
    with pytest.raises(ConfigError, match="'samples' parameter of LSTMMedGAN"):
        model.score_longitudinal(test, samples=0)


def test_imputation_modes_are_refused_naming_the_model_and_modes(trained, data):
    """Check that imputation modes raise an EhrgenError (and NotImplementedError)
    naming the model and what it supports."""
    model, _ = trained
    _, test = data
    for call in (model.continue_patients, model.impute_modality, model.complete_visits):
        with pytest.raises(EhrgenError, match=r"LSTMMedGAN \(lstm-medgan\).*generate"):
            call(test)
        with pytest.raises(NotImplementedError):
            call(test)
    with pytest.raises(NotImplementedError, match="'chain'.*lstm-medgan"):
        model.score_longitudinal(test, protocol="chain")


def test_registry_presets_and_protocol():
    """Check the registry builds every preset and that the model is a Generator."""
    for preset in ("tiny", "small", "paper"):
        assert isinstance(build_model("lstm-medgan", preset), LSTMMedGAN)
    assert build_model("lstm-medgan", "paper").config == LSTMMedGANConfig()
    assert isinstance(LSTMMedGAN(), Generator) and LSTMMedGAN.protocols == ("set",)


def test_config_round_trips_and_rejects_bad_values():
    """Check that configs round-trip through JSON-like dicts and reject bad
    values, naming the field."""
    config = LSTMMedGANConfig.tiny(discriminator=(8, 4))
    assert LSTMMedGANConfig.from_dict(config.to_dict()) == config
    bad = {"discriminator": (), "code": 0, "score_samples": 0,
           "pretrain_fraction": 1.0, "critic_steps": 1.5}  # fmt: skip
    for field, value in bad.items():
        with pytest.raises(ConfigError, match=field):
            LSTMMedGANConfig(**{field: value})
    with pytest.raises(ConfigError, match="lstm_hidden"):
        LSTMMedGANConfig.from_dict({"lstm_hiden": 3})


def test_validation_is_logged_but_never_picks_weights_or_stops(data, tmp_path):
    """Check that with a validation cohort and patience 1 the GAN trains every
    epoch, logs a finite validation figure each epoch and keeps its last
    weights (no best-by-validation figure)."""
    train, test = data
    settings = TRAINING.replace(epochs=6, patience=1)
    model = LSTMMedGAN(LSTMMedGANConfig.tiny())
    model.fit(train[:100], test, settings, output_dir=tmp_path)
    facts = model.training_
    assert facts.epochs_completed == 6 and not facts.stopped_early
    assert facts.best_val_perplexity is None and facts.val_patients == len(test)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    figures = [r["val_perplexity"] for r in records if "val_perplexity" in r]
    assert len(figures) == 6 and np.isfinite(figures).all()
    assert not (tmp_path / "best").exists()


def test_a_run_stopped_before_the_generator_trained_warns(data, caplog):
    """Check that a run cut by max_steps inside pretraining, and one too short
    for its generator, say so, naming the model and the fix."""
    train, _ = data
    settings = TRAINING.replace(epochs=10, max_steps=5)
    with caplog.at_level("WARNING"):
        LSTMMedGAN(LSTMMedGANConfig.tiny()).fit(train[:64], training=settings)
    assert "LSTMMedGAN trained its generator for 0 steps" in caplog.text
    assert "plan fewer epochs for this budget" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        LSTMMedGAN(LSTMMedGANConfig.tiny()).fit(
            train[:64], training=TRAINING.replace(epochs=1)
        )
    assert "train for more epochs" in caplog.text


@pytest.mark.slow
def test_cli_trains_generates_evaluates_and_refuses_imputation(
    monkeypatch, capsys, tmp_path
):
    """Check that the command line trains, generates and evaluates the model like
    every other, and refuses imputation in one line naming the model."""
    cli_round_trip(monkeypatch, capsys, tmp_path, "lstm-medgan")


def test_sampling_carries_the_state_the_scores_read(trained):
    """Check that the LSTM state carried visit by visit in sampling equals the
    state read over the whole history, as scoring and training read it."""
    model, _ = trained
    states_step_by_step_match(model)
