"""Run the evaluation suites on one model and its synthetic patients.

:func:`evaluate` gathers, for a model, its training cohort D1, a held-out real cohort
D2 and one or more synthetic cohorts (one per generation mode, e.g. ``from_scratch``
and ``from_seeds``), and runs the suites of :data:`SUITES`:

* ``perplexity``: lpl and mpl of the model on D2, per modality and scoring protocol
  (:mod:`ehrgen.evaluation.perplexity`);
* ``privacy``: every attack of :mod:`ehrgen.evaluation.privacy`, per mode; the
  white-box attack, which depends on the model and D1 and D2 only, runs once and
  serves every mode;
* ``fidelity``: :func:`ehrgen.evaluation.fidelity.fidelity` of each mode against D1;
* ``utility``: next-visit diagnosis prediction trained on D1, on the synthetic
  patients (first mode) and on both, tested on D2
  (:mod:`ehrgen.evaluation.utility`).

The :class:`Evaluation` it returns is what ``metrics.json``, ``report.html`` and the
``ehrgen evaluate`` table show. This module imports nothing heavy, so that the names of
the suites are at hand for the command line; each suite is imported when it runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ehrgen.errors import ConfigError, did_you_mean
from ehrgen.evaluation.rows import MetricRow

if TYPE_CHECKING:
    from ehrgen.data import Cohort

__all__ = ["SUITES", "Evaluation", "evaluate", "parse_suites"]

logger = logging.getLogger(__name__)

#: every suite, in the order they run: the one place their names are listed.
SUITES = ("perplexity", "privacy", "fidelity", "utility")


@dataclass
class Evaluation:
    """Every suite's results, and the facts needed to read them."""

    facts: dict[str, Any]
    perplexity: dict[str, Any] | None = None  # "lpl/set" -> PerplexityResult
    privacy: dict[str, Any] | None = None  # mode -> PrivacyResult
    fidelity: dict[str, Any] | None = None  # mode -> FidelityResult
    utility: Any = None  # UtilityResult, trained on the first mode
    timings: dict[str, float] = field(default_factory=dict)
    cohorts: dict[str, Cohort] = field(default_factory=dict, repr=False)

    @property
    def modes(self) -> list[str]:
        """The generation modes, the first being the main one."""
        return list(self.facts.get("synthetic", {}))

    @property
    def calibration_note(self) -> str:
        """What the figures of visits per patient must say when the model was
        calibrated to a cohort's visit counts ("" when it was not)."""
        calibration = (self.facts.get("model") or {}).get("length_calibration")
        if not calibration:
            return ""
        cohort = str(calibration.get("cohort") or "training cohort")
        if "cohort" not in cohort:
            cohort += " cohort"
        n = calibration.get("n_patients")
        return f"calibrated to the {cohort}" + (f", {n:,} patients" if n else "")

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
        out["summary"] = [row.to_dict() for row in self.summary()]
        return out

    def summary(self) -> list[MetricRow]:
        """The headline figures of each suite, one row per figure and mode."""
        rows: list[MetricRow] = []
        note = self.calibration_note
        for mode, result in (self.fidelity or {}).items():
            rows += [
                replace(row, mode=mode) for row in result.summary(visit_count_note=note)
            ]
        for mode, result in (self.privacy or {}).items():
            rows += [replace(row, mode=mode) for row in result.summary()]
        if self.perplexity:
            # The model's first protocol (chain for autoregressive models); the
            # report's perplexity section has every protocol.
            first = next(iter(self.perplexity.values())).protocol
            for result in self.perplexity.values():
                rows += result.summary() if result.protocol == first else []
        if self.utility is not None:
            main = self.modes[0] if self.modes else None
            rows += [replace(row, mode=main) for row in self.utility.summary()]
        return rows


def parse_suites(text: str | Sequence[str]) -> list[str]:
    """Suite names from ``"privacy,fidelity"`` (or a list), checked.

    Example:
        >>> parse_suites("privacy, fidelity")
        ['privacy', 'fidelity']
    """
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
    return list(names)


