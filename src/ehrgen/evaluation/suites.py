"""Run the evaluation suites on one model and its synthetic patients.

:func:`run_suites` gathers, for a model, its training cohort D1, a held-out real cohort
D2 and one or more synthetic cohorts (one per generation mode, e.g. ``from_scratch``
and ``from_seeds``):

* ``perplexity``: lpl and mpl of the model on D2, per modality and scoring protocol
  (:mod:`ehrgen.evaluation.perplexity`);
* ``privacy``: every attack of :mod:`ehrgen.evaluation.privacy`, per mode;
* ``fidelity``: :func:`ehrgen.evaluation.fidelity.fidelity` of each mode against D1;
* ``utility``: next-visit diagnosis prediction trained on D1, on the synthetic
  patients (first mode) and on both, tested on D2
  (:mod:`ehrgen.evaluation.utility`).

The :class:`Evaluation` it returns is what ``metrics.json`` and ``report.html`` show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, did_you_mean

__all__ = ["SUITES", "Evaluation", "SummaryRow", "run_suites"]

logger = logging.getLogger(__name__)

SUITES = ("perplexity", "privacy", "fidelity", "utility")


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary table: a figure per generation mode."""

    suite: str
    metric: str
    direction: str
    values: Mapping[str, str]  # mode -> formatted value


@dataclass
class Evaluation:
    """Every suite's results, and the facts needed to read them."""

    facts: dict[str, Any]
    perplexity: dict[str, Any] | None = None  # "lpl/set" -> PerplexityResult
    privacy: dict[str, Any] | None = None  # mode -> PrivacyResult
    fidelity: dict[str, Any] | None = None  # mode -> FidelityResult
    utility: Any = None  # UtilityResult
    timings: dict[str, float] = field(default_factory=dict)
    cohorts: dict[str, Cohort] = field(default_factory=dict, repr=False)

    @property
    def modes(self) -> list[str]:
        return list(self.facts.get("synthetic", {}))

    def to_dict(self) -> dict[str, Any]:
        """``metrics.json``: every figure of every suite that ran."""
        out: dict[str, Any] = {"facts": self.facts, "timings_s": self.timings}
        if self.perplexity is not None:
            out["perplexity"] = {k: v.to_dict() for k, v in self.perplexity.items()}
        for name in ("privacy", "fidelity"):
            results = getattr(self, name)
            if results is not None:
                out[name] = {mode: r.to_dict() for mode, r in results.items()}
        if self.utility is not None:
            out["utility"] = self.utility.to_dict()
        out["summary"] = [
            {
                "suite": r.suite,
                "metric": r.metric,
                "direction": r.direction,
                **r.values,
            }
            for r in self.summary()
        ]
        return out

    def summary(self) -> list[SummaryRow]:
        """The headline figures of each suite, one row each."""
        rows: list[SummaryRow] = []
        if self.fidelity:
            rows += _fidelity_rows(self.fidelity)
        if self.privacy:
            rows += _privacy_rows(self.privacy)
        if self.perplexity:
            # The model's first protocol (chain for autoregressive models); the
            # report's perplexity section has every protocol.
            first = next(iter(self.perplexity)).split("/")[1]
            for name, result in self.perplexity.items():
                metric, protocol = name.split("/")
                if protocol != first:
                    continue
                for modality, f in result.modalities.items():
                    text = f"{f.median:.2f} ({f.ci_low:.2f}-{f.ci_high:.2f})"
                    label = f"{metric} {modality}, median ({protocol})"
                    rows.append(
                        SummaryRow("perplexity", label, "lower", {"model": text})
                    )
        if self.utility is not None:
            result = self.utility
            for setting in (*result.settings, *result.baselines):
                family, _, size = setting.name.partition(":")
                trained_on = (
                    f"{size} baseline" if family == "baseline" else (f"{family} {size}")
                )
                for k, estimate in setting.recall.items():
                    label = f"recall@{k}, {trained_on}"
                    values = {"model": _number(estimate)}
                    rows.append(SummaryRow("utility", label, "higher", values))
                if setting.label_auc is not None:
                    label = f"AUC of {result.label}, {trained_on}"
                    values = {"model": _number(setting.label_auc)}
                    rows.append(SummaryRow("utility", label, "higher", values))
        return rows


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if hasattr(value, "ci_low"):
        return f"{value.value:.3f} ({value.ci_low:.2f}-{value.ci_high:.2f})"
    return f"{float(value):.3f}"


