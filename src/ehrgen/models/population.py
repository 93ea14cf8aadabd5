"""The training population in aggregate: what generation draws unstated features and
visit times from.

Kept with the model, and never per patient: category frequencies and missing rates;
for numbers, quantiles from the 1st to the 99th percentile (the extremes, which are
single real patients, are left out); for visit times, the same quantiles of the
first visit's date and of the gap before the t-th visit (gaps of visit 10 and later
pooled). Features not given in the conditions are drawn independently from their
marginal distributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["Population", "per_patient"]

_LEVELS = np.linspace(0.01, 0.99, 99)
_MAX_GAP_INDEX = 10
_EPOCH = np.datetime64("1970-01-01T00:00:00", "us")


@dataclass
class Population:
    """Aggregate facts about the training cohort (see the module docstring)."""

    schema: CohortSchema
    categorical: dict[str, dict[str, float]]
    numerical: dict[str, list[float]]
    missing: dict[str, float]
    first_time: list[float] | None  # quantiles of the first visit, seconds since 1970
    gaps: dict[str, list[float]] | None  # visit index (as str) -> gap quantiles (s)
    # The most visits a training patient has (None: a model saved before it was kept).
    max_visits: int | None = None

    @classmethod
    def from_cohort(cls, cohort: Cohort) -> Population:
        """Summarise a training cohort."""
        schema = cohort.schema
        categorical, numerical, missing = {}, {}, {}
        for name, categories in schema.categorical.items():
            values = cohort.static[name]
            known = values[values >= 0]
            counts = np.bincount(known, minlength=len(categories))
            total = max(counts.sum(), 1)
            categorical[name] = {
                c: float(n / total) for c, n in zip(categories, counts)
            }
            missing[name] = float((values < 0).mean())
        for name in schema.numerical:
            values = cohort.static[name]
            known = values[~np.isnan(values)]
            numerical[name] = _quantiles(known)
            missing[name] = float(np.isnan(values).mean())
        first_time, gaps = None, None
        if not cohort.times_are_placeholders:
            seconds = (cohort.visit_times - _EPOCH) / np.timedelta64(1, "s")
            starts = cohort.visit_offsets[:-1]
            first_time = _quantiles(seconds[starts])
            gaps = _gap_quantiles(seconds, cohort.visit_offsets)
        longest = int(np.diff(cohort.visit_offsets).max()) if len(cohort) else None
        return cls(schema, categorical, numerical, missing, first_time, gaps, longest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_dict(),
            "categorical": self.categorical,
            "numerical": self.numerical,
            "missing": self.missing,
            "first_time": self.first_time,
            "gaps": self.gaps,
            "max_visits": self.max_visits,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Population:
        return cls(
            CohortSchema.from_dict(data["schema"]),
            dict(data["categorical"]),
            dict(data["numerical"]),
            dict(data["missing"]),
            data["first_time"],
            data["gaps"],
            data.get("max_visits"),
        )

    # ---- conditions and static features

    def check_conditions(self, conditions: Mapping[str, Any]) -> dict[str, str | float]:
        """Validate one patient's conditions; values come back typed."""
        out: dict[str, str | float] = {}
        features = list(self.schema.features)
        for name, value in conditions.items():
            if name not in features:
                raise ConfigError(
                    f"Unknown condition {name!r}; the model's features are {features}."
                    f"{did_you_mean(name, features)}"
                )
            if name in self.schema.categorical:
                categories = list(self.schema.categorical[name])
                if str(value) not in categories:
                    raise ConfigError(
                        f"Unknown value {value!r} for condition {name!r}; valid values "
                        f"are {categories}.{did_you_mean(str(value), categories)}"
                    )
                out[name] = str(value)
            else:
                try:
                    out[name] = float(value)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"Condition {name!r} is numerical; got {value!r}, which is not "
                        f"a number."
                    ) from None
        return out

    def sample_static(
        self,
        conditions: Sequence[Mapping[str, Any]],
        rng: np.random.Generator,
    ) -> list[dict[str, str | float]]:
        """Baseline features for each patient: its conditions, and the rest drawn."""
        rows = [self.check_conditions(c) for c in conditions]
        for name in self.schema.features:
            drawn = self._draw(name, len(rows), rng)
            for row, value in zip(rows, drawn):
                if name not in row and value is not None:
                    row[name] = value
        return rows

    def _draw(self, name: str, n: int, rng: np.random.Generator) -> list[Any]:
        missing = rng.random(n) < self.missing.get(name, 0.0)
        if name in self.schema.categorical:
            frequencies = self.categorical[name]
            p = np.array(list(frequencies.values()), dtype=float)
            p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1 / len(p))
            values = rng.choice(list(frequencies), size=n, p=p).tolist()
        else:
            values = _inverse_cdf(self.numerical[name], rng.random(n)).tolist()
        return [None if m else v for m, v in zip(missing, values)]

    # ---- visit times

    def sample_times(
        self, n_visits: Sequence[int], rng: np.random.Generator
    ) -> list[list[datetime]] | None:
        """Visit times per patient (None when the training times were placeholders)."""
        if self.first_time is None or self.gaps is None:
            return None
        starts = _inverse_cdf(self.first_time, rng.random(len(n_visits)))
        out = []
        for start, count in zip(starts.tolist(), n_visits):
            times, current = [], start
            for t in range(count):
                if t:
                    current += max(self.gap(t, rng), 1.0)
                times.append(current)
            out.append([_as_datetime(s) for s in times])
        return out

    def gap(self, t: int, rng: np.random.Generator) -> float:
        """A gap in seconds before visit ``t`` (t >= 1)."""
        if not self.gaps:  # every training patient had one visit
            return 30 * 86400.0
        key = str(min(t, _MAX_GAP_INDEX))
        table = self.gaps.get(key) or self.gaps[max(self.gaps, key=int)]
        return float(_inverse_cdf(table, rng.random(1))[0])


def _quantiles(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return []
    return np.quantile(values.astype(np.float64), _LEVELS).tolist()


def _gap_quantiles(
    seconds: np.ndarray, visit_offsets: np.ndarray
) -> dict[str, list[float]]:
    gaps = np.diff(seconds)
    index = np.arange(len(seconds)) - np.repeat(
        visit_offsets[:-1], np.diff(visit_offsets)
    )
    valid = index[1:] > 0  # a gap belongs to the later visit of the same patient
    gaps, index = gaps[valid], np.minimum(index[1:][valid], _MAX_GAP_INDEX)
    return {str(t): _quantiles(gaps[index == t]) for t in np.unique(index).tolist()}


def _inverse_cdf(quantiles: Sequence[float], u: np.ndarray) -> np.ndarray:
    if not quantiles:
        return np.full(len(u), np.nan)
    # Map u in [0, 1] onto the stored 1st..99th percentile levels, linearly.
    return np.interp(u, np.linspace(0, 1, len(quantiles)), np.asarray(quantiles))


def _as_datetime(seconds: float) -> datetime:
    return datetime(1970, 1, 1) + timedelta(seconds=round(seconds))


def per_patient(
    conditions: Any, n: int, owner: str = "generate"
) -> list[Mapping[str, Any]]:
    """Conditions as one mapping per patient: ``None``, one mapping for all, or one
    per patient (checked to be ``n``)."""
    if conditions is None or isinstance(conditions, Mapping):
        return [conditions or {}] * n
    conditions = list(conditions)
    if len(conditions) != n:
        raise ConfigError(
            f"The 'conditions' parameter of {owner} must be one mapping, or one per "
            f"patient ({n}). Got {len(conditions)} mappings instead."
        )
    return conditions
