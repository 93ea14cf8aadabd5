"""Utility: does a predictor trained on synthetic patients work on real ones?

:func:`utility` trains next-visit diagnosis predictors on real, synthetic and mixed
patients and tests them on held-out real ones (the paper's experiment); the
definitions are in the docstring of :mod:`ehrgen.evaluation.utility._utility`. The
predictor (torch) is imported only when :func:`utility` runs.
"""

from ehrgen.evaluation._estimates import Estimate
from ehrgen.evaluation.utility._results import FAMILIES, SettingResult, UtilityResult
from ehrgen.evaluation.utility._utility import UtilityConfig, recall_at_k, utility

__all__ = [
    "FAMILIES",
    "Estimate",
    "SettingResult",
    "UtilityConfig",
    "UtilityResult",
    "recall_at_k",
    "utility",
]
