"""Fidelity: how closely a synthetic cohort reproduces a real one.

:func:`fidelity` compares a real and a synthetic :class:`~ehrgen.data.Cohort` and
returns a :class:`FidelityResult`. Codes are matched by ``(modality, code string)``,
never by the cohorts' internal code numbers; a visit is the *set* of its codes over
all modalities.

**The six prevalence statistics** (HALO, Theodorou et al. 2023, so that figures compare
across tools). With P patients, V visits, S = V - P pairs of consecutive visits of a
patient, and v_{p,t} the codes of patient p's t-th visit (t = 1..T_p)::

    patient_code[c]         = #{p : c in v_{p,t} for some t} / P
    visit_code[c]           = #{(p,t) : c in v_{p,t}} / V
    patient_pair[{a,b}]     = #{p : a, b in v_{p,t} for some t} / P      (a != b)
    visit_pair[{a,b}]       = #{(p,t) : a, b in v_{p,t}} / V
    patient_transition[a,b] = #{p : a in v_{p,t}, b in v_{p,t+1} for some t} / P
    visit_transition[a,b]   = #{(p,t) : a in v_{p,t}, b in v_{p,t+1}} / S

Pairs are unordered and of two different codes; transitions are ordered and include
a = b (a code seen again at the next visit). Each figure is
``sklearn.metrics.r2_score(y_true, y_pred)`` = 1 - sum (y - y^)^2 / sum (y - mean y)^2
with y the real values and y^ the synthetic ones (0 where the synthetic cohort lacks
the key), over the keys seen in the **real** data. HALO's own script takes the union of
real and synthetic keys; keys seen only in the synthetic data are left out here and
counted instead in ``unseen`` (codes the real data never has, and their share of
synthetic events). A synthetic cohort with no consecutive visits has all its
``visit_transition`` values set to 0.

* **Overall** pools all modalities; **per modality** keeps the codes (pairs,
  transitions) whose codes are all of that modality, with the same denominators.
* **Long tail**: the real codes whose real ``patient_code`` prevalence is at or below
  its 10th percentile (over the real codes, :data:`LONG_TAIL_QUANTILE`); pairs and
  transitions involving at least one long-tail code.
* Undefined figures (fewer than two keys, all real values equal, e.g. a long tail of
  codes seen once each) are NaN, with the reason in ``notes``.

**Distributions** (real and synthetic means, Kolmogorov-Smirnov statistic
``scipy.stats.ks_2samp`` and ``scipy.stats.wasserstein_distance``): visits per patient,
codes per visit overall and per modality (zeros included), days between consecutive
visits (only when neither cohort has placeholder times), and the values of the
:data:`TOP_VALUED_CODES` codes with the most values in the real cohort
(``value/<code>``; only when both cohorts carry values, else a note).

**Demographics**: each baseline feature of the real schema; numerical ones as above
(missing values left out, their shares reported), categorical ones as category shares
(missing as ``"<missing>"``) and their total variation distance 0.5 * sum |p - q|.

**Conditional agreement**: per categorical feature and category, ``patient_code``
within the category's patients, real vs synthetic: R² over the codes the real patients
of the category have, and the codes whose prevalences differ most.

**Discriminator**: can a classifier tell the cohorts apart? Logistic regression on each
patient's binary code vector plus log(1 + number of visits), on a balanced sample (at
most 20,000 patients a side), 5-fold stratified cross-validation; mean accuracy and
ROC AUC, 0.5 meaning indistinguishable (``docs/benchmarks.md`` sets it beside HALO's
figure on the same data).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, did_you_mean
from ehrgen.evaluation.fidelity._stats import (
    KINDS,
    Coded,
    Table,
    Vocabulary,
    align,
    compare,
    discriminate,
    prevalence_tables,
    r2,
)
from ehrgen.evaluation.rows import MetricRow

__all__ = [
    "KINDS",
    "LONG_TAIL_QUANTILE",
    "VISIT_COUNT_FIGURES",
    "FidelityResult",
    "PrevalencePoints",
    "fidelity",
]

logger = logging.getLogger(__name__)

LONG_TAIL_QUANTILE = 0.10
TOP_DISAGREEING = 5
_POINT_KINDS = ("patient_code", "visit_code")  # the points kept in to_dict()

# (group, key, label, direction) of the figures in the evaluation summary.
_HEADLINES = (
    ("r2", "patient_code", "R² code prevalence per patient", "higher"),
    ("r2", "visit_code", "R² code prevalence per visit", "higher"),
    ("r2", "patient_pair", "R² co-occurrence per patient", "higher"),
    ("r2", "visit_pair", "R² co-occurrence per visit", "higher"),
    ("r2", "patient_transition", "R² next-visit transition per patient", "higher"),
    ("r2", "visit_transition", "R² next-visit transition per visit", "higher"),
    ("r2_long_tail", "patient_code", "R² long-tail code prevalence", "higher"),
    ("distributions", "visits_per_patient", "KS visits per patient", "lower"),
    ("distributions", "codes_per_visit", "KS codes per visit", "lower"),
    (
        "discriminator",
        "accuracy",
        "real-vs-synthetic classifier accuracy",
        "closer to 0.5",
    ),
)
#: the figures of :attr:`FidelityResult.distributions` that count visits per patient:
#: a generator calibrated to the real cohort's visit counts matches them by design.
VISIT_COUNT_FIGURES = ("visits_per_patient",)


@dataclass(frozen=True)
class PrevalencePoints:
    """The points of one statistic's scatter plot: one per real code (pair,
    transition), with its label, modality and real and synthetic prevalence."""

    kind: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    real: np.ndarray
    synthetic: np.ndarray

    def top(self, n: int = 10) -> list[tuple[str, float, float]]:
        """The ``n`` points where real and synthetic differ most, as
        ``(label, real, synthetic)``."""
        order = np.argsort(-np.abs(self.real - self.synthetic), kind="stable")[:n]
        return [
            (self.labels[i], float(self.real[i]), float(self.synthetic[i]))
            for i in order.tolist()
        ]


@dataclass(frozen=True)
class FidelityResult:
    """What :func:`fidelity` measures (see the module docstring for definitions).

    ``r2``, ``r2_long_tail`` and each ``r2_by_modality[m]`` map the six statistics
    (:data:`KINDS`) to an R² (higher is better, 1 is perfect); ``distributions`` and
    numerical ``demographics`` hold ``real_mean``, ``synthetic_mean``, ``ks`` and
    ``wasserstein`` (lower is better); ``discriminator`` holds ``accuracy`` and
    ``auc`` (closer to 0.5 is better; empty when not run).
    """

    n_real: int
    n_synthetic: int
    r2: dict[str, float]
    r2_by_modality: dict[str, dict[str, float]]
    r2_long_tail: dict[str, float]
    n_keys: dict[str, int]
    long_tail_threshold: float
    distributions: dict[str, dict[str, float]]
    demographics: dict[str, dict[str, Any]]
    conditional: dict[str, dict[str, dict[str, Any]]]
    discriminator: dict[str, float]
    unseen: dict[str, float]
    notes: tuple[str, ...] = ()
    tables: Mapping[str, Table] = field(default_factory=dict, repr=False, compare=False)
    vocabulary: Vocabulary | None = field(default=None, repr=False, compare=False)

    def prevalence_points(
        self, kind: str = "patient_code", modality: str | None = None
    ) -> PrevalencePoints:
        """The scatter-plot points of one statistic, optionally of one modality.

        Labels are ``"modality:code"``; ``"a + b"`` for pairs, ``"a -> b"`` for
        transitions.
        """
        if kind not in self.tables:
            raise ConfigError(
                f"The 'kind' parameter of prevalence_points must be one of "
                f"{list(KINDS)}. Got {kind!r} instead.{did_you_mean(kind, KINDS)}"
            )
        vocabulary, table = self.vocabulary, self.tables[kind]
        assert vocabulary is not None
        keep = np.ones(len(table.a), dtype=bool)
        if modality is not None:
            if modality not in vocabulary.modalities:
                raise ConfigError(
                    f"The 'modality' parameter of prevalence_points must be one of "
                    f"{list(vocabulary.modalities)}. Got {modality!r} instead."
                )
            in_modality = vocabulary.code_modality == vocabulary.modalities.index(
                modality
            )
            keep = _keep(table, in_modality, both=True)
        names = np.array(vocabulary.modalities, dtype=object)
        labels = [vocabulary.label(a) for a in table.a[keep].tolist()]
        modalities = names[vocabulary.code_modality[table.a[keep]]].tolist()
        if table.b is not None:
            joint = " + " if kind.endswith("pair") else " -> "
            second = [vocabulary.label(b) for b in table.b[keep].tolist()]
            labels = [f"{x}{joint}{y}" for x, y in zip(labels, second)]
            other = names[vocabulary.code_modality[table.b[keep]]].tolist()
            modalities = [
                x if x == y else f"{x}{joint}{y}" for x, y in zip(modalities, other)
            ]
        return PrevalencePoints(
            kind,
            tuple(labels),
            tuple(modalities),
            table.real[keep],
            table.synthetic[keep],
        )

    def summary(self, *, visit_count_note: str = "") -> list[MetricRow]:
        """The headline figures, for the evaluation summary.

        Args:
            visit_count_note: a note for the figures of visits per patient
                (:data:`VISIT_COUNT_FIGURES`), such as "calibrated to the training
                cohort" when the generator was tuned to match them.
        """
        rows = []
        for group, key, label, direction in _HEADLINES:
            figure = getattr(self, group).get(key)
            if isinstance(figure, dict):
                figure = figure.get("ks")
            note = visit_count_note if key in VISIT_COUNT_FIGURES else ""
            rows.append(
                MetricRow(
                    suite="fidelity",
                    metric=label,
                    value=figure,
                    direction=direction,
                    note=note,
                )
            )
        return rows

    def figures(self) -> list[MetricRow]:
        """Every figure, named by where it is kept (``r2/patient_code``,
        ``demographics/age/ks``...)."""
        rows = [(f"r2/{k}", v, "higher") for k, v in self.r2.items()]
        rows += [
            (f"r2_long_tail/{k}", v, "higher") for k, v in self.r2_long_tail.items()
        ]
        for modality, figures in self.r2_by_modality.items():
            rows += [(f"r2/{modality}/{k}", v, "higher") for k, v in figures.items()]
        for name, figures in self.distributions.items():
            rows += [
                (f"{name}/{k}", figures[k], "lower") for k in ("ks", "wasserstein")
            ]
        for name, figures in self.demographics.items():
            keys = ("ks", "wasserstein") if figures["kind"] == "numerical" else ("tvd",)
            rows += [(f"demographics/{name}/{k}", figures[k], "lower") for k in keys]
        for name, categories in self.conditional.items():
            rows += [
                (f"conditional/{name}={category}/r2", figures["r2"], "higher")
                for category, figures in categories.items()
            ]
        rows += [
            (f"discriminator/{k}", self.discriminator[k], "closer to 0.5")
            for k in ("accuracy", "auc")
            if k in self.discriminator
        ]
        return [
            MetricRow(suite="fidelity", metric=name, value=value, direction=direction)
            for name, value, direction in rows
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN stays a float), with the code scatter points."""
        out = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("tables", "vocabulary", "notes")
        }
        out["notes"] = list(self.notes)
        out["prevalence_points"] = {}
        for kind in _POINT_KINDS:
            if kind in self.tables:
                points = self.prevalence_points(kind)
                out["prevalence_points"][kind] = {
                    "labels": list(points.labels),
                    "modalities": list(points.modalities),
                    "real": points.real.tolist(),
                    "synthetic": points.synthetic.tolist(),
                }
        return _plain(out)


