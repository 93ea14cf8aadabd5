"""A figure with its bootstrap interval: what privacy and utility report.

An :class:`Estimate` is a value with a percentile-bootstrap 95% interval and the
direction that is better; :func:`bootstrap` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LEVEL", "Estimate", "bootstrap", "plain"]

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A figure with its bootstrap 95% interval, and which way is better."""

    value: float
    ci_low: float
    ci_high: float
    direction: str  # "lower", "higher", "closer to 0.5", "closer to 0"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": plain(self.value),
            "ci_low": plain(self.ci_low),
            "ci_high": plain(self.ci_high),
            "direction": self.direction,
        }

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    return value


def bootstrap(
    statistic: Callable[..., Mapping[str, float]],
    groups: tuple[int, ...],
    rng: np.random.Generator,
    n_resamples: int,
    directions: Mapping[str, str],
) -> dict[str, Estimate]:
    """Estimates of the figures ``statistic`` returns, with percentile intervals.

    ``statistic(*indices)`` takes one index array per group (e.g. members and
    non-members, resampled separately so each keeps its size) and returns named
    figures; it is called once on the original data, then on ``n_resamples``
    resamples.

    Example:
        >>> x = np.arange(10.0)
        >>> est = bootstrap(
        ...     lambda i: {"mean": x[i].mean()}, (10,), np.random.default_rng(0), 200,
        ...     {"mean": "lower"},
        ... )
        >>> est["mean"].value, est["mean"].ci_low < 4.5 < est["mean"].ci_high
        (4.5, True)
    """
    if min(groups, default=0) == 0:
        nan = float("nan")
        return {k: Estimate(nan, nan, nan, d) for k, d in directions.items()}
    full = statistic(*(np.arange(n) for n in groups))
    draws: dict[str, list[float]] = {k: [] for k in full}
    for _ in range(n_resamples):
        resampled = statistic(*(rng.integers(0, n, n) for n in groups))
        for k, v in resampled.items():
            draws[k].append(v)
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for k, value in full.items():
        values = np.asarray(draws[k], dtype=float)
        values = values[np.isfinite(values)]
        low, high = (
            np.percentile(values, [tail, 100 - tail]) if values.size else (np.nan,) * 2
        )
        out[k] = Estimate(float(value), float(low), float(high), directions[k])
    return out
