"""One row type for every headline figure of every suite.

Each suite's result has a ``summary()`` that returns :class:`MetricRow` objects; the
:class:`~ehrgen.evaluation.suites.Evaluation` gathers them, ``metrics.json`` stores
them, and the ``ehrgen evaluate`` table and the HTML report lay them out with
:func:`pivot`, one column per generation mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["DIRECTIONS", "MetricRow", "pivot"]

#: which way is better; "reference" marks a figure to compare others against (such
#: as the copy rate of real non-members), not one to optimise.
DIRECTIONS = ("higher", "lower", "closer to 0.5", "closer to 0", "reference")


@dataclass(frozen=True, kw_only=True)
class MetricRow:
    """One figure: its suite, name, value, 95% interval and better direction.

    Attributes:
        suite: one of :data:`ehrgen.evaluation.suites.SUITES`.
        metric: what the figure is, for people ("R² code prevalence per patient").
        value: the figure; None where it is undefined (NaN is stored as None).
        interval: its 95% bootstrap interval, or None where it has none.
        direction: one of :data:`DIRECTIONS`.
        note: what a reader must know, e.g. that the generator was calibrated to it.
        mode: the generation mode of the synthetic patients it judges; None for a
            figure of the model alone (perplexity).

    Example:
        >>> row = MetricRow(suite="privacy", metric="NNAAR", value=0.0123,
        ...                 interval=(-0.01, 0.04), direction="closer to 0")
        >>> row.text()
        '0.012 [-0.010, 0.040]'
    """

    suite: str
    metric: str
    value: float | None
    interval: tuple[float, float] | None = None
    direction: str
    note: str = ""
    mode: str | None = None

    def __post_init__(self) -> None:
        from ehrgen.evaluation.suites import SUITES

        if self.suite not in SUITES:
            raise ConfigError(
                f"The 'suite' parameter of MetricRow must be one of {list(SUITES)}. "
                f"Got {self.suite!r} instead.{did_you_mean(self.suite, SUITES)}"
            )
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"The 'direction' parameter of MetricRow must be one of "
                f"{list(DIRECTIONS)}. Got {self.direction!r} instead."
                f"{did_you_mean(self.direction, DIRECTIONS)}"
            )
        object.__setattr__(self, "value", _finite(self.value))
        if self.interval is not None:
            low, high = (_finite(v) for v in self.interval)
            interval = None if low is None or high is None else (low, high)
            object.__setattr__(self, "interval", interval)

    @classmethod
    def of(cls, suite: str, metric: str, estimate: Any, **fields: Any) -> MetricRow:
        """A row from an estimate with ``value``, ``ci_low``, ``ci_high`` and
        ``direction`` (privacy's and utility's :class:`Estimate`)."""
        return cls(
            suite=suite,
            metric=metric,
            value=estimate.value,
            interval=(estimate.ci_low, estimate.ci_high),
            direction=estimate.direction,
            **fields,
        )

    def text(self) -> str:
        """The value and its interval in brackets, as the tables show it."""
        if self.value is None:
            return "n/a"
        digits = 2 if abs(self.value) >= 10 else 3
        text = f"{self.value:.{digits}f}"
        if self.interval is not None:
            low, high = self.interval
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "suite": self.suite,
            "metric": self.metric,
            "mode": self.mode,
            "value": self.value,
            "interval": None if self.interval is None else list(self.interval),
            "direction": self.direction,
            "note": self.note,
        }


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pivot(
    rows: Iterable[MetricRow], modes: Sequence[str]
) -> list[tuple[MetricRow, list[str]]]:
    """One line per (suite, metric), in order of appearance: its first row and the
    text of its value under each mode ("" where the mode has none). A row without a
    mode (a figure of the model) fills every column.

    Example:
        >>> rows = [
        ...     MetricRow(suite="fidelity", metric="R²", value=0.9,
        ...               direction="higher", mode="a"),
        ...     MetricRow(suite="fidelity", metric="R²", value=0.8,
        ...               direction="higher", mode="b"),
        ... ]
        >>> [(row.metric, cells) for row, cells in pivot(rows, ["a", "b"])]
        [('R²', ['0.900', '0.800'])]
    """
    lines: dict[tuple[str, str], tuple[MetricRow, dict[str, str]]] = {}
    for row in rows:
        first, cells = lines.setdefault((row.suite, row.metric), (row, {}))
        if row.mode is None:
            cells.update({mode: row.text() for mode in modes})
        else:
            cells[row.mode] = row.text()
        if row.note and not first.note:
            lines[(row.suite, row.metric)] = (row, cells)
    return [(row, [cells.get(m, "") for m in modes]) for row, cells in lines.values()]
