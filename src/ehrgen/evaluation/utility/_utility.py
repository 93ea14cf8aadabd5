"""Utility: does a predictor trained on synthetic patients work on real ones?

:func:`utility` reproduces the paper's experiment (METHOD.md, Utility): an LSTM that
predicts the next visit's diagnoses, trained on synthetic data only, on real data only
and on real plus synthetic data, each tested on the same held-out real patients.

* **Examples.** Every visit t of a test patient followed by a visit t + 1 with at least
  one code of the target modality (diagnoses by default): predict the target codes of
  visit t + 1 from visits 1..t and the baseline features. Training examples are built
  the same way from the training patients.
* **Predictor** (:mod:`ehrgen.evaluation.utility._model`): a left-to-right LSTM over
  multi-hot visits of every modality plus baseline features, one sigmoid output per
  target code, binary cross-entropy. Codes are matched across cohorts by
  ``(modality, code string)``; codes the training data never had are ignored when read
  and never predicted. Adam for ``epochs`` epochs, and at least ``min_steps`` steps
  so that a small training set is not judged undertrained (or early stopping on a
  validation share of the training patients).
* **recall@k** of an example = |top-k predicted ∩ true| / |true|, the definition of
  PromptEHR's and HALO's utility experiments: the denominator is the number of true
  codes, not min(k, |true|), so a visit with more than k codes cannot reach 1. True
  codes include those the training data never had (no model predicts them; the
  denominator is the same for every setting). The figure is the mean over examples,
  with a 95% percentile bootstrap interval over test *patients* (a patient's examples
  are resampled together); every setting sees the same resamples.
* **Settings.** ``real`` for each of ``real_sizes``, ``synthetic`` for each of
  ``synthetic_sizes``, ``real+synthetic`` for the largest real size plus each synthetic
  size. Subsets are drawn at random (``seed``) and nested: a smaller subset is the
  start of a larger one, so a curve's points differ by data added, not redrawn.
* **Baselines**, counted on the largest real training subset: ``frequency`` predicts
  the k most frequent target codes (share of visits) for everyone; ``history`` ranks
  the patient's own past target codes (visits 1..t) by how many visits had them, then
  the rest by frequency.
* **Patient-level label** (``cohort.labels``, e.g. the reference pickle's ``y``):
  logistic regression on each patient's log(1 + visits with each code) over all visits
  and the baseline features, ROC AUC on the test patients with a known label (bootstrap
  interval). It is trained for a setting only when every cohort the setting draws from
  has the label: synthetic cohorts usually have none, and then only the real settings
  report it (a note says so). The label must be 0/1.

Simplified from the paper: one LSTM layer of 64 units by default (the paper does not
give the predictor's size), no hyper-parameter search.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, did_you_mean
from ehrgen.evaluation._estimates import Estimate, bootstrap
from ehrgen.evaluation.utility._results import SettingResult, UtilityResult

__all__ = ["UtilityConfig", "recall_at_k", "utility"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class UtilityConfig(ConfigMixin):
    """Settings of the utility evaluation.

    Example:
        >>> UtilityConfig().ks, UtilityConfig.tiny().epochs
        ((10, 20), 3)
    """

    hidden: int = 64  # LSTM units
    layers: int = 1
    epochs: int = 10
    batch_size: int = 64  # patients per step
    learning_rate: float = 1e-3
    seed: int = 0  # subsets, weights, batches and bootstrap resamples
    target_modality: str = "diagnosis"
    ks: tuple[int, ...] = (10, 20)
    n_resamples: int = 500  # bootstrap resamples per figure
    # Share of training patients held out for early stopping; 0 trains all epochs.
    validation_fraction: float = 0.0
    patience: int = 2  # epochs without a lower validation loss before stopping
    # At least this many optimiser steps (more epochs for a small training set), so
    # that a size curve compares data, not how long each model trained.
    min_steps: int = 500
    # The patient-level label for the AUC; None: the test cohort's first, if any.
    label: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        ks = self.ks
        ok = isinstance(ks, (tuple, list)) and len(ks) > 0
        ok = ok and all(isinstance(k, int) and not isinstance(k, bool) for k in ks)
        ok = ok and min(ks) > 0 and len(set(ks)) == len(ks)
        check(ok, owner, "ks", "distinct positive ints", ks)
        object.__setattr__(self, "ks", tuple(sorted(ks)))
        check_positive_ints(
            self, "hidden", "layers", "epochs", "batch_size", "n_resamples", "patience"
        )
        lr = self.learning_rate
        ok = isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0
        check(ok, owner, "learning_rate", "a positive number", lr)
        for name in ("seed", "min_steps"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            check(ok, owner, name, "a non-negative int", value)
        ok = isinstance(self.target_modality, str) and bool(self.target_modality)
        check(ok, owner, "target_modality", "a modality name", self.target_modality)
        fraction = self.validation_fraction
        ok = isinstance(fraction, (int, float)) and 0 <= fraction < 1
        check(ok, owner, "validation_fraction", "in [0, 1)", fraction)
        ok = self.label is None or (isinstance(self.label, str) and bool(self.label))
        check(ok, owner, "label", "None or a label name", self.label)

    @classmethod
    def tiny(cls, **changes: Any) -> UtilityConfig:
        """A small predictor and few resamples: for tests and docs."""
        return cls(hidden=16, epochs=3, min_steps=0, n_resamples=50).replace(**changes)


# --------------------------------------------------------------------------- recall


def recall_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per row, recall@k = |top-k ∩ true| / |true|.

    Args:
        scores: (N, C) scores, higher is more likely; columns with a non-finite score
            are never predicted.
        truth: (N, C) 0/1, the true columns of each row (a scipy sparse matrix works).
        k: how many columns are predicted.

    Returns:
        (N,) recalls; NaN for a row with no true column.

    Example:
        >>> scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4]])
        >>> truth = np.array([[1, 1, 0, 0], [1, 0, 0, 1]])
        >>> recall_at_k(scores, truth, 2).tolist()  # top 2: {0, 2} and {3, 2}
        [0.5, 0.5]
    """
    if hasattr(truth, "toarray"):
        truth = truth.toarray()
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth) != 0
    if scores.ndim != 2 or scores.shape != truth.shape:
        raise ConfigError(
            f"The 'scores' and 'truth' parameters of recall_at_k must be 2-D arrays "
            f"of the same shape. Got {scores.shape} and {truth.shape} instead."
        )
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0
    check(ok, "recall_at_k", "k", "a positive int", k)
    from ehrgen.evaluation.utility._model import rank_scores

    top = rank_scores(scores, int(k))
    hit = np.take_along_axis(truth, np.maximum(top, 0), 1) & (top >= 0)
    n_true = truth.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, hit.sum(1) / n_true, np.nan)


