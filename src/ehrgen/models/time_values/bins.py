"""Quantile bins of a number (a visit gap, one lab's results) and draws inside a bin.

A model that generates numbers as classes needs two things from the training data:
the edges of its classes, and the shape of the distribution inside each class, so
that a drawn number is not always a bin's midpoint. Both come from one table: the
1st to the 99th percentile of the training values (the extremes are single real
patients, so they are left out, as in :mod:`ehrgen.models.population`). Bin ``b`` of
``n`` covers the quantile levels ``[b/n, (b+1)/n]`` of that table mapped linearly
onto 1 %..99 %, so with 10 bins each bin is a decile; a number drawn in bin ``b`` is
the table's quantile at a uniform level inside the bin, interpolated linearly: the
training distribution's shape within the bin, clipped to the 1st..99th percentiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["QuantileBins"]

_LEVELS = 99  # the stored quantiles: 1st .. 99th percentile


@dataclass(frozen=True)
class QuantileBins:
    """Bins of one quantity (see the module docstring).

    Attributes:
        quantiles: the 1st..99th percentiles of the training values.
        n_bins: how many bins (classes) a model chooses among.

    Example:
        >>> bins = QuantileBins.fit(np.arange(1000.0), n_bins=10)
        >>> bins.bin(np.array([5.0, 500.0, 995.0])).tolist()
        [0, 5, 9]
        >>> start_of_bin_5 = bins.draw(np.array([5]), np.array([0.0]))
        >>> round(float(start_of_bin_5[0]), 1)
        499.5
    """

    quantiles: tuple[float, ...]
    n_bins: int = 10

    @classmethod
    def fit(cls, values: np.ndarray, n_bins: int = 10) -> QuantileBins:
        """The bins of finite ``values`` (at least one)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("QuantileBins.fit needs at least one finite value.")
        levels = np.linspace(0.01, 0.99, _LEVELS)
        quantiles = np.quantile(values, levels)
        return cls(tuple(float(f"{q:.6g}") for q in quantiles), int(n_bins))

    @property
    def edges(self) -> np.ndarray:
        """(n_bins - 1,) the inner edges between consecutive bins."""
        inner = np.arange(1, self.n_bins) / self.n_bins
        return self._at(inner)

    def bin(self, values: np.ndarray) -> np.ndarray:
        """(N,) int64 the bin of each value (values beyond the table fall in the
        first or last bin; ties at an edge go up)."""
        return np.searchsorted(self.edges, np.asarray(values), side="right")

    def draw(self, bins: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(N,) a number in each bin, at uniform draws ``u`` in [0, 1)."""
        level = (np.asarray(bins, dtype=np.float64) + np.asarray(u)) / self.n_bins
        return self._at(level)

    def _at(self, level: np.ndarray) -> np.ndarray:
        return np.interp(level, np.linspace(0, 1, _LEVELS), np.array(self.quantiles))

    def to_dict(self) -> dict[str, Any]:
        return {"quantiles": list(self.quantiles), "n_bins": self.n_bins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileBins:
        quantiles = tuple(float(q) for q in data["quantiles"])
        if len(quantiles) != _LEVELS:
            raise ValueError(f"expected {_LEVELS} quantiles, got {len(quantiles)}")
        return cls(quantiles, int(data["n_bins"]))
