r"""The curves and results privacy attacks report (their figures are
:class:`~ehrgen.evaluation._estimates.Estimate`\ s).

A :class:`Curve` is an ROC curve (or any x-y curve) kept as points so that it can be
plotted and saved as JSON; an :class:`AttackResult` gathers one attack's figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ehrgen.evaluation._estimates import Estimate, bootstrap, plain

__all__ = [
    "AttackResult",
    "Curve",
    "Estimate",
    "auc_null_tolerance",
    "bootstrap",
    "membership_figures",
    "roc",
]


@dataclass(frozen=True)
class Curve:
    """Points of a curve: an ROC curve has ``x`` the false-positive rate and ``y`` the
    true-positive rate."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_label: str = "false-positive rate"
    y_label: str = "true-positive rate"
    auc: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "x_label": self.x_label,
            "y_label": self.y_label,
            "auc": plain(self.auc),
            "x": [round(float(v), 6) for v in self.x],
            "y": [round(float(v), 6) for v in self.y],
        }


@dataclass(frozen=True)
class AttackResult:
    """One attack: its figures, its curves and the facts needed to read them."""

    name: str
    description: str
    figures: Mapping[str, Estimate]
    curves: tuple[Curve, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "figures": {k: v.to_dict() for k, v in self.figures.items()},
            "details": {k: plain(v) for k, v in self.details.items()},
        }


def roc(name: str, labels: np.ndarray, scores: np.ndarray) -> Curve:
    """The ROC curve of scores that should be higher for label 1."""
    if len(np.unique(labels)) < 2:
        return Curve(name, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    fpr, tpr, _ = roc_curve(labels, scores)
    return Curve(name, fpr, tpr, auc=float(roc_auc_score(labels, scores)))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest true-positive rate at a false-positive rate of at most ``target``."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_figures(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    rng: np.random.Generator,
    n_resamples: int,
    name: str,
) -> tuple[dict[str, Estimate], Curve]:
    """AUC, TPR at FPR 1% and 10%, and accuracy at the median threshold of a
    membership score (higher means "member"), with bootstrap intervals.

    Accuracy at the median threshold (HALO's and PyHealth's convention) calls the half
    of the candidates with the highest scores members, ties broken at random; with as
    many members as non-members, guessing scores 0.5.
    """
    member_scores = np.asarray(member_scores, float)
    nonmember_scores = np.asarray(nonmember_scores, float)
    n1, n0 = len(member_scores), len(nonmember_scores)
    tiebreak = rng.random(n1 + n0)

    def figures(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        scores = np.concatenate([member_scores[members], nonmember_scores[nonmembers]])
        labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
        fpr, tpr, _ = roc_curve(labels, scores)
        order = np.lexsort((tiebreak[: len(scores)], scores))
        called = np.zeros(len(scores), bool)
        called[order[len(scores) - len(scores) // 2 :]] = True
        return {
            "auc": float(roc_auc_score(labels, scores)),
            "tpr_at_fpr_1pct": tpr_at_fpr(fpr, tpr, 0.01),
            "tpr_at_fpr_10pct": tpr_at_fpr(fpr, tpr, 0.10),
            "accuracy_at_median": float((called == labels.astype(bool)).mean()),
        }

    directions = {
        "auc": "closer to 0.5",
        "tpr_at_fpr_1pct": "lower",
        "tpr_at_fpr_10pct": "lower",
        "accuracy_at_median": "closer to 0.5",
    }
    estimates = bootstrap(figures, (n1, n0), rng, n_resamples, directions)
    labels = np.concatenate([np.ones(n1), np.zeros(n0)])
    curve = roc(name, labels, np.concatenate([member_scores, nonmember_scores]))
    return estimates, curve


def auc_null_tolerance(n1: int, n0: int, z: float = 4.0) -> float:
    """``z`` standard errors of the AUC of an uninformative score (Mann-Whitney's null
    variance, ``(n1 + n0 + 1) / (12 n1 n0)``): how far from 0.5 chance alone goes.

    Example:
        >>> round(auc_null_tolerance(1000, 1000), 3)
        0.052
    """
    return z * float(np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))