def fidelity(
    real: Cohort, synthetic: Cohort, *, seed: int = 0, discriminator: bool = True
) -> FidelityResult:
    """Compare a synthetic cohort with a real one (see the module docstring).

    Args:
        real: the reference cohort.
        synthetic: the cohort to judge; its codes are matched to the real ones by
            modality and code string.
        seed: seeds the discriminator's sample and folds.
        discriminator: run the real-vs-synthetic classifier (the slowest part).

    Raises:
        ConfigError: when a cohort is not a :class:`Cohort` or is empty.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> cohort = demo_cohort(200, seed=0)
        >>> result = fidelity(cohort, cohort, discriminator=False)
        >>> result.r2["patient_code"], result.distributions["visits_per_patient"]["ks"]
        (1.0, 0.0)
    """
    for name, cohort in (("real", real), ("synthetic", synthetic)):
        if not isinstance(cohort, Cohort):
            raise ConfigError(
                f"The {name!r} parameter of fidelity must be a Cohort. Got "
                f"{type(cohort).__name__} instead."
            )
        if len(cohort) == 0:
            raise ConfigError(
                f"The {name!r} parameter of fidelity must hold at least one patient. "
                f"Got an empty cohort instead; check how it was read or generated."
            )
    start = time.perf_counter()
    notes: list[str] = []
    vocabulary, coded_real, coded_synthetic = align(real, synthetic)
    tables = prevalence_tables(coded_real, coded_synthetic, notes)
    threshold, tail = _long_tail(tables["patient_code"], vocabulary)
    by_modality = {}
    for index, modality in enumerate(real.schema.modalities):
        by_modality[modality] = _r2_figures(
            tables,
            notes,
            f"r2_by_modality[{modality!r}]",
            vocabulary.code_modality == index,
            both=True,
        )
    figures = None
    if discriminator:
        figures, reason = discriminate(coded_real, coded_synthetic, seed)
        notes.extend([reason] if reason else [])
    result = FidelityResult(
        n_real=len(real),
        n_synthetic=len(synthetic),
        r2=_r2_figures(tables, notes, "r2"),
        r2_by_modality=by_modality,
        r2_long_tail=_r2_figures(tables, notes, "r2_long_tail", tail, both=False),
        n_keys={kind: len(table.a) for kind, table in tables.items()},
        long_tail_threshold=threshold,
        distributions=_distributions(
            real, synthetic, coded_real, coded_synthetic, vocabulary, notes
        ),
        demographics=_demographics(real, synthetic, notes),
        conditional=_conditional(
            real, synthetic, coded_real, coded_synthetic, vocabulary
        ),
        discriminator=figures or {},
        unseen=_unseen(coded_synthetic, vocabulary),
        notes=tuple(notes),
        tables=tables,
        vocabulary=vocabulary,
    )
    logger.debug(
        "fidelity: %d real vs %d synthetic patients in %.1f s",
        len(real),
        len(synthetic),
        time.perf_counter() - start,
    )
    return result