def evaluate(
    model: Any,
    train: Cohort,
    held_out: Cohort,
    synthetic: Cohort | Mapping[str, Cohort] | None = None,
    *,
    suites: str | Sequence[str] = SUITES,
    from_seeds: bool = True,
    seed: int = 0,
    n_resamples: int = 500,
    privacy_config: Any = None,
    utility_config: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run the evaluation suites on a model and its synthetic patients.

    Args:
        model: the fitted generator, for perplexity, the white-box attack and
            generation; None to judge synthetic patients alone (no perplexity).
        train: its training cohort, D1.
        held_out: real patients it never saw, D2.
        synthetic: the synthetic patients: one cohort (the ``from_scratch`` mode), a
            mapping generation mode -> cohort (the first is the main one), or None to
            generate as many patients as ``train`` from scratch.
        suites: which suites to run, among :data:`SUITES` (a list or ``"a,b"``).
        from_seeds: also generate one patient from each training patient's first
            visit and judge them as the ``from_seeds`` mode, where the model can
            (``generate_from_seeds``) and that mode is not given.
        seed: seeds generation, the bootstrap and every suite.
        n_resamples: bootstrap resamples of every interval.
        privacy_config: a :class:`~ehrgen.evaluation.privacy.PrivacyConfig`
            (default: every attack, ``n_resamples`` and ``seed``).
        utility_config: a :class:`~ehrgen.evaluation.utility.UtilityConfig`
            (default: its defaults, ``n_resamples`` and ``seed``).
        progress: called with a short description as each step starts.

    Raises:
        ConfigError: an unknown suite; no model where one is needed.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> real = demo_cohort(60, seed=0)
        >>> result = evaluate(None, real[:30], real[30:], demo_cohort(30, seed=1),
        ...                   suites="fidelity")
        >>> result.modes, result.summary()[0].metric
        (['from_scratch'], 'R² code prevalence per patient')
    """
    suites = parse_suites(suites)
    say = progress or (lambda _: None)
    if model is None and (synthetic is None or "perplexity" in suites):
        raise ConfigError(
            "The 'model' parameter of evaluate is None, but generating synthetic "
            "patients and the perplexity suite need a model. Give the model, or "
            "give synthetic patients and leave 'perplexity' out of suites."
        )
    synthetic = _synthetic_sets(model, train, synthetic, from_seeds, seed, say)
    evaluation = Evaluation(_facts(model, train, held_out, synthetic))
    evaluation.cohorts = {"train": train, "holdout": held_out, **synthetic}
    timings = evaluation.timings
    if "perplexity" in suites:
        say("perplexity of the held-out patients")
        with _timed(timings, "perplexity"):
            evaluation.perplexity = _perplexity(model, held_out, n_resamples, seed)
            time_values = getattr(model, "time_values_", None)
            if time_values is not None:
                evaluation.facts["time_values_perplexity"] = {
                    **time_values.perplexity(held_out),
                    "classes": time_values.n_classes,
                }
    if "fidelity" in suites:
        from ehrgen.evaluation.fidelity import fidelity

        evaluation.fidelity = {}
        for mode, cohort in synthetic.items():
            say(f"fidelity ({mode.replace('_', ' ')})")
            with _timed(timings, f"fidelity/{mode}"):
                evaluation.fidelity[mode] = fidelity(train, cohort, seed=seed)
    if "privacy" in suites:
        from ehrgen.evaluation.privacy import PrivacyConfig

        config = privacy_config or PrivacyConfig(n_resamples=n_resamples, seed=seed)
        evaluation.privacy = _privacy(
            model, train, held_out, synthetic, config, timings, say
        )
    if "utility" in suites:
        from ehrgen.evaluation.utility import UtilityConfig, utility

        config = utility_config or UtilityConfig(n_resamples=n_resamples, seed=seed)
        main = next(iter(synthetic.values()))
        say("utility: next-visit diagnosis prediction")
        with _timed(timings, "utility"):
            evaluation.utility = utility(train, main, held_out, config=config)
    return evaluation


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)


def _synthetic_sets(
    model: Any,
    train: Cohort,
    synthetic: Cohort | Mapping[str, Cohort] | None,
    from_seeds: bool,
    seed: int,
    say: Callable[[str], None],
) -> dict[str, Cohort]:
    """Generation mode -> synthetic cohort, generating what is asked and missing."""
    if synthetic is None:
        say(f"generating {len(train):,} patients from scratch")
        sets = {"from_scratch": model.generate(len(train), seed=seed)}
    elif isinstance(synthetic, Mapping):
        sets = dict(synthetic)
    else:
        sets = {"from_scratch": synthetic}
    if not sets:
        raise ConfigError(
            "The 'synthetic' parameter of evaluate holds no cohort; give at least one "
            "generation mode, or None to generate from scratch."
        )
    can_seed = hasattr(model, "generate_from_seeds")
    if from_seeds and can_seed and "from_seeds" not in sets:
        say("generating from the training patients' first visits")
        sets["from_seeds"] = model.generate_from_seeds(train, seed=seed)
    return sets


def _privacy(
    model: Any,
    train: Cohort,
    held_out: Cohort,
    synthetic: Mapping[str, Cohort],
    config: Any,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Every mode's privacy result, the white-box attack run once for all."""
    from ehrgen.evaluation.privacy import (
        WHITE_BOX,
        evaluate_privacy,
        likelihood_attack,
    )

    white_box = None
    if model is not None and WHITE_BOX in config.attacks:
        say(f"privacy: {WHITE_BOX.replace('_', ' ')} (once for every mode)")
        with _timed(timings, f"privacy/{WHITE_BOX}"):
            white_box = likelihood_attack(train, held_out, model, config)
    results = {}
    for mode, cohort in synthetic.items():
        label = mode.replace("_", " ")
        with _timed(timings, f"privacy/{mode}"):
            results[mode] = evaluate_privacy(
                train,
                held_out,
                cohort,
                config=config,
                white_box=white_box,
                progress=lambda name, label=label: say(
                    f"privacy ({label}): {name.replace('_', ' ')}"
                ),
            )
    return results


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
    return {
        "model": _model_facts(model),
        "train": _cohort_facts(train),
        "holdout": _cohort_facts(holdout),
        "synthetic": {mode: _cohort_facts(c) for mode, c in synthetic.items()},
    }


def _cohort_facts(cohort: Cohort) -> dict[str, Any]:
    import numpy as np

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


_TRAINING_FACTS = (
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


def _model_facts(model: Any) -> dict[str, Any]:
    """The model's class, size, config and training facts, and how its visit counts
    were calibrated (None: not calibrated)."""
    if model is None:
        return {"class": None, "parameters": None, "config": None, "training": {}}
    from ehrgen.models.base import length_calibration

    config = getattr(model, "config", None)
    fitted = getattr(model, "_fitted", None)
    facts = getattr(fitted, "facts", None)
    info = facts.to_dict() if facts is not None else {}
    network = getattr(fitted, "network", None)
    parameters = None
    if network is not None and hasattr(network, "parameters"):
        parameters = int(sum(p.numel() for p in network.parameters()))
    return {
        "class": type(model).__name__,
        "parameters": parameters,
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
        "training": {k: info[k] for k in _TRAINING_FACTS if k in info},
        "length_calibration": length_calibration(model),
        "privacy": None
        if getattr(fitted, "privacy", None) is None
        else fitted.privacy.to_dict(),
    }
