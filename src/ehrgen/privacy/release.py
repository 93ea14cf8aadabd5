"""The parts of a model besides its weights, learned from patients with DP.

* **Vocabulary** (:func:`private_vocabulary`): which codes the model knows. Each
  patient contributes at most K of its distinct codes (a random subset beyond K),
  each with weight 1/√K, so one patient moves the vector of code counts by at most
  1 in L2 norm. Gaussian noise calibrated exactly for (ε, δ/2) is added to every
  observed code's count, and a code is kept when its noisy count passes a threshold
  that a code held by one patient alone passes with probability at most δ/(2K) per
  code, so its mere presence leaks with probability at most δ/2. A code seen in a
  handful of patients is dropped with high probability.
* **Population summary** (:func:`private_population`): the category frequencies,
  missing rates, numerical quantiles, visit-time quantiles and visit-count cap that
  generation draws from. Each is a histogram over bins fixed in advance (never from
  the data) to which every patient adds at most one count, so H histograms together
  have L1 sensitivity H; Laplace noise of scale H/ε makes them ε-DP. Bins whose
  noisy count falls below a threshold are emptied (post-processing), so that noise
  in empty bins does not pile up into fake mass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ehrgen.data import Cohort
from ehrgen.privacy.accounting import gaussian_sigma
from ehrgen.privacy.statement import Budget, PrivacyPart

__all__ = [
    "AGE_BOUNDS",
    "numerical_bounds",
    "private_population",
    "private_vocabulary",
    "vocabulary_threshold",
]

_SECONDS_PER_DAY = 86400.0
_YEAR = 365.25 * _SECONDS_PER_DAY
# Visit gaps summarised per visit index up to here; later visits reuse the last.
_GAP_INDICES = (1, 2, 3)
_MAX_VISITS = 256
# Visit counts binned about logarithmically (1, 2, ..., 5, 6-7, 8-10, ..., 171-256).
_VISIT_COUNT_EDGES = np.array(
    [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 7.5, 10.5, 15.5, 22.5, 33.5, 50.5, 75.5, 112.5,
     170.5, 256.5]
)  # fmt: skip
_LEVELS = np.linspace(0.01, 0.99, 99)
#: Public bounds assumed for a feature named age (years).
AGE_BOUNDS = (0.0, 120.0)


# --------------------------------------------------------------------------- vocabulary


def vocabulary_threshold(sigma: float, delta: float, max_codes: int) -> float:
    """The weighted count a code must pass: one patient's codes (weight 1/√K each,
    at most K of them) pass it together with probability at most ``delta``."""
    from scipy.stats import norm

    weight = 1 / math.sqrt(max_codes)
    if sigma == 0:
        return weight  # ε = ∞: every observed code is kept
    return weight + sigma * float(norm.isf(delta / max_codes))


def private_vocabulary(
    cohort: Cohort, budget: Budget, max_codes: int, rng: np.random.Generator
):
    """A :class:`~ehrgen.tokens.CodeTokenizer` of the codes that pass the noisy
    threshold (see the module docstring), with noisy patient counts, and the
    part of the privacy statement it spent."""
    from ehrgen.tokens import CodeTokenizer

    codes, patients = _distinct_patient_codes(cohort)
    codes = _at_most_per_patient(codes, patients, max_codes, rng)
    weight = 1 / math.sqrt(max_codes)
    counts = np.bincount(codes, minlength=len(cohort.code_values)) * weight
    observed = np.flatnonzero(counts > 0)
    sigma = gaussian_sigma(budget.epsilon, budget.delta / 2)
    noisy = (
        counts[observed] + rng.normal(0.0, sigma, len(observed))
        if sigma
        else (counts[observed])
    )
    threshold = vocabulary_threshold(sigma, budget.delta / 2, max_codes)
    keep = noisy >= threshold
    kept, estimates = observed[keep], np.maximum(noisy[keep] / weight, 1.0)
    by_modality: dict[str, list[str]] = {}
    counts_by_modality: dict[str, list[int]] = {}
    for i, modality in enumerate(cohort.schema.modalities):
        mine = cohort.code_modality[kept] == i
        order = sorted(
            np.flatnonzero(mine).tolist(),
            key=lambda j: (-estimates[j], cohort.code_values[kept[j]]),
        )
        by_modality[modality] = [cohort.code_values[kept[j]] for j in order]
        counts_by_modality[modality] = [round(float(estimates[j])) for j in order]
    tokenizer = CodeTokenizer(cohort.schema.modalities, by_modality, counts_by_modality)
    part = PrivacyPart(
        "vocabulary",
        budget.epsilon,
        budget.delta,
        "Gaussian noisy counts with a threshold (per-patient contribution bounded)",
        {
            "noise_sigma": sigma,
            "threshold_patients": threshold / weight,
            "max_codes_per_patient": max_codes,
            "codes_kept": int(keep.sum()),
        },
    )
    return tokenizer, part


def _distinct_patient_codes(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """Each (patient, code) pair once: (codes, patients)."""
    n_codes = max(len(cohort.code_values), 1)
    patient_of_event = cohort.visit_patient[cohort.event_visit]
    pairs = np.unique(patient_of_event.astype(np.int64) * n_codes + cohort.event_codes)
    return pairs % n_codes, pairs // n_codes


def _at_most_per_patient(
    codes: np.ndarray, patients: np.ndarray, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ``limit`` codes per patient, a uniform random subset beyond it."""
    order = np.lexsort((rng.random(len(codes)), patients))
    codes, patients = codes[order], patients[order]
    starts = np.searchsorted(patients, patients, side="left")
    rank = np.arange(len(codes)) - starts
    return codes[rank < limit]


