"""Quantile bins of a number (a visit gap, one lab's results) and draws inside a bin.

A model that generates numbers as classes needs two things from the training data:
the edges of its classes, and the shape of the distribution inside each class, so
that a drawn number is not always a bin's midpoint. Both come from one table: the
1st to the 99th percentile of the training values (the extremes are single real
patients, so they are left out, as in :mod:`ehrgen.models.population`): the values
are trimmed to that range, and a level ``x`` of [0, 1] means the table's quantile at
``1 % + x * 98 %``. The bins' edges are such levels (:func:`bin_levels`: deciles,
plus edges at 0.02, 0.05, 0.95 and 0.98, so that the tails, where abnormal results
and short gaps sit, get bins of their own: with deciles alone, a stage-5 kidney
patient's creatinine and a healthy patient's 91st-percentile one would share a
bin). A value below the 1st percentile falls in the first bin, one above the 99th in
the last. A number drawn in a bin is
the table's quantile at a uniform level inside the bin, interpolated linearly: the
training distribution's shape within the bin, clipped to the 1st..99th percentiles,
and rounded to the training values' resolution (sodium in whole mmol/L stays whole).

Results are often discrete, so many training values equal an edge (sodium 140 may
span three deciles). :meth:`QuantileBins.bin` then spreads a tied value over every
bin it spans, at random when given a generator (training targets) and to the middle
one otherwise, so that the bins keep their share of the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["QuantileBins", "bin_levels"]

_LEVELS = 99  # the stored quantiles: 1st .. 99th percentile
_TAIL_LEVELS = (0.02, 0.05)  # and 1 minus each: the tails' own edges


def bin_levels(n_bins: int = 10, tails: bool = True) -> tuple[float, ...]:
    """The inner edges, as levels of the trimmed values (see the module
    docstring): ``n_bins`` equal bins (10: deciles), with ``tails`` edges at 0.02,
    0.05, 0.95 and 0.98 added (14 bins).

    Example:
        >>> bin_levels(4)
        (0.02, 0.05, 0.25, 0.5, 0.75, 0.95, 0.98)
    """
    levels = set(np.round(np.arange(1, n_bins) / n_bins, 6).tolist())
    if tails:
        levels |= {*_TAIL_LEVELS, *(round(1 - t, 6) for t in _TAIL_LEVELS)}
    return tuple(sorted(levels))


@dataclass(frozen=True)
class QuantileBins:
    """Bins of one quantity (see the module docstring).

    Attributes:
        quantiles: the 1st..99th percentiles of the training values.
        levels: the inner edges of the bins, as quantile levels (:func:`bin_levels`).
        decimals: the training values' resolution (None: finer than 4 decimals).

    Example:
        >>> bins = QuantileBins.fit(np.arange(1000.0), bin_levels(10, tails=False))
        >>> bins.bin(np.array([5.0, 500.0, 995.0])).tolist()
        [0, 5, 9]
        >>> bins.draw(np.array([5]), np.array([0.0])).tolist()  # whole numbers stay so
        [500.0]
    """

    quantiles: tuple[float, ...]
    levels: tuple[float, ...]
    decimals: int | None = None

    @classmethod
    def fit(cls, values: np.ndarray, levels: tuple[float, ...]) -> QuantileBins:
        """The bins of finite ``values`` (at least one), with edges at ``levels``."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("QuantileBins.fit needs at least one finite value.")
        quantiles = np.quantile(values, np.linspace(0.01, 0.99, _LEVELS))
        return cls(
            tuple(float(q) for q in quantiles),
            tuple(float(x) for x in levels),
            _resolution(values),
        )

    @property
    def n_classes(self) -> int:
        """How many bins."""
        return len(self.levels) + 1

    @property
    def edges(self) -> np.ndarray:
        """(n_classes - 1,) the inner edges between consecutive bins."""
        return self._at(np.array(self.levels))

    def bin(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """(N,) int64 the bin of each value (values beyond the table fall in the
        first or last bin); a value tied with table entries is spread over the
        levels they cover (see the module docstring)."""
        level = self.levels_of(values, rng)
        return np.searchsorted(np.array(self.levels), level, side="right")

    def levels_of(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """(N,) the level of each finite value: where it sits in the table,
        interpolated between the entries around it (0 below the table, 1 above);
        for a value equal to table entries, a uniform level over the run they
        span, widened by half a step each side (its middle without ``rng``), as a
        randomised probability integral transform does for discrete values."""
        values, table = np.asarray(values, dtype=np.float64), np.array(self.quantiles)
        step = 1.0 / (_LEVELS - 1)
        low = np.searchsorted(table, values, side="left")
        high = np.searchsorted(table, values, side="right")
        # Between table[low - 1] and table[low] (strictly, as low == high here).
        below = table[np.clip(low - 1, 0, _LEVELS - 1)]
        above = table[np.clip(low, 0, _LEVELS - 1)]
        width = np.where(above > below, above - below, 1.0)
        between = ((low - 1) + np.clip((values - below) / width, 0, 1)) * step
        start = np.clip(low * step - step / 2, 0, 1)
        stop = np.clip((high - 1) * step + step / 2, 0, 1)
        u = 0.5 if rng is None else rng.random(len(values))
        tied = start + u * (stop - start)
        return np.where(high > low, tied, np.clip(between, 0, 1))

    def draw(self, bins: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(N,) a number in each bin, at uniform draws ``u`` in [0, 1)."""
        bounds = np.array([0.0, *self.levels, 1.0])
        bins = np.asarray(bins)
        level = bounds[bins] + np.asarray(u) * (bounds[bins + 1] - bounds[bins])
        return self.rounded(self._at(level))

    def rounded(self, values: np.ndarray) -> np.ndarray:
        """``values`` at the training values' resolution."""
        return values if self.decimals is None else np.round(values, self.decimals)

    def _at(self, level: np.ndarray) -> np.ndarray:
        return np.interp(level, np.linspace(0, 1, _LEVELS), np.array(self.quantiles))

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantiles": list(self.quantiles),
            "levels": list(self.levels),
            "decimals": self.decimals,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileBins:
        quantiles = tuple(float(q) for q in data["quantiles"])
        if len(quantiles) != _LEVELS:
            raise ValueError(f"expected {_LEVELS} quantiles, got {len(quantiles)}")
        levels = tuple(float(x) for x in data["levels"])
        if list(levels) != sorted(set(levels)) or not all(0 < x < 1 for x in levels):
            raise ValueError(f"bin levels must increase within (0, 1): {levels}")
        decimals = data.get("decimals")
        return cls(quantiles, levels, None if decimals is None else int(decimals))


def _resolution(values: np.ndarray, most: int = 4) -> int | None:
    """The fewest decimals (0..``most``) that write every value exactly, or None."""
    for decimals in range(most + 1):
        scaled = values * 10.0**decimals
        slack = 1e-6 * np.maximum(1, np.abs(scaled))
        if np.all(np.abs(scaled - np.round(scaled)) <= slack):
            return decimals
    return None
