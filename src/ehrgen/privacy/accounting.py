"""Noise calibration and accounting.

DP-SGD's noise multiplier and its ε come from Opacus's accountants (Rényi DP or PRV)
for the subsampled Gaussian mechanism: Poisson sampling at rate q, noise σ·C, for a
number of steps. The one-shot Gaussian mechanism of the vocabulary is calibrated
exactly (Balle and Wang, 2018, Theorem 8), not with the loose
``sqrt(2 ln(1.25/δ)) / ε`` bound, which also needs ε < 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["SGDAccountant", "gaussian_delta", "gaussian_sigma", "sgd_noise_multiplier"]


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """The smallest δ for which N(0, σ²) noise on an L2-sensitivity ``sensitivity``
    query is (ε, δ)-DP (the exact condition of the analytic Gaussian mechanism)."""
    from scipy.stats import norm

    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    # e^ε Φ(-a - b) in log space, so that a large ε cannot overflow.
    return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a - b)))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least noise σ making the Gaussian mechanism (ε, δ)-DP (0 for ε = ∞)."""
    from scipy.optimize import brentq

    if math.isinf(epsilon):
        return 0.0
    low, high = 1e-6 * sensitivity, sensitivity
    while gaussian_delta(high, epsilon, sensitivity) > delta:
        high *= 2
    return float(
        brentq(
            lambda s: gaussian_delta(s, epsilon, sensitivity) - delta,
            low,
            high,
            xtol=1e-10 * sensitivity,
        )
    ) * (1 + 1e-9)  # on the safe side of the root


def sgd_noise_multiplier(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """σ such that ``steps`` DP-SGD steps at rate q stay within (ε, δ)."""
    if math.isinf(epsilon):
        return 0.0
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=max(steps, 1),
                    accountant=accountant,
                    epsilon_tolerance=0.005 * epsilon,
                )
            )
    except ValueError as error:
        raise ValueError(
            f"No noise level reaches ε = {epsilon:.3g} at δ = {delta:.2g} over "
            f"{steps} steps at sampling rate {sample_rate:.3g} ({error}). Train "
            f"fewer epochs, or with a larger ε."
        ) from None


@dataclass
class SGDAccountant:
    """The steps DP-SGD has taken, and their ε: Opacus's accountant over a history
    of (noise multiplier, sample rate, steps) phases, kept in checkpoints so that a
    resumed run goes on counting."""

    accountant: str
    history: list[tuple[float, float, int]]

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history[-1]
            self.history[-1] = (sigma, q, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.history)

    def epsilon(self, delta: float, extra_steps: int = 0) -> float:
        """ε at δ after the steps taken (and ``extra_steps`` more of the last kind)."""
        history = list(self.history)
        if extra_steps and history:
            sigma, q, steps = history[-1]
            history[-1] = (sigma, q, steps + extra_steps)
        if not history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in history):
            return math.inf
        import warnings

        from opacus.accountants import create_accountant

        accountant = create_accountant(mechanism=self.accountant)
        accountant.history = history
        with warnings.catch_warnings():
            # RDP's orders end at 256; at a large ε the best is the last one, and
            # the bound is then loose (safe), which Opacus warns about.
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
            return float(accountant.get_epsilon(delta=delta))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant,
            "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SGDAccountant:
        history = [(float(s), float(q), int(n)) for s, q, n in data["history"]]
        return cls(data["accountant"], history)
