"""Privacy: can an attacker tell, from synthetic patients (or the model), who was in
the training set, or learn what they had?

:func:`evaluate_privacy` runs every attack of :data:`ATTACKS` on a training cohort, a
held-out real cohort and a synthetic cohort; :func:`likelihood_attack` runs the
white-box attack alone, once per model. The attacks themselves are in
:mod:`ehrgen.evaluation.privacy.attacks`, the code-set distances they share in
:mod:`ehrgen.evaluation.privacy.code_sets`.
"""

from ehrgen.evaluation.privacy._privacy import (
    ATTACKS,
    MEMBERSHIP_ATTACKS,
    WHITE_BOX,
    PrivacyConfig,
    PrivacyResult,
    evaluate_privacy,
    likelihood_attack,
    plot_curve,
)
from ehrgen.evaluation.privacy._stats import (
    AttackResult,
    Curve,
    Estimate,
    auc_null_tolerance,
)

__all__ = [
    "ATTACKS",
    "MEMBERSHIP_ATTACKS",
    "WHITE_BOX",
    "AttackResult",
    "Curve",
    "Estimate",
    "PrivacyConfig",
    "PrivacyResult",
    "auc_null_tolerance",
    "evaluate_privacy",
    "likelihood_attack",
    "plot_curve",
]
