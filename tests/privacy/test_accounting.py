"""Noise calibration and accounting: ours against Opacus's own and the exact
Gaussian condition."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from ehrgen.privacy import DPConfig, PrivacyStatement
from ehrgen.privacy.accounting import (
    SGDAccountant,
    gaussian_delta,
    gaussian_sigma,
    sgd_noise_multiplier,
)
from ehrgen.privacy.statement import plan_budget


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [(1.1, 0.01, 500, 1e-5), (0.8, 0.04, 250, 1 / 1600), (2.0, 0.2, 40, 1e-3)],
)
def test_accountant_agrees_with_opacus_stepping(sigma, q, steps, delta):
    ours = SGDAccountant("rdp", [])
    theirs = RDPAccountant()
    for _ in range(steps):
        ours.step(sigma, q)
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.steps == steps
    assert ours.epsilon(delta) == pytest.approx(theirs.get_epsilon(delta), rel=1e-9)
    prv = SGDAccountant.from_dict({**ours.to_dict(), "accountant": "prv"})
    reference = PRVAccountant()
    reference.history = [(sigma, q, steps)]
    assert prv.epsilon(delta) == pytest.approx(reference.get_epsilon(delta), rel=1e-6)


def test_accountant_round_trips_and_counts_phases():
    accountant = SGDAccountant("rdp", [])
    for _ in range(3):
        accountant.step(1.0, 0.1)
    accountant.step(2.0, 0.1)
    again = SGDAccountant.from_dict(accountant.to_dict())
    assert again.history == [(1.0, 0.1, 3), (2.0, 0.1, 1)]
    assert again.epsilon(1e-5) == accountant.epsilon(1e-5)
    assert accountant.epsilon(1e-5, extra_steps=5) > accountant.epsilon(1e-5)


@pytest.mark.parametrize("epsilon", [0.5, 3.0, 8.0])
def test_noise_multiplier_spends_the_target_and_no_more(epsilon):
    q, steps, delta = 0.05, 200, 1e-4
    sigma = sgd_noise_multiplier(epsilon, delta, q, steps, "rdp")
    spent = SGDAccountant("rdp", [(sigma, q, steps)]).epsilon(delta)
    assert spent <= epsilon
    assert spent >= 0.99 * epsilon  # the noise is not wastefully large
    assert sgd_noise_multiplier(math.inf, delta, q, steps, "rdp") == 0.0


@pytest.mark.parametrize(("epsilon", "delta"), [(0.3, 1e-6), (1.0, 1e-5), (8.0, 1e-3)])
def test_gaussian_sigma_is_the_exact_least_noise(epsilon, delta):
    sigma = gaussian_sigma(epsilon, delta)
    assert gaussian_delta(sigma, epsilon) <= delta
    assert gaussian_delta(0.999 * sigma, epsilon) > delta
    if epsilon < 1:  # the classic bound holds there, and the exact one is tighter
        assert sigma < math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def test_budget_plan_adds_up_to_the_release():
    dp = DPConfig(epsilon=8.0)
    plan = plan_budget(dp, n_patients=1000, vocabulary_given=False)
    parts = [plan.sgd, plan.population, plan.vocabulary]
    assert math.fsum(p.epsilon for p in parts) == pytest.approx(8.0)
    assert math.fsum(p.delta for p in parts) == pytest.approx(1 / 1000)
    given = plan_budget(dp, n_patients=1000, vocabulary_given=True)
    assert given.vocabulary is None
    assert given.sgd.epsilon + given.population.epsilon == pytest.approx(8.0)


def test_statement_round_trips():
    from ehrgen.privacy import PrivacyPart

    statement = PrivacyStatement(
        8.0,
        (
            PrivacyPart("vocabulary", 0.8, 1e-4, "Gaussian", {"noise_sigma": 3.0}),
            PrivacyPart("training (DP-SGD)", 6.3, 1e-4, "DP-SGD", {"steps": 10}),
        ),
    )
    again = PrivacyStatement.from_dict(statement.to_dict())
    assert again == statement
    assert again.epsilon == pytest.approx(7.1)
    assert "training (DP-SGD)" in again.markdown()


def test_config_is_checked():
    from ehrgen.errors import ConfigError

    with pytest.raises(ConfigError, match="epsilon"):
        DPConfig(epsilon=0)
    with pytest.raises(ConfigError, match="numerical_bounds"):
        DPConfig(epsilon=1.0, numerical_bounds={"age": (10, 5)})
    with pytest.raises(ConfigError, match="below 1"):
        DPConfig(epsilon=1.0, vocabulary_share=0.6, population_share=0.5)
    config = DPConfig(epsilon=1.0, numerical_bounds={"age": [0, 100]})
    assert DPConfig.from_dict(config.to_dict()) == config