# --------------------------------------------------------------------------- population


def private_population(
    cohort: Cohort,
    budget: Budget,
    bounds: Mapping[str, tuple[float, float]],
    rng: np.random.Generator,
):
    """The :class:`~ehrgen.models.population.Population` of ``cohort`` from Laplace
    noisy histograms (see the module docstring), and its privacy part."""
    from ehrgen.models.population import Population

    schema = cohort.schema
    histograms: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    # (name, one bin per patient (-1: none), bin edges or None for categories)
    for name, categories in schema.categorical.items():
        values = cohort.static[name].astype(np.int64)
        histograms.append((name, np.where(values >= 0, values, len(categories)), None))
    dense = set()
    for name in schema.numerical:
        if numerical_bounds(name, bounds) is not None:
            dense.add(name)
        edges = _numerical_edges(numerical_bounds(name, bounds))
        histograms.append((name, _bin_or_missing(cohort.static[name], edges), edges))
    visits = np.diff(cohort.visit_offsets)
    count_edges = _VISIT_COUNT_EDGES
    histograms.append(("visits", _bin(visits.astype(np.float64), count_edges),
                       count_edges))  # fmt: skip
    has_times = not cohort.times_are_placeholders
    if has_times:
        seconds = (cohort.visit_times - np.datetime64("1970-01-01", "us")) / (
            np.timedelta64(1, "s")
        )
        starts = cohort.visit_offsets[:-1]
        year_edges = (np.arange(1800, 2301, 5, dtype=np.float64) - 1970) * _YEAR
        first = np.full(len(cohort), -1, np.int64)
        nonempty = visits > 0
        first[nonempty] = _bin(seconds[starts[nonempty]], year_edges)
        histograms.append(("first_time", first, year_edges))
        gap_edges = _gap_edges()
        for t in _GAP_INDICES:
            has = visits > t
            gaps = np.full(len(cohort), -1, np.int64)
            index = starts[has] + t
            gaps[has] = _bin(seconds[index] - seconds[index - 1], gap_edges)
            histograms.append((f"gap_{t}", gaps, gap_edges))
    scale = len(histograms) / budget.epsilon if math.isfinite(budget.epsilon) else 0.0
    noisy: dict[str, np.ndarray] = {}
    for name, bins, edges in histograms:
        size = (len(schema.categorical[name]) + 1) if edges is None else len(edges)
        counts = np.bincount(bins[bins >= 0], minlength=size).astype(np.float64)
        if scale:
            counts = counts + rng.laplace(0.0, scale, size)
            # Post-processing: a bin must stand out of the noise to count, or
            # the noise of empty bins piles up into fake mass. Categories keep any
            # positive count; bins within public bounds, mostly occupied, need two
            # noise scales; on the wide fixed grids (times, unbounded numbers),
            # mostly empty, a false bin must be rare whatever the grid's size.
            if name in schema.categorical:
                floor = 0.0
            elif name in dense:
                floor = 2 * scale
            else:
                floor = scale * _threshold_factor(size)
            counts[counts < floor] = 0.0
        noisy[name] = counts
    categorical, numerical, missing = {}, {}, {}
    for name, categories in schema.categorical.items():
        counts = noisy[name]
        total = counts.sum()
        known = counts[:-1]
        categorical[name] = {
            c: float(k / known.sum()) if known.sum() > 0 else 1 / len(categories)
            for c, k in zip(categories, known)
        }
        missing[name] = float(counts[-1] / total) if total > 0 else 0.0
    for name in schema.numerical:
        counts = noisy[name]
        edges = _numerical_edges(numerical_bounds(name, bounds))
        numerical[name] = _histogram_quantiles(counts[:-1], edges)
        total = counts.sum()
        missing[name] = float(counts[-1] / total) if total > 0 else 0.0
    # A cap on generated visits, not a statistic: twice the longest visit count
    # that stands out of the noise.
    standing = np.flatnonzero(noisy["visits"][:-1] > 0)
    longest = int(count_edges[standing[-1] + 1]) if len(standing) else None
    max_visits = None if longest is None else min(_MAX_VISITS, 2 * longest)
    first_time = gaps = None
    if has_times:
        first_time = _histogram_quantiles(noisy["first_time"], year_edges) or None
        gaps = {
            str(t): q
            for t in _GAP_INDICES
            if (q := _histogram_quantiles(noisy[f"gap_{t}"], gap_edges))
        }
        if first_time is None:
            gaps = None
    population = Population(
        schema, categorical, numerical, missing, first_time, gaps, max_visits
    )
    part = PrivacyPart(
        "population summary",
        budget.epsilon,
        0.0,
        "Laplace noisy histograms over fixed bins",
        {"histograms": len(histograms), "laplace_scale": scale},
    )
    return population, part


