"""What a differentially private run is asked for: the release's (ε, δ) and how it is
spent. Light to import (no torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ehrgen._config import ConfigMixin, check

__all__ = ["ACCOUNTANTS", "DPConfig"]

#: Opacus's accountants ehrgen offers: Rényi DP, and the tighter PRV accountant.
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True, kw_only=True)
class DPConfig(ConfigMixin):
    """Differential privacy for a whole model release, per patient.

    ``epsilon`` bounds everything the model folder holds that was learned from the
    training patients, not only the weights: the shares below go to the vocabulary
    (a noisy-count threshold, unless the user gives a public vocabulary) and to the
    population summary (noisy histograms); DP-SGD gets the rest. ``epsilon=math.inf``
    runs the same pipeline without noise (a baseline, not a guarantee).

    Args:
        epsilon: the total ε of the release.
        delta: the total δ; None means 1 / (training patients).
        max_grad_norm: C, the bound on one patient's whole gradient in a step.
        expected_batch_patients: patients per step on average; each patient joins a
            step independently with rate q = expected_batch_patients / n (Poisson).
        accountant: "rdp" or "prv" (Opacus's accountants).
        vocabulary_share: the share of ε (and half of δ) spent on the vocabulary
            when none is given.
        population_share: the share of ε spent on the population summary.
        max_codes_per_patient: the most distinct codes one patient contributes to
            the vocabulary counts (a random subset beyond it).
        numerical_bounds: public (low, high) bounds of numerical baseline features;
            a feature without bounds is summarised on a fixed logarithmic grid.
    """

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0
    expected_batch_patients: int = 64
    accountant: str = "rdp"
    vocabulary_share: float = 0.1
    population_share: float = 0.1
    max_codes_per_patient: int = 32
    numerical_bounds: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check(self.epsilon > 0, name, "epsilon", "positive (math.inf: no noise)",
              self.epsilon)  # fmt: skip
        ok = self.delta is None or 0 < self.delta < 1
        check(ok, name, "delta", "in (0, 1) or None", self.delta)
        check(self.max_grad_norm > 0, name, "max_grad_norm", "positive",
              self.max_grad_norm)  # fmt: skip
        for count in ("expected_batch_patients", "max_codes_per_patient"):
            value = getattr(self, count)
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            check(ok, name, count, "a positive int", value)
        check(self.accountant in ACCOUNTANTS, name, "accountant",
              f"one of {list(ACCOUNTANTS)}", self.accountant)  # fmt: skip
        for share in ("vocabulary_share", "population_share"):
            value = getattr(self, share)
            check(0 < value < 1, name, share, "in (0, 1)", value)
        total = self.vocabulary_share + self.population_share
        check(total < 1, name, "vocabulary_share + population_share",
              "below 1 (DP-SGD needs a share)", total)  # fmt: skip
        bounds = {}
        for feature, pair in dict(self.numerical_bounds).items():
            ok = (
                isinstance(pair, (tuple, list))
                and len(pair) == 2
                and all(isinstance(v, (int, float)) for v in pair)
                and math.isfinite(pair[0])
                and math.isfinite(pair[1])
                and pair[0] < pair[1]
            )
            check(ok, name, f"numerical_bounds[{feature!r}]",
                  "a (low, high) pair of finite numbers, low < high", pair)  # fmt: skip
            bounds[str(feature)] = (float(pair[0]), float(pair[1]))
        object.__setattr__(self, "numerical_bounds", bounds)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["numerical_bounds"] = {k: list(v) for k, v in self.numerical_bounds.items()}
        return out

    def total_delta(self, n_patients: int) -> float:
        """δ of the release: the one given, or 1/n."""
        return self.delta if self.delta is not None else 1.0 / max(n_patients, 1)
