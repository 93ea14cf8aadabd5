"""lpl and mpl: how well a model imputes the codes of a visit, per modality.

Definitions (METHOD.md, the paper's Table 2):

* **lpl**, longitudinal imputation perplexity: each true code of visit t (t >= 2) is
  scored given visits 1..t-1 and the baseline features;
* **mpl**, cross-modal imputation perplexity: each true code of modality k in visit t
  is scored given visits 1..t-1 and visit t's other modalities.

Per patient and modality (the paper's formula, K = 1 since we report per modality)::

    ppl = exp( (1/T) * sum_t (1/l_t) * sum_{l=1..l_t} -log p(c_l) )

over the T visits where the modality has l_t > 0 scored codes. Across patients we report
the **median** (perplexities are heavy-tailed) with a bootstrap 95% interval over
patients, and the mean, marked as such.

Scoring protocols (a result always says which):

* **chain** (autoregressive models; what the reference implementation measures): the
  true codes of the target modality are fed in their recorded order with teacher
  forcing; each is scored given the context and the codes before it, under the
  distribution restricted to the modality's codes.
* **set** (comparable across model families): each true code is scored under one
  categorical distribution over the modality's codes for the target slot: for an
  autoregressive model, the distribution of the first code after the modality's open
  token; for a multi-label model, its scores normalised over the modality's vocabulary.
  A model that is uniform over V codes scores exactly V; a perfect model of a visit
  with l codes (1/l on each) scores l.

The reference implementation aggregates differently: per batch of patients, the median
over the batch's target tokens of 1/p(token), then the median over batches.
:func:`reference_statistic` computes it so that our figures can stand beside figures
from the reference code; it is labelled as such wherever it appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrgen.evaluation.rows import MetricRow
from ehrgen.models.base import CodeScores

__all__ = [
    "ModalityPerplexity",
    "PerplexityResult",
    "bootstrap_median",
    "patient_log_perplexities",
    "patient_perplexities",
    "perplexity",
    "reference_statistic",
]


@dataclass(frozen=True)
class ModalityPerplexity:
    """One modality's figures (lower is better)."""

    median: float
    ci_low: float
    ci_high: float
    mean: float
    n_patients: int
    n_codes: int
    reference: float  # the reference implementation's statistic

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PerplexityResult:
    """lpl or mpl of one model, per modality, under one protocol."""

    metric: str  # "lpl" or "mpl"
    protocol: str
    model: str
    modalities: dict[str, ModalityPerplexity] = field(default_factory=dict)
    n_out_of_vocabulary: int = 0
    direction: str = "lower is better"
    # K, when the scores are a Monte Carlo estimate (a GAN's set score).
    mc_samples: int | None = None

    @property
    def protocol_label(self) -> str:
        """The protocol as tables print it: ``set``, or ``set, MC K=256``."""
        if self.mc_samples is None:
            return self.protocol
        return f"{self.protocol}, MC K={self.mc_samples}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "metric": self.metric,
            "protocol": self.protocol,
            "model": self.model,
            "direction": self.direction,
            "n_out_of_vocabulary": self.n_out_of_vocabulary,
            "modalities": {m: v.to_dict() for m, v in self.modalities.items()},
        }
        if self.mc_samples is not None:  # exact figures keep their old keys
            out["mc_samples"] = self.mc_samples
        return out

    def summary(self) -> list[MetricRow]:
        """One row per modality: the median per-patient perplexity and its interval.

        Example:
            >>> f = ModalityPerplexity(4.0, 3.5, 4.6, 4.2, 10, 30, 4.1)
            >>> result = PerplexityResult("lpl", "set", "m", {"diagnosis": f})
            >>> [(row.metric, row.text()) for row in result.summary()]
            [('lpl diagnosis, median (set)', '4.000 [3.500, 4.600]')]
        """
        return [
            MetricRow(
                suite="perplexity",
                metric=f"{self.metric} {modality}, median ({self.protocol_label})",
                value=f.median if f.n_patients else None,
                interval=(f.ci_low, f.ci_high),
                direction="lower",
            )
            for modality, f in self.modalities.items()
        ]


