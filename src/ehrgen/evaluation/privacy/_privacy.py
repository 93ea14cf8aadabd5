"""Privacy evaluation: can an attacker tell, from synthetic data (or the model), who
was in the training set, or learn what they had?

:func:`evaluate_privacy` runs, on the training cohort D1 (members), a held-out real
cohort D2 (non-members) and a synthetic cohort DS:

=========================  ==========================================================
``distance_membership``    membership by the distance to the nearest synthetic
                           patient (code-set and visit-aware Jaccard): AUC, TPR at
                           FPR 1% and 10%, accuracy at the median threshold
``shadow_membership``      the paper's attack: a shadow LSTM+MLP trained on DS and an
                           MLP attacker on its perplexities
``likelihood_membership``  white box, when a model is given: the generator's own
                           perplexity of each candidate
``attribute_inference``    the paper's attack with a control arm (imputation from D2
                           instead of DS): TPR and FPR at delta = 0, the attack's
                           advantage over the control
``rare_code_inference``    rare codes predicted from common ones by the nearest
                           synthetic patient: F1 against the same from D2
``nnaa``                   nearest-neighbour adversarial accuracy and NNAAR
``copies``                 exact and near copies of training patients, beside the
                           same rates for D2
=========================  ==========================================================

Each figure has a bootstrap 95% interval (:class:`Estimate`) and says which way is
better. :meth:`PrivacyResult.save` writes ``privacy.json``, each ROC curve as a PNG and
its points as JSON. Details of each attack are in
:mod:`ehrgen.evaluation.privacy.attacks`.

The white-box attack depends on the model and the real cohorts only: run it once with
:func:`likelihood_attack` and hand it to :func:`evaluate_privacy` (``white_box=``) for
each synthetic cohort of the same model, as :func:`ehrgen.evaluation.evaluate` does.

What "private" looks like: membership AUCs and accuracies within chance of 0.5
(:func:`auc_null_tolerance` gives the spread chance alone produces), TPR at low FPR
near the FPR, attribute advantages and NNAAR near 0, copy rates no higher than D2's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen._io import atomic_file, write_json
from ehrgen.data import Cohort
from ehrgen.errors import ConfigError, did_you_mean
from ehrgen.evaluation.privacy import attacks as a
from ehrgen.evaluation.privacy._stats import AttackResult, Curve
from ehrgen.evaluation.rows import MetricRow

__all__ = [
    "ATTACKS",
    "MEMBERSHIP_ATTACKS",
    "WHITE_BOX",
    "PrivacyConfig",
    "PrivacyResult",
    "evaluate_privacy",
    "likelihood_attack",
    "plot_curve",
]

logger = logging.getLogger(__name__)

_Runner = Callable[[a.PrivacyData, np.random.Generator, "PrivacyConfig"], AttackResult]

#: the attacks on synthetic patients, in the order they run.
_RUNNERS: dict[str, _Runner] = {
    "copies": lambda data, rng, c: a.copies(
        data, rng, c.n_resamples, near_threshold=c.near_copy_threshold
    ),
    "distance_membership": lambda data, rng, c: a.distance_membership(
        data, rng, c.n_resamples
    ),
    "nnaa": lambda data, rng, c: a.nearest_neighbour_adversarial_accuracy(
        data, rng, c.n_resamples
    ),
    "attribute_inference": lambda data, rng, c: a.attribute_inference(
        data,
        rng,
        c.n_resamples,
        n_targets=c.attribute_targets,
        neighbours=c.attribute_neighbours,
    ),
    "rare_code_inference": lambda data, rng, c: a.rare_code_inference(
        data,
        rng,
        c.n_resamples,
        n_targets=c.attribute_targets,
        rare_max_share=c.rare_max_share,
    ),
    "shadow_membership": lambda data, rng, c: a.shadow_membership(
        data,
        rng,
        c.n_resamples,
        shadow_epochs=c.shadow_epochs,
        shadow_hidden=c.shadow_hidden,
        seed=c.seed,
    ),
}
#: the white-box attack: it needs the model, not the synthetic patients.
WHITE_BOX = "likelihood_membership"
#: every attack, in the order they run: the one place their names are listed.
ATTACKS = (*_RUNNERS, WHITE_BOX)
#: the membership-inference attacks (the report draws their ROC curves together).
MEMBERSHIP_ATTACKS = tuple(name for name in ATTACKS if name.endswith("_membership"))

# (attack, figure, label) of the figures in the evaluation summary.
_HEADLINES = (
    ("distance_membership", "code_set_auc", "membership AUC, distance"),
    ("shadow_membership", "auc", "membership AUC, shadow model (paper)"),
    (WHITE_BOX, "auc", "membership AUC, white-box likelihood"),
    (WHITE_BOX, "tpr_at_fpr_1pct", "white-box TPR at FPR 1%"),
    ("attribute_inference", "advantage_at_0", "attribute inference advantage"),
    ("rare_code_inference", "f1_advantage", "rare-code inference F1 advantage"),
    ("nnaa", "nnaar", "NNAA risk (NNAAR)"),
    ("copies", "exact_copy_rate", "exact copies of training patients"),
    ("copies", "exact_copy_rate_holdout", "the same rate for real non-members"),
)


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig(ConfigMixin):
    """Settings of the privacy evaluation.

    Example:
        >>> PrivacyConfig(attacks=("copies",)).attacks
        ('copies',)
    """

    attacks: tuple[str, ...] = ATTACKS
    n_resamples: int = 500  # bootstrap resamples per figure
    seed: int = 0
    # A synthetic patient is a near copy when at most this visit-aware Jaccard
    # distance from a training patient: all but a tenth of its (visit, code) pairs
    # shared, e.g. one code changed in a ten-code record.
    near_copy_threshold: float = 0.1
    shadow_epochs: int = 30
    shadow_hidden: int = 64
    attribute_targets: int = 1000
    attribute_neighbours: int = 10
    rare_max_share: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        for name in self.attacks:
            if name not in ATTACKS:
                raise ConfigError(
                    f"Unknown privacy attack {name!r}; expected some of "
                    f"{list(ATTACKS)}.{did_you_mean(name, ATTACKS)}"
                )
        check_positive_ints(
            self,
            "n_resamples",
            "shadow_epochs",
            "shadow_hidden",
            "attribute_targets",
            "attribute_neighbours",
        )
        owner = type(self).__name__
        for name in ("near_copy_threshold", "rare_max_share"):
            value = getattr(self, name)
            check(0 <= value < 1, owner, name, "in [0, 1)", value)


@dataclass(frozen=True)
class PrivacyResult:
    """The attacks' results, and the sizes of the cohorts they saw."""

    attacks: Mapping[str, AttackResult]
    sizes: Mapping[str, int]
    config: PrivacyConfig
    skipped: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": dict(self.sizes),
            "config": self.config.to_dict(),
            "attacks": {k: v.to_dict() for k, v in self.attacks.items()},
            "skipped": dict(self.skipped),
        }

    def curves(self) -> list[Curve]:
        return [c for attack in self.attacks.values() for c in attack.curves]

    def summary(self) -> list[MetricRow]:
        """The headline figures of the attacks that ran, for the evaluation
        summary."""
        return [
            MetricRow.of("privacy", label, self.attacks[attack].figures[figure])
            for attack, figure, label in _HEADLINES
            if attack in self.attacks and figure in self.attacks[attack].figures
        ]

    def figures(self) -> list[MetricRow]:
        """Every figure of every attack, named ``attack.figure``."""
        return [
            MetricRow.of("privacy", f"{name}.{figure}", estimate)
            for name, attack in self.attacks.items()
            for figure, estimate in attack.figures.items()
        ]

    def save(self, out: str | Path, *, plots: bool = True) -> Path:
        """Write ``privacy.json`` in ``out`` and each curve as ``roc/<name>.json``
        (and ``.png`` with matplotlib); returns the JSON's path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for curve in self.curves():
            stem = out / "roc" / _slug(curve.name)
            stem.parent.mkdir(exist_ok=True)
            write_json(stem.with_suffix(".json"), curve.to_dict())
            if plots:
                plot_curve(curve, stem.with_suffix(".png"))
        path = out / "privacy.json"
        write_json(path, self.to_dict())
        return path


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def plot_curve(curve: Curve, path: Path) -> None:
    """A PNG of one curve (an ROC curve gets the chance diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 4), dpi=100)
    label = curve.name if np.isnan(curve.auc) else f"{curve.name}, AUC {curve.auc:.3f}"
    axes.plot(curve.x, curve.y, label=label)
    if curve.x_label == "false-positive rate":
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel=curve.x_label, ylabel=curve.y_label)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def evaluate_privacy(
    train: Cohort,
    holdout: Cohort,
    synthetic: Cohort,
    *,
    model: Any = None,
    config: PrivacyConfig | None = None,
    progress: Callable[[str], None] | None = None,
    white_box: AttackResult | None = None,
) -> PrivacyResult:
    """Run the privacy attacks (see the module docstring).

    Args:
        train: D1, the patients the generator was trained on.
        holdout: D2, real patients it never saw (ideally as many as DS's).
        synthetic: DS, the generator's output.
        model: the generator, for the white-box likelihood attack (skipped if None
            and no ``white_box`` is given).
        config: which attacks, and their settings.
        progress: called with each attack's name as it starts.
        white_box: the white-box attack already run on the same model, D1 and D2
            (:func:`likelihood_attack`): reused instead of scoring again.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> real = demo_cohort(120, seed=0)
        >>> d1, d2 = real[:60], real[60:]
        >>> config = PrivacyConfig(attacks=("copies",), n_resamples=20)
        >>> result = evaluate_privacy(d1, d2, d1, config=config)
        >>> result.attacks["copies"].figures["exact_copy_rate"].value
        1.0
    """
    config = config or PrivacyConfig()
    _check_sizes(train=train, holdout=holdout, synthetic=synthetic)
    data = a.PrivacyData.of(train, holdout, synthetic)
    rng = np.random.default_rng(config.seed)
    results, skipped = {}, {}
    for name in config.attacks:
        if name == WHITE_BOX and white_box is not None:
            results[name] = white_box
            continue
        if name == WHITE_BOX and model is None:
            skipped[name] = "no model given (white-box attack)"
            continue
        if progress is not None:
            progress(name)
        logger.debug("Running the %s attack.", name)
        if name == WHITE_BOX:
            results[name] = likelihood_attack(train, holdout, model, config)
        else:
            results[name] = _RUNNERS[name](data, rng, config)
    sizes = {"train": len(train), "holdout": len(holdout), "synthetic": len(synthetic)}
    return PrivacyResult(results, sizes, config, skipped)


def likelihood_attack(
    train: Cohort, holdout: Cohort, model: Any, config: PrivacyConfig | None = None
) -> AttackResult:
    """The white-box likelihood attack alone: the model's own perplexity of D1
    (members) against D2 (non-members).

    It sees no synthetic patient, so one run serves every generation mode of a
    model: pass it to :func:`evaluate_privacy` as ``white_box``. Its random draws
    come from ``config.seed`` alone, whatever other attacks run.
    """
    config = config or PrivacyConfig()
    _check_sizes(train=train, holdout=holdout)
    rng = np.random.default_rng(config.seed)
    return a.likelihood_membership(model, train, holdout, rng, config.n_resamples)


def _check_sizes(**cohorts: Cohort) -> None:
    for name, cohort in cohorts.items():
        if len(cohort) < 2:
            raise ConfigError(
                f"Privacy evaluation needs at least 2 patients in the {name} cohort. "
                f"Got {len(cohort)}."
            )