def _threshold_factor(size: int) -> float:
    """Laplace scales an empty bin's noise must pass to count: about 0.05 false
    bins per histogram of ``size`` bins, whatever its size."""
    return math.log(size / 0.1)


def numerical_bounds(
    name: str, given: Mapping[str, tuple[float, float]]
) -> tuple[float, float] | None:
    """The public bounds of a numerical feature: the user's, else (0, 120) for
    an age, else None."""
    if name in given:
        return given[name]
    return AGE_BOUNDS if name.lower() in ("age", "age_years", "anchor_age") else None


def _numerical_edges(bounds: tuple[float, float] | None) -> np.ndarray:
    """Bin edges of a numerical feature: 40 equal bins within public bounds, or
    a fixed signed logarithmic grid (10 bins a decade, |x| from 0.01 to 10^6)."""
    if bounds is not None:
        return np.linspace(bounds[0], bounds[1], 41)
    magnitudes = 10.0 ** (np.arange(-20, 61) / 10)
    return np.concatenate([-magnitudes[::-1], [0.0], magnitudes])


def _gap_edges() -> np.ndarray:
    """Gaps from an hour to 100 years, 10 bins a decade (in seconds)."""
    hours = 10.0 ** (np.arange(0, 60) / 10)
    return np.concatenate([[0.0], hours * 3600.0])


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value (clipped into the first and last bins)."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.clip(index, 0, len(edges) - 2).astype(np.int64)


def _bin_or_missing(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bins of a feature, with missing values (NaN) in an extra last bin."""
    missing = np.isnan(values)
    out = np.full(len(values), len(edges) - 1, np.int64)
    out[~missing] = _bin(values[~missing].astype(np.float64), edges)
    return out


def _histogram_quantiles(
    counts: np.ndarray, edges: np.ndarray, levels: Any = _LEVELS
) -> list[float]:
    """Quantiles of a histogram, values spread uniformly within each bin."""
    counts = np.asarray(counts[: len(edges) - 1], dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return []
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    # The edges where mass starts or ends: a run of empty bins adds no flat piece
    # that would spread the next bin's mass back to the first edge.
    nonzero = np.flatnonzero(counts > 0)
    points = np.unique(np.concatenate([nonzero, nonzero + 1]))
    return np.interp(np.asarray(levels), cdf[points], edges[points]).tolist()
