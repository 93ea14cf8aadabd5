"""Differential privacy for a whole model release (see ``docs/privacy.md``).

* :class:`DPConfig`: what a DP run is asked for (``TrainingConfig(dp=...)``).
* :mod:`.sgd`: DP-SGD over patients (Poisson sampling, per-patient clipping, noise).
* :mod:`.release`: the vocabulary and the population summary, learned with DP.
* :mod:`.accounting`: noise calibration and Opacus's accountants.
* :class:`PrivacyStatement`: the (ε, δ) a DP model folder carries, part by part.

Measured privacy (attacks on synthetic data) is in :mod:`ehrgen.evaluation.privacy`.
"""

from ehrgen.privacy.config import DPConfig
from ehrgen.privacy.statement import PrivacyPart, PrivacyStatement

__all__ = ["DPConfig", "PrivacyPart", "PrivacyStatement"]
