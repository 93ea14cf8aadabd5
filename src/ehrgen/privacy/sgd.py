"""DP-SGD with patients as the privacy unit.

Each step draws its patients by Poisson sampling (each patient independently with
rate q), computes each drawn patient's gradient over all of its targets (one
backward pass per patient, so the gradient is exact whatever the model's modules),
clips it to norm C, sums, adds Gaussian noise N(0, σ²C²) and divides by the expected
batch q·n. Opacus's accountant counts the steps; σ is chosen so that the planned
steps spend the DP-SGD share of ε exactly, and a run that would go past it stops.

Why not Opacus's per-sample-gradient hooks: a patient may span several rows of a
batch (windows of a long history), the privacy unit is the patient, not the row, and
hooks support a list of module types (a learned positional table subclassing
``nn.Embedding`` computes a different function from its input, and is silently
mis-handled). One backward pass per patient is exact for any module.

Sampling and noise draw from the operating system's entropy, never from the
training seed: the seed is written in the model folder, and noise an adversary can
regenerate protects nothing. DP runs are therefore not reproducible by seed.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ehrgen.privacy.accounting import SGDAccountant, sgd_noise_multiplier
from ehrgen.privacy.config import DPConfig
from ehrgen.privacy.statement import Budget, PrivacyPart

__all__ = ["DPSGD", "PatientBatches", "secure_seed"]

logger = logging.getLogger(__name__)


def secure_seed() -> int:
    """A seed from the operating system's entropy (never the training seed)."""
    return secrets.randbits(63)


@dataclass(frozen=True)
class PatientBatches:
    """What DP-SGD trains on: ``n_patients`` items, and the batch holding all of
    one patient's training rows for an epoch (``batch(patient, epoch)``)."""

    n_patients: int
    batch: Callable[[int, int], Mapping[str, torch.Tensor]]


class DPSGD:
    """The per-step mechanism (see the module docstring) and its accountant."""

    def __init__(
        self,
        dp: DPConfig,
        budget: Budget,
        n_patients: int,
        planned_steps: int,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.dp, self.budget, self.n_patients = dp, budget, n_patients
        self.sample_rate = min(1.0, dp.expected_batch_patients / n_patients)
        if state is not None:  # a resumed run keeps its noise and its count
            self.noise_multiplier = float(state["noise_multiplier"])
            self.planned_steps = int(state["planned_steps"])
            self.accountant = SGDAccountant.from_dict(state["accountant"])
        else:
            self.planned_steps = planned_steps
            self.noise_multiplier = sgd_noise_multiplier(
                budget.epsilon, budget.delta, self.sample_rate, planned_steps,
                dp.accountant,
            )  # fmt: skip
            self.accountant = SGDAccountant(dp.accountant, [])
        seed = secure_seed()
        self._sampler = np.random.default_rng(seed)
        self._noise = torch.Generator().manual_seed(seed % 2**63)

    @staticmethod
    def steps_per_epoch(dp: DPConfig, n_patients: int) -> int:
        """Expected steps for one pass over the patients: 1/q."""
        return max(1, round(n_patients / min(dp.expected_batch_patients, n_patients)))

    def within_budget(self) -> bool:
        """Whether one more step keeps ε within the DP-SGD share."""
        history = self.accountant.history
        as_planned = all(
            (sigma, q) == (self.noise_multiplier, self.sample_rate)
            for sigma, q, _ in history
        )
        if as_planned and self.accountant.steps < self.planned_steps:
            return True  # σ was chosen so that the planned steps at rate q fit
        spent = self.accountant.epsilon(self.budget.delta, extra_steps=1)
        return spent <= self.budget.epsilon

    def sample(self) -> np.ndarray:
        """This step's patients: each one independently with rate q."""
        return np.flatnonzero(self._sampler.random(self.n_patients) < self.sample_rate)

    def gradients(
        self,
        model: torch.nn.Module,
        patients: np.ndarray,
        batch_of: Callable[[int], Mapping[str, torch.Tensor]],
    ) -> tuple[float, int]:
        """Set ``p.grad`` of every trainable parameter to the noisy, clipped mean
        gradient of ``patients``; returns (summed loss, tokens) for the log."""
        params = [p for p in model.parameters() if p.requires_grad]
        summed = [torch.zeros_like(p) for p in params]
        clip = self.dp.max_grad_norm
        loss_total, tokens = 0.0, 0
        for patient in patients.tolist():
            out = model(batch_of(patient))
            grads = torch.autograd.grad(out.loss_sum, params, allow_unused=True)
            norm = math.sqrt(
                sum(float(g.detach().pow(2).sum()) for g in grads if g is not None)
            )
            factor = min(1.0, clip / (norm + 1e-12))
            for total, grad in zip(summed, grads):
                if grad is not None:
                    total.add_(grad, alpha=factor)
            loss_total += float(out.loss_sum.detach())
            tokens += int(out.n_tokens)
        scale = 1.0 / (self.sample_rate * self.n_patients)
        for param, total in zip(params, summed):
            if self.noise_multiplier:
                noise = torch.randn(total.shape, generator=self._noise)
                total.add_(noise.to(total.device), alpha=self.noise_multiplier * clip)
            param.grad = total.mul_(scale)
        self.accountant.step(self.noise_multiplier, self.sample_rate)
        return loss_total, tokens

    def epsilon(self) -> float:
        """ε spent by the steps taken, at the DP-SGD share of δ."""
        return self.accountant.epsilon(self.budget.delta)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed run goes on counting."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "planned_steps": self.planned_steps,
            "accountant": self.accountant.to_dict(),
        }

    def part(self) -> PrivacyPart:
        """The training part of the privacy statement."""
        return PrivacyPart(
            "training (DP-SGD)",
            self.epsilon(),
            self.budget.delta,
            f"Poisson-sampled Gaussian mechanism, Opacus {self.dp.accountant.upper()} "
            f"accountant",
            {
                "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate,
                "max_grad_norm": self.dp.max_grad_norm,
                "steps": self.accountant.steps,
                "expected_batch_patients": self.dp.expected_batch_patients,
            },
        )
