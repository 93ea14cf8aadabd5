"""Fidelity: how closely a synthetic cohort reproduces a real one.

:func:`fidelity` compares two cohorts and returns a :class:`FidelityResult`: HALO's
six prevalence R² statistics (overall, per modality, on the long tail), distributions
of visits and codes, demographics, prevalence within each category, and a
real-vs-synthetic classifier. Definitions are in
:mod:`ehrgen.evaluation.fidelity._fidelity`.
"""

from ehrgen.evaluation.fidelity._fidelity import (
    KINDS,
    LONG_TAIL_QUANTILE,
    VISIT_COUNT_FIGURES,
    FidelityResult,
    PrevalencePoints,
    fidelity,
)

__all__ = [
    "KINDS",
    "LONG_TAIL_QUANTILE",
    "VISIT_COUNT_FIGURES",
    "FidelityResult",
    "PrevalencePoints",
    "fidelity",
]