# --------------------------------------------------------------------------- R²


def _keep(table: Table, code_mask: np.ndarray, both: bool) -> np.ndarray:
    """Keys whose codes are in ``code_mask``: all of them (``both``) or any."""
    if table.b is None:
        return code_mask[table.a]
    combine = np.logical_and if both else np.logical_or
    return combine(code_mask[table.a], code_mask[table.b])


def _r2_figures(
    tables: Mapping[str, Table],
    notes: list[str],
    where: str,
    code_mask: np.ndarray | None = None,
    both: bool = True,
) -> dict[str, float]:
    out = {}
    for kind, table in tables.items():
        keep = (
            np.ones(len(table.a), bool)
            if code_mask is None
            else _keep(table, code_mask, both)
        )
        value, reason = r2(table.real[keep], table.synthetic[keep])
        if reason:
            notes.append(f"{where}[{kind!r}]: {reason}.")
        out[kind] = value
    return out


def _long_tail(table: Table, vocabulary: Vocabulary) -> tuple[float, np.ndarray]:
    """The prevalence threshold and the (C,) mask of long-tail codes."""
    tail = np.zeros(vocabulary.size, dtype=bool)
    if not len(table.real):
        return math.nan, tail
    threshold = float(np.quantile(table.real, LONG_TAIL_QUANTILE))
    tail[table.a[table.real <= threshold]] = True
    return threshold, tail