def _recall(
    task: Any, ranked: np.ndarray, config: UtilityConfig
) -> dict[int, Estimate]:
    """recall@k of (N, max k) ranked joint codes, with intervals over test patients."""
    hit = task.hits(ranked)
    sums = {
        k: np.bincount(task.patient, hit[:, :k].sum(1) / task.n_true, task.n_patients)
        for k in config.ks
    }
    counts = np.bincount(task.patient, minlength=task.n_patients)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        return {f"recall@{k}": sums[k][idx].sum() / counts[idx].sum() for k in sums}

    directions = {f"recall@{k}": "higher" for k in config.ks}
    rng = np.random.default_rng(config.seed)  # the same resamples for every setting
    found = bootstrap(
        statistic, (task.n_patients,), rng, config.n_resamples, directions
    )
    return {k: found[f"recall@{k}"] for k in config.ks}


# --------------------------------------------------------------------------- main


def utility(
    train_real: Cohort,
    synthetic: Cohort,
    test: Cohort,
    *,
    real_sizes: Sequence[int] | None = None,
    synthetic_sizes: Sequence[int] | None = None,
    config: UtilityConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> UtilityResult:
    """Train next-visit predictors on real, synthetic and mixed data; test on ``test``.

    Args:
        train_real: real training patients (never the test patients).
        synthetic: the generator's output.
        test: held-out real patients.
        real_sizes: how many real patients each ``real`` setting trains on (default:
            all of ``train_real``); at least one.
        synthetic_sizes: the same for ``synthetic`` settings (default: all); empty
            runs no synthetic and no real+synthetic setting.
        config: predictor and evaluation settings.
        progress: called with each setting's name as it starts.

    Raises:
        ConfigError: an empty cohort, a size out of range, a target modality a cohort
            lacks, no example to test on or to train from, an unknown label.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> train, test = demo_cohort(300, seed=0).split([0.7, 0.3], seed=0)
        >>> config = UtilityConfig.tiny(epochs=1, n_resamples=10)
        >>> result = utility(train, demo_cohort(100, seed=1), test, config=config)
        >>> [s.name for s in result.settings]
        ['real:210', 'synthetic:100', 'real+synthetic:210+100']
    """
    from ehrgen.evaluation.utility import _model as m

    config = config or UtilityConfig()
    _check_cohorts(train_real=train_real, synthetic=synthetic, test=test)
    real_sizes = _sizes(real_sizes, train_real, "real_sizes", "train_real", False)
    synthetic_sizes = _sizes(
        synthetic_sizes, synthetic, "synthetic_sizes", "synthetic", True
    )
    used = {"test": test, "train_real": train_real}
    used.update({"synthetic": synthetic} if synthetic_sizes else {})
    for name, cohort in used.items():
        _check_target(config.target_modality, name, cohort)
    notes: list[str] = []
    label = _label_name(config, test, notes)
    is_target, (real, synth, held_out) = m.joint_records(
        [train_real, synthetic, test], test, label, config.target_modality
    )
    task = m.HeldOut.of(held_out, is_target)
    if not len(task.examples):
        raise ConfigError(
            f"The 'test' parameter of utility must have a visit followed by a visit "
            f"with a {config.target_modality!r} code. Got none among {len(test)} "
            f"patients; use a test cohort of patients with several visits."
        )
    rng = np.random.default_rng(config.seed)
    order = {"real": rng.permutation(len(real)), "synth": rng.permutation(len(synth))}
    subsets = {
        "real": lambda n: real.select(np.sort(order["real"][:n])),
        "synth": lambda n: synth.select(np.sort(order["synth"][:n])),
    }
    plan = [("real", n, 0) for n in real_sizes]
    plan += [("synthetic", 0, n) for n in synthetic_sizes]
    plan += [("real+synthetic", max(real_sizes), n) for n in synthetic_sizes]
    cardinalities = [len(c) for c in test.schema.categorical.values()]
    k, settings = max(config.ks), []
    for family, n_real, n_synthetic in plan:
        sizes = "+".join(str(n) for n in (n_real, n_synthetic) if n)
        name = f"{family}:{sizes}"
        if progress is not None:
            progress(name)
        start = time.perf_counter()
        parts = [("train_real", subsets["real"](n_real))] if n_real else []
        parts += [("synthetic", subsets["synth"](n_synthetic))] if n_synthetic else []
        train = m.Records.concat([records for _, records in parts])
        if not len(m.next_visit_examples(train, is_target)):
            raise ConfigError(
                f"The {name!r} setting of utility has no visit followed by a visit "
                f"with a {config.target_modality!r} code to learn from. Ask for more "
                f"patients, or check that the cohort has patients with several visits."
            )
        model = m.fit_predictor(train, is_target, cardinalities, config)
        recall = _recall(task, model.rank(held_out, task.examples, k), config)
        auc = _label_auc(parts, task, label, cardinalities, config, notes)
        seconds = time.perf_counter() - start
        settings.append(
            SettingResult(
                family,
                name,
                n_real,
                n_synthetic,
                recall,
                auc,
                model.epochs_run,
                model.train_loss,
                seconds,
            )
        )
        logger.debug("utility: %s trained and tested in %.1f s", name, seconds)
    if progress is not None:
        progress("baselines")
    n = max(real_sizes)
    rankings = m.baseline_rankings(
        subsets["real"](n), held_out, task.examples, is_target, k
    )
    baselines = tuple(
        SettingResult("baseline", f"baseline:{b}", n, 0, _recall(task, r, config))
        for b, r in rankings.items()
    )
    notes.append(f"Baselines count codes in the largest real training subset ({n}).")
    return UtilityResult(
        tuple(settings),
        baselines,
        config.ks,
        config.target_modality,
        label,
        task.n_patients,
        len(task.examples),
        config,
        tuple(dict.fromkeys(notes)),
    )


def _check_cohorts(**cohorts: Cohort) -> None:
    for name, cohort in cohorts.items():
        if not isinstance(cohort, Cohort):
            raise ConfigError(
                f"The {name!r} parameter of utility must be a Cohort. Got "
                f"{type(cohort).__name__} instead."
            )
        if len(cohort) == 0:
            raise ConfigError(
                f"The {name!r} parameter of utility must hold at least one patient. "
                f"Got an empty cohort instead; check how it was read or generated."
            )


def _sizes(
    sizes: Sequence[int] | None, cohort: Cohort, name: str, of: str, empty_ok: bool
) -> tuple[int, ...]:
    if sizes is None:
        return (len(cohort),)
    sizes = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
    if not sizes and not empty_ok:
        raise ConfigError(
            f"The {name!r} parameter of utility must hold at least one size. Got "
            f"none instead; leave it None to use all {len(cohort)} patients of {of}."
        )
    for size in sizes:
        is_int = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
        if not is_int or not 1 <= size <= len(cohort):
            raise ConfigError(
                f"The {name!r} parameter of utility must hold sizes between 1 and "
                f"{len(cohort)} (the number of patients in {of}). Got {size!r} "
                f"instead; ask for at most {len(cohort)} or pass a larger {of} cohort."
            )
    return tuple(sorted({int(s) for s in sizes}))


def _check_target(target: str, name: str, cohort: Cohort) -> None:
    modalities = cohort.schema.modalities
    if target not in modalities:
        raise ConfigError(
            f"The 'target_modality' parameter of UtilityConfig must be a modality of "
            f"the {name} cohort, one of {list(modalities)}. Got {target!r} instead; "
            f"set UtilityConfig(target_modality=...).{did_you_mean(target, modalities)}"
        )


def _label_name(config: UtilityConfig, test: Cohort, notes: list[str]) -> str | None:
    if config.label is not None:
        if config.label not in test.labels:
            raise ConfigError(
                f"The 'label' parameter of UtilityConfig must be a label of the test "
                f"cohort, one of {sorted(test.labels)}. Got {config.label!r} instead."
                f"{did_you_mean(config.label, test.labels)}"
            )
        return config.label
    if not test.labels:
        notes.append("Label AUC skipped: the test cohort has no patient-level label.")
        return None
    label = next(iter(test.labels))
    if len(test.labels) > 1:
        notes.append(f"Label AUC on {label!r}, the test cohort's first label.")
    return label


def _label_auc(
    parts: list[tuple[str, Any]],
    task: Any,
    label: str | None,
    cardinalities: list[int],
    config: UtilityConfig,
    notes: list[str],
) -> Estimate | None:
    """The test ROC AUC of the label classifier trained on the setting's patients
    (None, with a note, when the label task cannot run)."""
    if label is None:
        return None
    from sklearn.metrics import roc_auc_score

    from ehrgen.evaluation.utility._model import Records, label_scores

    for source, records in parts:
        if records.label is None or not np.isfinite(records.label).any():
            notes.append(
                f"Label AUC skipped for settings with {source} data: that cohort has "
                f"no {label!r} label (the label task is trained on labelled, real, "
                f"data only)."
            )
            return None
    train = Records.concat([records for _, records in parts])
    y_train, y_test = (r.label[np.isfinite(r.label)] for r in (train, task.records))
    binary = np.isin(np.concatenate([y_train, y_test]), (0.0, 1.0)).all()
    if not binary or len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        notes.append(
            f"Label AUC skipped where the {label!r} labels are not 0/1 with both "
            f"classes among the training and the test patients."
        )
        return None
    scores, y = label_scores(train, task.records, cardinalities, task.n_codes)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        if len(np.unique(y[idx])) < 2:
            return {"auc": math.nan}
        return {"auc": float(roc_auc_score(y[idx], scores[idx]))}

    rng = np.random.default_rng(config.seed)
    found = bootstrap(statistic, (len(y),), rng, config.n_resamples, {"auc": "higher"})
    return found["auc"]
