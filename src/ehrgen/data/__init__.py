"""Cohorts and the readers and writers that bring them in and out of ehrgen.

The data model lives in four modules: :mod:`~ehrgen.data.records` (``Visit``,
``Patient``), :mod:`~ehrgen.data.schema` (``CohortSchema``), :mod:`~ehrgen.data.cohort`
(the columnar ``Cohort``) and :mod:`~ehrgen.data.builder` (``CohortBuilder``); file
formats live under :mod:`ehrgen.data.formats`.
"""

from ehrgen.data.builder import CohortBuilder
from ehrgen.data.cohort import Cohort, CohortStats, Distribution
from ehrgen.data.records import PLACEHOLDER_EPOCH, Patient, Visit, placeholder_time
from ehrgen.data.schema import DEFAULT_MODALITIES, CohortSchema

__all__ = [
    "DEFAULT_MODALITIES",
    "PLACEHOLDER_EPOCH",
    "Cohort",
    "CohortBuilder",
    "CohortSchema",
    "CohortStats",
    "Distribution",
    "Patient",
    "Visit",
    "placeholder_time",
]
