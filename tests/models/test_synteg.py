"""Tests of what is specific to SynTEG: learning (against the uniform model and
a generator that ignores its condition), training stability, the Monte Carlo set
score, visit gaps as input, refused modes, config checks (the contract is in
test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.errors import ConfigError, EhrgenError
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.models.base import Generator
from ehrgen.models.baselines import SynTEG, SynTEGConfig
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
    out = tmp_path_factory.mktemp("synteg")
    model = SynTEG(SynTEGConfig.tiny())
    return model.fit(train, training=TRAINING, output_dir=out), out


@pytest.mark.slow
def test_beats_uniform_and_a_generator_that_ignores_its_condition(data, trained):
    """Check that lpl and mpl are below the vocabulary size (a uniform model) on
    every modality, and that lpl is below that of the same GAN whose generator
    sees zeros instead of its condition, on every modality."""
    train, test = data
    model, _ = trained
    ablated = SynTEG(SynTEGConfig.tiny(ignore_condition=True))
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
    """Check that every critic loss logged (Wasserstein estimate plus gradient
    penalty) is finite, and small over the second half of training, and that
    generated visits are varied: at least half as many distinct visits as the
    real cohort has."""
    train, _ = data
    model, out = trained
    losses = critic_losses(out, TRAINING, model.config, len(train))
    assert len(losses) > 100 and np.isfinite(losses).all()
    settled = losses[len(losses) // 2 :]  # the penalty is large for a few steps
    assert np.abs(settled).max() < 10, settled
    synthetic = model.generate(len(train), seed=0)
    assert distinct_visits(synthetic) >= distinct_visits(train) / 2
    visits = np.diff(synthetic.visit_offsets)
    assert visits.max() > 1 and visits.min() >= 1  # the end code stops some early


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
    with pytest.raises(ConfigError, match="'samples' parameter of SynTEG"):
        model.score_longitudinal(test, samples=0)


def test_imputation_modes_are_refused_naming_the_model_and_modes(trained, data):
    """Check that imputation modes raise an EhrgenError (and NotImplementedError)
    naming the model and what it supports."""
    model, _ = trained
    _, test = data
    for call in (model.continue_patients, model.impute_modality, model.complete_visits):
        with pytest.raises(EhrgenError, match=r"SynTEG \(synteg\).*generate"):
            call(test)
        with pytest.raises(NotImplementedError):
            call(test)
    with pytest.raises(NotImplementedError, match="'chain'.*synteg"):
        model.score_longitudinal(test, protocol="chain")


def test_registry_presets_and_protocol():
    """Check the registry builds every preset and that the model is a Generator."""
    for preset in ("tiny", "small", "paper"):
        assert isinstance(build_model("synteg", preset), SynTEG)
    assert build_model("synteg", "paper").config == SynTEGConfig()
    assert isinstance(SynTEG(), Generator) and SynTEG.protocols == ("set",)


def test_config_round_trips_and_rejects_bad_values():
    """Check that configs round-trip through JSON-like dicts and reject bad
    values, naming the field."""
    config = SynTEGConfig.tiny(critic=(8, 4))
    assert SynTEGConfig.from_dict(config.to_dict()) == config
    bad = {"critic": (), "embedding": 0, "heads": 3, "dropout": 1.0,
           "score_samples": 0, "pretrain_fraction": 1.0,
           "critic_steps": 1.5}  # fmt: skip
    for field, value in bad.items():
        with pytest.raises(ConfigError, match=field):
            SynTEGConfig(**{field: value})
    with pytest.raises(ConfigError, match="lstm_hidden"):
        SynTEGConfig.from_dict({"lstm_hiden": 3})


def test_visit_gaps_are_read_and_the_paper_generator_is_available(trained, data):
    """Check that the gap before an earlier visit changes the longitudinal scores
    of later visits, and that dependency_base=False leaves the generator's logits
    its own."""
    model, _ = trained
    train, _ = data
    patient = next(p for p in train if len(p.visits) >= 3)
    moved = [*patient.visits]
    shift = moved[1].time - moved[0].time
    moved = [moved[0], *(Visit(v.events, v.time + 5 * shift) for v in moved[1:])]
    scores = [
        model.score_longitudinal(
            Cohort.from_patients([Patient("1", patient.static, tuple(v))], train.schema)
        ).log_prob
        for v in (patient.visits, moved)
    ]
    assert not np.allclose(*scores, atol=1e-4)
    network = SynTEG(SynTEGConfig.tiny(dependency_base=False))._empty_network(
        model.tokenizer_, train.schema, None
    )
    noise, condition = torch.randn(3, 8), torch.rand(3, 16)
    torch.testing.assert_close(
        network.generator_logits(noise, condition),
        network.generator(noise, condition),
    )


def _one(patient: Patient, visits, train: Cohort) -> Cohort:
    return Cohort.from_patients(
        [Patient("1", patient.static, tuple(visits))], train.schema
    )


@pytest.mark.slow
def test_cli_trains_generates_evaluates_and_refuses_imputation(
    monkeypatch, capsys, tmp_path
):
    """Check that the command line trains, generates and evaluates the model like
    every other, and refuses imputation in one line naming the model."""
    cli_round_trip(monkeypatch, capsys, tmp_path, "synteg")


def test_sampling_carries_the_state_the_scores_read(trained):
    """Check that the LSTM state carried visit by visit in sampling equals the
    state read over the whole history, as scoring and training read it."""
    model, _ = trained
    states_step_by_step_match(model)
