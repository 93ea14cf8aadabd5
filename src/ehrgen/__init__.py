"""ehrgen: learn from real longitudinal, multimodal EHRs; generate synthetic patients.

The public API is re-exported here. Names are imported on first use (PEP 562), so that
``import ehrgen`` and the ``ehrgen`` command stay fast and never import torch unless a
model is used.

Example:
    >>> import ehrgen
    >>> cohort = ehrgen.demo_cohort(50, seed=0)
    >>> model = ehrgen.PromptEHR(ehrgen.PromptEHRConfig.tiny()).fit(
    ...     cohort, training=ehrgen.TrainingConfig(epochs=1)
    ... )
    >>> len(model.generate(5, generation=ehrgen.GenerationConfig(max_visits=3), seed=0))
    5
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "Cohort": "ehrgen.data",
    "CohortBuilder": "ehrgen.data",
    "CohortSchema": "ehrgen.data",
    "CohortStats": "ehrgen.data",
    "Patient": "ehrgen.data",
    "Visit": "ehrgen.data",
    "Preprocessing": "ehrgen.data.preprocess",
    "demo_cohort": "ehrgen.data.demo",
    "demo_truth": "ehrgen.data.demo",
    "read_jsonl": "ehrgen.data.formats.jsonl",
    "write_jsonl": "ehrgen.data.formats.jsonl",
    "read_meds": "ehrgen.data.formats.meds",
    "write_meds": "ehrgen.data.formats.meds",
    "read_mimic3": "ehrgen.data.formats.mimic3",
    "read_mimic4": "ehrgen.data.formats.mimic4",
    "read_omop": "ehrgen.data.formats.omop",
    "write_omop": "ehrgen.data.formats.omop_writer",
    "read_promptehr_pickle": "ehrgen.data.formats.promptehr_pickle",
    "CodeTokenizer": "ehrgen.tokens",
    # models
    "PromptEHR": "ehrgen.models.promptehr",
    "PromptEHRConfig": "ehrgen.models.promptehr",
    "LSTMMLP": "ehrgen.models.baselines.lstm_mlp",
    "LSTMMLPConfig": "ehrgen.models.baselines.lstm_mlp",
    "GPT2Baseline": "ehrgen.models.baselines.gpt2",
    "GPT2BaselineConfig": "ehrgen.models.baselines.gpt2",
    "HALO": "ehrgen.models.baselines.halo",
    "HALOConfig": "ehrgen.models.baselines.halo",
    "build_model": "ehrgen.models.registry",
    "load_model": "ehrgen.models.registry",
    "TrainingConfig": "ehrgen.training",
    "GenerationConfig": "ehrgen.generation",
    # evaluation
    "evaluate": "ehrgen.evaluation",
    # errors
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
    from ehrgen.data.formats.mimic3 import read_mimic3
    from ehrgen.data.formats.mimic4 import read_mimic4
    from ehrgen.data.formats.omop import read_omop
    from ehrgen.data.formats.omop_writer import write_omop
    from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle
    from ehrgen.data.preprocess import Preprocessing
    from ehrgen.errors import ConfigError, EhrgenError, NotFittedError, SchemaError
    from ehrgen.evaluation import evaluate
    from ehrgen.generation import GenerationConfig
    from ehrgen.models.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig
    from ehrgen.models.baselines.halo import HALO, HALOConfig
    from ehrgen.models.baselines.lstm_mlp import LSTMMLP, LSTMMLPConfig
    from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
    from ehrgen.models.registry import build_model, load_model
    from ehrgen.tokens import CodeTokenizer
    from ehrgen.training import TrainingConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ehrgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
