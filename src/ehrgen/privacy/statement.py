"""How a release's (ε, δ) is split between its parts, and the statement a DP model
folder carries: the total by basic composition (ε and δ add up) and each part."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ehrgen.privacy.config import DPConfig

__all__ = ["Budget", "BudgetPlan", "PrivacyPart", "PrivacyStatement", "plan_budget"]


@dataclass(frozen=True)
class Budget:
    """An (ε, δ) allowance."""

    epsilon: float
    delta: float


@dataclass(frozen=True)
class BudgetPlan:
    """The allowance of each part; ``vocabulary`` is None when the user gave one."""

    sgd: Budget
    population: Budget
    vocabulary: Budget | None


def plan_budget(dp: DPConfig, n_patients: int, vocabulary_given: bool) -> BudgetPlan:
    """Split the release's (ε, δ): the population summary (pure ε) and the
    vocabulary (half of δ) take their shares, DP-SGD the rest."""
    delta = dp.total_delta(n_patients)
    epsilon = dp.epsilon
    population = Budget(epsilon * dp.population_share, 0.0)
    if vocabulary_given:
        vocabulary = None
        sgd = Budget(epsilon * (1 - dp.population_share), delta)
    else:
        vocabulary = Budget(epsilon * dp.vocabulary_share, delta / 2)
        sgd_share = 1 - dp.population_share - dp.vocabulary_share
        sgd = Budget(epsilon * sgd_share, delta / 2)
    return BudgetPlan(sgd, population, vocabulary)


@dataclass(frozen=True)
class PrivacyPart:
    """One mechanism that read the training patients, and what it spent."""

    name: str
    epsilon: float
    delta: float
    mechanism: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class PrivacyStatement:
    """The (ε, δ) guarantee of a model folder, per patient (add/remove one patient),
    by basic composition of its parts."""

    target_epsilon: float
    parts: tuple[PrivacyPart, ...]
    #: what is public by assumption, never learned privately.
    public: tuple[str, ...] = (
        "the schema (modalities, baseline feature names and category labels)",
        "the number of training patients",
    )

    @property
    def epsilon(self) -> float:
        """ε spent: the parts' sum (at most the target)."""
        return math.fsum(p.epsilon for p in self.parts)

    @property
    def delta(self) -> float:
        return math.fsum(p.delta for p in self.parts)

    def part(self, name: str) -> PrivacyPart:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": "patient",
            "composition": "basic (epsilons and deltas add up)",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "parts": [p.to_dict() for p in self.parts],
            "public": list(self.public),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyStatement:
        parts = tuple(
            PrivacyPart(
                p["name"], p["epsilon"], p["delta"], p["mechanism"], p["details"]
            )
            for p in data["parts"]
        )
        return cls(data["target_epsilon"], parts, tuple(data["public"]))

    def summary(self) -> str:
        """One line: ``(ε = 7.98, δ = 6.2e-04) per patient``."""
        return f"(ε = {_number(self.epsilon)}, δ = {self.delta:.2g}) per patient"

    def markdown(self) -> str:
        """The model card's section."""
        lines = [
            f"Differentially private: {self.summary()}, by basic composition of the "
            f"parts below (target ε {_number(self.target_epsilon)}).",
            "",
            "| part | ε | δ | mechanism | settings |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in self.parts:
            settings = ", ".join(f"{k} {_number(v)}" for k, v in p.details.items())
            lines.append(
                f"| {p.name} | {_number(p.epsilon)} | {p.delta:.2g} | {p.mechanism} "
                f"| {settings} |"
            )
        lines += ["", "Public by assumption: " + "; ".join(self.public) + "."]
        return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)
