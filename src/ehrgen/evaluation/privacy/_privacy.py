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
its points as JSON. Details of each attack are in :mod:`ehrgen.evaluation.attacks`.

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
from ehrgen.evaluation._privacy_stats import (
    AttackResult,
    Curve,
    Estimate,
    auc_null_tolerance,
)

__all__ = [
    "ATTACKS",
    "AttackResult",
    "Curve",
    "Estimate",
    "PrivacyConfig",
    "PrivacyResult",
    "auc_null_tolerance",
    "evaluate_privacy",
]

logger = logging.getLogger(__name__)

#: every attack, in the order they run; "likelihood_membership" needs a model.
ATTACKS = (
    "copies",
    "distance_membership",
    "nnaa",
    "attribute_inference",
    "rare_code_inference",
    "shadow_membership",
    "likelihood_membership",
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

    def summary(self) -> list[tuple[str, Estimate]]:
        """(``attack.figure``, estimate) rows, for a table."""
        return [
            (f"{name}.{figure}", estimate)
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
) -> PrivacyResult:
    """Run the privacy attacks (see the module docstring).

    Args:
        train: D1, the patients the generator was trained on.
        holdout: D2, real patients it never saw (ideally as many as DS's).
        synthetic: DS, the generator's output.
        model: the generator, for the white-box likelihood attack (skipped if None).
        config: which attacks, and their settings.
        progress: called with each attack's name as it starts.

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> real = demo_cohort(120, seed=0)
        >>> d1, d2 = real[:60], real[60:]
        >>> config = PrivacyConfig(attacks=("copies",), n_resamples=20)
        >>> result = evaluate_privacy(d1, d2, d1, config=config)
        >>> result.attacks["copies"].figures["exact_copy_rate"].value
        1.0
    """
    from ehrgen.evaluation import attacks as a

    config = config or PrivacyConfig()
    for name, cohort in (
        ("train", train),
        ("holdout", holdout),
        ("synthetic", synthetic),
    ):
        if len(cohort) < 2:
            raise ConfigError(
                f"Privacy evaluation needs at least 2 patients in the {name} cohort. "
                f"Got {len(cohort)}."
            )
    data = a.PrivacyData.of(train, holdout, synthetic)
    rng = np.random.default_rng(config.seed)
    n = config.n_resamples
    runners: dict[str, Callable[[], AttackResult]] = {
        "copies": lambda: a.copies(
            data, rng, n, near_threshold=config.near_copy_threshold
        ),
        "distance_membership": lambda: a.distance_membership(data, rng, n),
        "nnaa": lambda: a.nearest_neighbour_adversarial_accuracy(data, rng, n),
        "attribute_inference": lambda: a.attribute_inference(
            data,
            rng,
            n,
            n_targets=config.attribute_targets,
            neighbours=config.attribute_neighbours,
        ),
        "rare_code_inference": lambda: a.rare_code_inference(
            data,
            rng,
            n,
            n_targets=config.attribute_targets,
            rare_max_share=config.rare_max_share,
        ),
        "shadow_membership": lambda: a.shadow_membership(
            data,
            rng,
            n,
            shadow_epochs=config.shadow_epochs,
            shadow_hidden=config.shadow_hidden,
            seed=config.seed,
        ),
        "likelihood_membership": lambda: a.likelihood_membership(model, data, rng, n),
    }
    results, skipped = {}, {}
    for name in config.attacks:
        if name == "likelihood_membership" and model is None:
            skipped[name] = "no model given (white-box attack)"
            continue
        if progress is not None:
            progress(name)
        logger.debug("Running the %s attack.", name)
        results[name] = runners[name]()
    sizes = {"train": len(train), "holdout": len(holdout), "synthetic": len(synthetic)}
    return PrivacyResult(results, sizes, config, skipped)