# --------------------------------------------------------------------------- others


def _distributions(
    real: Cohort,
    synthetic: Cohort,
    coded_real: Coded,
    coded_synthetic: Coded,
    vocabulary: Vocabulary,
    notes: list[str],
) -> dict[str, dict[str, float]]:
    pairs = ((real, coded_real), (synthetic, coded_synthetic))
    out = {
        "visits_per_patient": compare(
            coded_real.visits_per_patient, coded_synthetic.visits_per_patient
        ),
        "codes_per_visit": compare(
            *(np.diff(coded.visits.indptr) for _, coded in pairs)
        ),
    }
    for index, modality in enumerate(real.schema.modalities):
        in_modality = (vocabulary.code_modality == index).astype(np.int64)
        out[f"codes_per_visit/{modality}"] = compare(
            *(coded.visits @ in_modality for _, coded in pairs)
        )
    if real.times_are_placeholders or synthetic.times_are_placeholders:
        notes.append(
            "gap_days: left out, a cohort has placeholder visit times (no real dates)."
        )
    else:
        out.update(_gap_distributions(real, synthetic))
    if real.event_values is not None and synthetic.event_values is None:
        notes.append(
            "value/*: left out, the synthetic cohort has no numeric values (its model "
            "does not generate them)."
        )
    elif real.event_values is not None:
        out.update(_value_distributions(real, synthetic))
    return out


