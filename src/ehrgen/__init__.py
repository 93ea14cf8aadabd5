"""ehrgen: learn from real longitudinal, multimodal EHRs; generate synthetic patients.

The public API is re-exported here. Names are imported on first use (PEP 562), so that
``import ehrgen`` and the ``ehrgen`` command stay fast and never import torch unless a
model is used.

Example:
    >>> import ehrgen
    >>> cohort = ehrgen.demo_cohort(50, seed=0)
    >>> len(cohort)
    50
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cohort": "ehrgen.data",
    "CohortBuilder": "ehrgen.data",
    "CohortSchema": "ehrgen.data",
    "CohortStats": "ehrgen.data",
    "Patient": "ehrgen.data",
    "Visit": "ehrgen.data",
    "CodeTokenizer": "ehrgen.tokens.tokenizer",
    "demo_cohort": "ehrgen.data.demo",
    "demo_truth": "ehrgen.data.demo",
    "read_jsonl": "ehrgen.data.formats.jsonl",
    "write_jsonl": "ehrgen.data.formats.jsonl",
    "read_meds": "ehrgen.data.formats.meds",
    "write_meds": "ehrgen.data.formats.meds",
    "read_promptehr_pickle": "ehrgen.data.formats.promptehr_pickle",
    "ConfigError": "ehrgen.errors",
    "EhrgenError": "ehrgen.errors",
    "NotFittedError": "ehrgen.errors",
    "SchemaError": "ehrgen.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from ehrgen.data import (
        Cohort,
        CohortBuilder,
        CohortSchema,
        CohortStats,
        Patient,
        Visit,
    )
    from ehrgen.data.demo import demo_cohort, demo_truth
    from ehrgen.data.formats.jsonl import read_jsonl, write_jsonl
    from ehrgen.data.formats.meds import read_meds, write_meds
    from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle
    from ehrgen.errors import ConfigError, EhrgenError, NotFittedError, SchemaError
    from ehrgen.tokens.tokenizer import CodeTokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ehrgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