def patient_perplexities(scores: CodeScores) -> dict[str, np.ndarray]:
    """Per modality, the perplexity of each patient that has scored codes in it.

    Example:
        >>> rows = [(0, 1, 0, "a", np.log(0.5)), (0, 1, 0, "b", np.log(0.5))]
        >>> s = CodeScores.from_rows(rows, ["diagnosis"], "set", "longitudinal")
        >>> patient_perplexities(s)["diagnosis"].tolist()
        [2.0]
    """
    n_patients = int(scores.patient.max()) + 1 if len(scores.patient) else 0
    table = patient_log_perplexities(scores, n_patients)
    return {
        name: np.exp(column[~np.isnan(column)])
        for name, column in zip(scores.modalities, table.T)
    }


def patient_log_perplexities(scores: CodeScores, n_patients: int) -> np.ndarray:
    """(n_patients, modalities) log-perplexity of each patient in each modality: the
    mean over its scored visits of the visit's mean negative log-probability; NaN
    where the patient has no scored code in the modality.

    Example:
        >>> rows = [(1, 1, 0, "a", np.log(0.5)), (1, 2, 0, "b", np.log(0.25))]
        >>> s = CodeScores.from_rows(rows, ["diagnosis"], "set", "longitudinal")
        >>> np.exp(patient_log_perplexities(s, 2)).round(3).tolist()
        [[nan], [2.828]]
    """
    out = np.full((n_patients, len(scores.modalities)), np.nan)
    for index in range(len(scores.modalities)):
        rows = scores.modality == index
        if not rows.any():
            continue
        patient, visit = scores.patient[rows], scores.visit[rows]
        nll = -scores.log_prob[rows]
        # Mean NLL per (patient, visit), then the mean over the patient's visits.
        keys, inverse = np.unique(
            np.stack([patient, visit]), axis=1, return_inverse=True
        )
        visit_nll = np.bincount(inverse, nll) / np.bincount(inverse)
        owners, owner_index = np.unique(keys[0], return_inverse=True)
        out[owners, index] = np.bincount(owner_index, visit_nll) / np.bincount(
            owner_index
        )
    return out


def bootstrap_median(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """The median and a percentile bootstrap interval of it.

    Example:
        >>> median, low, high = bootstrap_median(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
        >>> median, low <= median <= high
        (3.0, True)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(n_resamples, values.size), replace=True)
    medians = np.median(samples, axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(np.median(values)), float(low), float(high)


def reference_statistic(
    scores: CodeScores, modality: int, batch_size: int = 16
) -> float:
    """The reference implementation's figure: per batch of ``batch_size`` patients,
    the median over the batch's target tokens of 1/p; then the median over batches."""
    rows = scores.modality == modality
    if not rows.any():
        return float("nan")
    patient, inverse_p = scores.patient[rows], np.exp(-scores.log_prob[rows])
    order = np.unique(patient)
    batch_of = np.searchsorted(order, patient) // batch_size
    medians = [np.median(inverse_p[batch_of == b]) for b in np.unique(batch_of)]
    return float(np.median(medians))


def perplexity(
    scores: CodeScores, n_resamples: int = 1000, seed: int = 0
) -> PerplexityResult:
    """lpl (longitudinal scores) or mpl (cross-modal scores) per modality."""
    per_patient = patient_perplexities(scores)
    figures = {}
    for index, name in enumerate(scores.modalities):
        values = per_patient[name]
        median, low, high = bootstrap_median(values, n_resamples, seed)
        figures[name] = ModalityPerplexity(
            median=median,
            ci_low=low,
            ci_high=high,
            mean=float(values.mean()) if values.size else float("nan"),
            n_patients=int(values.size),
            n_codes=int((scores.modality == index).sum()),
            reference=reference_statistic(scores, index),
        )
    metric = "lpl" if scores.task == "longitudinal" else "mpl"
    return PerplexityResult(
        metric,
        scores.protocol,
        scores.model,
        figures,
        scores.n_out_of_vocabulary,
        mc_samples=scores.mc_samples,
    )