#: visit indices (1-based) whose preceding gap gets a ``gap_days/visit_<t>`` row.
GAP_VISITS = (2, 3, 4)
#: how many codes get a ``gap_days | after <code>`` or ``value/<lab> | <code>`` row.
TOP_CONDITIONS = 3
#: the fewest real occurrences a code needs to be chosen for such a row.
MIN_CONDITION_COUNT = 30


def _gaps(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    """(V-1,) gap in days after each visit (NaN after a patient's last), and (V,)
    each visit's 1-based index within its patient."""
    days = cohort.visit_times.astype("datetime64[s]").astype(np.int64) / 86400.0
    gaps = np.diff(days)
    gaps[np.diff(cohort.visit_patient) != 0] = np.nan
    starts = np.repeat(cohort.visit_offsets[:-1], np.diff(cohort.visit_offsets))
    return gaps, np.arange(cohort.n_visits) - starts + 1


def _visits_with(cohort: Cohort, code: str) -> np.ndarray:
    """(V,) whether each visit holds ``code`` (in any modality)."""
    out = np.zeros(cohort.n_visits, dtype=bool)
    hit = np.flatnonzero(cohort.code_values == code)
    out[cohort.event_visit[np.isin(cohort.event_codes, hit)]] = True
    return out


def _gap_distributions(real: Cohort, synthetic: Cohort) -> dict[str, dict]:
    """``gap_days`` overall, before the 2nd-4th visits, and after the visits holding
    each of the real cohort's codes whose following gap differs most from the
    usual one (an acute event brings the next visit sooner)."""
    (real_gaps, real_index), (gaps, index) = _gaps(real), _gaps(synthetic)
    out = {"gap_days": compare(real_gaps[~np.isnan(real_gaps)], gaps[~np.isnan(gaps)])}
    for t in GAP_VISITS:
        # The gap before visit t follows visit t - 1.
        out[f"gap_days/visit_{t}"] = compare(
            real_gaps[(real_index[:-1] == t - 1) & ~np.isnan(real_gaps)],
            gaps[(index[:-1] == t - 1) & ~np.isnan(gaps)],
        )
    for code in _gap_conditions(real, real_gaps):
        before_real = _visits_with(real, code)[:-1] & ~np.isnan(real_gaps)
        before = _visits_with(synthetic, code)[:-1] & ~np.isnan(gaps)
        out[f"gap_days | after {code}"] = compare(real_gaps[before_real], gaps[before])
    return out


def _gap_conditions(real: Cohort, gaps: np.ndarray) -> list[str]:
    """The codes after whose visits the median gap differs most (by log ratio)
    from the median of all gaps, among codes before at least
    ``MIN_CONDITION_COUNT`` gaps."""
    known = ~np.isnan(gaps)
    if known.sum() < MIN_CONDITION_COUNT:
        return []
    events = np.flatnonzero(known[np.minimum(real.event_visit, len(gaps) - 1)])
    events = events[real.event_visit[events] < len(gaps)]
    code_gap = gaps[real.event_visit[events]]
    codes = real.event_codes[events]
    overall = np.median(gaps[known])
    scores = []
    for code in np.unique(codes).tolist():
        mine = code_gap[codes == code]
        if len(mine) >= MIN_CONDITION_COUNT and overall > 0:
            ratio = abs(np.log(max(np.median(mine), 1e-9) / overall))
            scores.append((-ratio, str(real.code_values[code])))
    return [code for _, code in sorted(scores)[:TOP_CONDITIONS]]


#: how many codes with values get a ``value/<code>`` row (the most measured ones).
TOP_VALUED_CODES = 5


def _value_distributions(real: Cohort, synthetic: Cohort) -> dict[str, dict]:
    """``value/<code>``: the values of the real cohort's most measured codes, real
    against synthetic (chosen on the real cohort alone, so every generation mode of
    a report has the same rows)."""

    def valued(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isfinite(cohort.event_values)
        return cohort.code_values[cohort.event_codes[keep]], cohort.event_values[keep]

    real_codes, real_values = valued(real)
    synthetic_codes, synthetic_values = valued(synthetic)
    names, counts = np.unique(real_codes, return_counts=True)
    top = names[np.lexsort((names, -counts))][:TOP_VALUED_CODES]
    out = {
        f"value/{code}": compare(
            real_values[real_codes == code], synthetic_values[synthetic_codes == code]
        )
        for code in top.tolist()
    }
    for lab in top.tolist():
        condition = _value_condition(real, lab)
        if condition is not None:
            out[f"value/{lab} | {condition}"] = compare(
                _values_at(real, lab, condition), _values_at(synthetic, lab, condition)
            )
    return out


def _lab_events(cohort: Cohort, lab: str) -> np.ndarray:
    """The events of code ``lab`` that carry a value."""
    hit = np.flatnonzero(cohort.code_values == lab)
    events = np.flatnonzero(np.isin(cohort.event_codes, hit))
    return events[np.isfinite(cohort.event_values[events])]


def _values_at(cohort: Cohort, lab: str, condition: str) -> np.ndarray:
    """The values of ``lab`` at visits that also hold ``condition``."""
    events = _lab_events(cohort, lab)
    at = _visits_with(cohort, condition)[cohort.event_visit[events]]
    return cohort.event_values[events[at]]


def _value_condition(real: Cohort, lab: str) -> str | None:
    """The code whose presence at a visit shifts ``lab``'s mean value most (in
    standard deviations), among codes at ``MIN_CONDITION_COUNT`` or more of its
    measurements and absent from at least as many."""
    events = _lab_events(real, lab)
    values = real.event_values[events].astype(np.float64)
    if len(values) < 2 * MIN_CONDITION_COUNT or values.std() == 0:
        return None
    visit_row = np.full(real.n_visits, -1)
    visit_row[real.event_visit[events]] = np.arange(len(events))
    # Every (measurement, other code at its visit) pair.
    row = visit_row[real.event_visit]
    keep = row >= 0
    pairs_row, pairs_code = row[keep], real.event_codes[keep]
    own = real.code_values[pairs_code] == lab
    pairs_row, pairs_code = pairs_row[~own], pairs_code[~own]
    n = np.bincount(pairs_code, minlength=len(real.code_values))
    total = np.bincount(pairs_code, weights=values[pairs_row], minlength=len(n))
    chosen = (n >= MIN_CONDITION_COUNT) & (len(values) - n >= MIN_CONDITION_COUNT)
    if not chosen.any():
        return None
    with_mean = total[chosen] / n[chosen]
    without_mean = (values.sum() - total[chosen]) / (len(values) - n[chosen])
    shift = np.abs(with_mean - without_mean) / values.std()
    candidates = np.flatnonzero(chosen)
    best = candidates[np.lexsort((real.code_values[candidates], -shift))[0]]
    return str(real.code_values[best])


def _demographics(
    real: Cohort, synthetic: Cohort, notes: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ours, theirs = real.schema, synthetic.schema
    for name in ours.features:
        categorical = name in ours.categorical
        if name not in theirs.features or categorical != (name in theirs.categorical):
            notes.append(
                f"demographics[{name!r}]: left out, the synthetic cohort has no "
                f"{'categorical' if categorical else 'numerical'} feature {name!r}."
            )
            continue
        if categorical:
            shares = [_shares(cohort, name) for cohort in (real, synthetic)]
            categories = list(dict.fromkeys([*shares[0], *shares[1]]))
            aligned = [{c: s.get(c, 0.0) for c in categories} for s in shares]
            out[name] = {
                "kind": "categorical",
                "real": aligned[0],
                "synthetic": aligned[1],
                "tvd": 0.5
                * sum(abs(aligned[0][c] - aligned[1][c]) for c in categories),
            }
        else:
            values = [cohort.static[name] for cohort in (real, synthetic)]
            out[name] = {
                "kind": "numerical",
                **compare(*(v[~np.isnan(v)] for v in values)),
                "real_missing": float(np.isnan(values[0]).mean()),
                "synthetic_missing": float(np.isnan(values[1]).mean()),
            }
    return out


def _shares(cohort: Cohort, name: str) -> dict[str, float]:
    codes = cohort.static[name]
    categories = cohort.schema.categorical[name]
    counts = np.bincount(codes[codes >= 0], minlength=len(categories))
    shares = {c: n / len(cohort) for c, n in zip(categories, counts.tolist())}
    if (codes < 0).any():
        shares["<missing>"] = float((codes < 0).mean())
    return shares


def _conditional(
    real: Cohort,
    synthetic: Cohort,
    coded_real: Coded,
    coded_synthetic: Coded,
    vocabulary: Vocabulary,
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, categories in real.schema.categorical.items():
        if name not in synthetic.schema.categorical:
            continue  # noted by _demographics
        theirs = {c: i for i, c in enumerate(synthetic.schema.categorical[name])}
        out[name] = {}
        for index, category in enumerate(categories):
            ours = np.flatnonzero(real.static[name] == index)
            other = np.flatnonzero(synthetic.static[name] == theirs.get(category, -2))
            if not len(ours):
                continue
            real_values = _mean_rows(coded_real.patients, ours)
            synthetic_values = _mean_rows(coded_synthetic.patients, other)
            (keys,) = np.nonzero(real_values)
            value, reason = r2(real_values[keys], synthetic_values[keys])
            if not len(other):
                value, reason = math.nan, "undefined: no synthetic patient"
            difference = np.abs(real_values - synthetic_values)
            order = np.argsort(-difference, kind="stable")[:TOP_DISAGREEING]
            out[name][category] = {
                "r2": value,
                "note": reason,
                "n_real": len(ours),
                "n_synthetic": len(other),
                "top_disagreeing": [
                    {
                        "code": vocabulary.label(code),
                        "real": float(real_values[code]),
                        "synthetic": float(synthetic_values[code]),
                    }
                    for code in order.tolist()
                    if difference[code] > 0
                ],
            }
    return out


def _mean_rows(matrix: Any, rows: np.ndarray) -> np.ndarray:
    if not len(rows):
        return np.zeros(matrix.shape[1])
    return np.asarray(matrix[rows].mean(axis=0)).ravel()


def _unseen(coded: Coded, vocabulary: Vocabulary) -> dict[str, float]:
    events = coded.visits.nnz
    unseen_events = coded.visits[:, vocabulary.n_real :].nnz
    return {
        "codes": vocabulary.size - vocabulary.n_real,
        "event_share": unseen_events / events if events else 0.0,
    }


def _plain(value: Any) -> Any:
    """Numpy scalars and containers as plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