_FIDELITY_HEADLINES = (
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


def _fidelity_rows(results: Mapping[str, Any]) -> list[SummaryRow]:
    rows = []
    for group, key, label, direction in _FIDELITY_HEADLINES:
        values = {}
        for mode, result in results.items():
            figure = getattr(result, group).get(key)
            if isinstance(figure, dict):
                figure = figure.get("ks")
            values[mode] = _number(figure)
        rows.append(SummaryRow("fidelity", label, direction, values))
    return rows


_PRIVACY_HEADLINES = (
    ("distance_membership", "code_set_auc", "membership AUC, distance"),
    ("shadow_membership", "auc", "membership AUC, shadow model (paper)"),
    ("likelihood_membership", "auc", "membership AUC, white-box likelihood"),
    ("likelihood_membership", "tpr_at_fpr_1pct", "white-box TPR at FPR 1%"),
    ("attribute_inference", "advantage_at_0", "attribute inference advantage"),
    ("rare_code_inference", "f1_advantage", "rare-code inference F1 advantage"),
    ("nnaa", "nnaar", "NNAA risk (NNAAR)"),
    ("copies", "exact_copy_rate", "exact copies of training patients"),
    ("copies", "exact_copy_rate_holdout", "the same rate for real non-members"),
)


def _privacy_rows(results: Mapping[str, Any]) -> list[SummaryRow]:
    rows = []
    for attack, figure, label in _PRIVACY_HEADLINES:
        values, direction = {}, None
        for mode, result in results.items():
            found = result.attacks.get(attack)
            estimate = found.figures.get(figure) if found else None
            values[mode] = _number(estimate)
            direction = direction or (estimate.direction if estimate else None)
        if direction is not None:
            rows.append(SummaryRow("privacy", label, direction, values))
    return rows


def parse_suites(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Suite names from ``"privacy,fidelity"`` (or a list), checked."""
    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else text
    names = [n for n in names if n]
    for name in names:
        if name not in SUITES:
            raise ConfigError(
                f"Unknown suite {name!r}; expected some of {list(SUITES)}."
                f"{did_you_mean(name, SUITES)}"
            )
    if not names:
        raise ConfigError(f"No suite given; choose some of {list(SUITES)}.")
    return names


def run_suites(
    model: Any,
    train: Cohort,
    holdout: Cohort,
    synthetic: Mapping[str, Cohort],
    *,
    suites: list[str] | tuple[str, ...] = SUITES,
    seed: int = 0,
    n_resamples: int = 500,
    privacy_config: Any = None,
    utility_config: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run the suites (see the module docstring) and gather their results.

    Args:
        model: the fitted generator (for perplexity and the white-box attack).
        train: its training cohort, D1.
        holdout: real patients it never saw, D2.
        synthetic: generation mode -> synthetic cohort; the first is the main one.
        suites: which suites to run, among :data:`SUITES`.
        n_resamples: bootstrap resamples of every interval.
        progress: called with a short description as each step starts.
    """
    suites = parse_suites(list(suites))
    if not synthetic:
        raise ConfigError("run_suites needs at least one synthetic cohort.")
    say = progress or (lambda _: None)
    evaluation = Evaluation(_facts(model, train, holdout, synthetic))
    evaluation.cohorts = {"train": train, "holdout": holdout, **synthetic}

    def timed(name: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = run()
        evaluation.timings[name] = round(time.perf_counter() - start, 2)
        return result

    if "perplexity" in suites:
        say("perplexity of the held-out patients")
        evaluation.perplexity = timed(
            "perplexity", lambda: _perplexity(model, holdout, n_resamples, seed)
        )
    if "fidelity" in suites:
        from ehrgen.evaluation.fidelity import fidelity

        evaluation.fidelity = {}
        for mode, cohort in synthetic.items():
            say(f"fidelity ({mode.replace('_', ' ')})")
            evaluation.fidelity[mode] = timed(
                f"fidelity/{mode}", lambda c=cohort: fidelity(train, c, seed=seed)
            )
    if "privacy" in suites:
        from ehrgen.evaluation.privacy import PrivacyConfig, evaluate_privacy

        config = privacy_config or PrivacyConfig(n_resamples=n_resamples, seed=seed)
        evaluation.privacy = {}
        for mode, cohort in synthetic.items():
            label = mode.replace("_", " ")
            evaluation.privacy[mode] = timed(
                f"privacy/{mode}",
                lambda c=cohort, label=label: evaluate_privacy(
                    train,
                    holdout,
                    c,
                    model=model,
                    config=config,
                    progress=lambda name: say(
                        f"privacy ({label}): {name.replace('_', ' ')}"
                    ),
                ),
            )
    if "utility" in suites:
        from ehrgen.evaluation.utility import UtilityConfig, utility

        main = next(iter(synthetic.values()))
        config = utility_config or UtilityConfig(n_resamples=n_resamples, seed=seed)
        say("utility: next-visit diagnosis prediction")
        evaluation.utility = timed(
            "utility", lambda: utility(train, main, holdout, config=config)
        )
    return evaluation


def _perplexity(model: Any, holdout: Cohort, n_resamples: int, seed: int) -> dict:
    from ehrgen.evaluation.perplexity import perplexity

    out = {}
    for protocol in getattr(model, "protocols", ("set",)):
        out[f"lpl/{protocol}"] = perplexity(
            model.score_longitudinal(holdout, protocol=protocol), n_resamples, seed
        )
        out[f"mpl/{protocol}"] = perplexity(
            model.score_cross_modal(holdout, protocol=protocol), n_resamples, seed
        )
    return out


def _facts(
    model: Any, train: Cohort, holdout: Cohort, synthetic: Mapping[str, Cohort]
) -> dict[str, Any]:
    def cohort_facts(cohort: Cohort) -> dict[str, Any]:
        modality = cohort.code_modality[cohort.event_codes]
        used = np.unique(cohort.event_codes)
        return {
            "patients": len(cohort),
            "visits": int(cohort.n_visits),
            "events": int(cohort.n_events),
            "codes_in_use": {
                m: int((cohort.code_modality[used] == i).sum())
                for i, m in enumerate(cohort.schema.modalities)
            },
            "events_per_modality": {
                m: int((modality == i).sum())
                for i, m in enumerate(cohort.schema.modalities)
            },
        }

    info = dict(getattr(model, "info_", {}) or {})
    config = getattr(model, "config", None)
    parameters = None
    network = getattr(getattr(model, "_fitted", None), "model", None) or getattr(
        getattr(model, "_fitted", None), "network", None
    )
    if network is not None:
        parameters = int(sum(p.numel() for p in network.parameters()))
    return {
        "model": {
            "class": type(model).__name__,
            "parameters": parameters,
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
            "training": {
                k: info.get(k)
                for k in (
                    "train_patients",
                    "val_patients",
                    "vocabulary",
                    "steps",
                    "epochs_completed",
                    "best_epoch",
                    "best_val_perplexity",
                    "stopped_early",
                    "seconds",
                )
                if k in info
            },
        },
        "train": cohort_facts(train),
        "holdout": cohort_facts(holdout),
        "synthetic": {mode: cohort_facts(c) for mode, c in synthetic.items()},
    }
