"""Evaluation: perplexity (lpl, mpl), fidelity, privacy, utility, and the report.

:func:`evaluate` runs every suite on a model and its synthetic patients and returns an
:class:`Evaluation`; :func:`write_report` turns it into ``report.html`` and
``metrics.json``. Each suite's result has a ``summary()`` of :class:`MetricRow`.

The suites live in their own modules and packages, each usable alone:
:mod:`~ehrgen.evaluation.perplexity`, :mod:`~ehrgen.evaluation.fidelity`,
:mod:`~ehrgen.evaluation.privacy`, :mod:`~ehrgen.evaluation.utility`, and
:mod:`~ehrgen.evaluation.report`; :mod:`~ehrgen.evaluation.benchmark` is the paper's
Table 2. Names here are imported on first use (PEP 562), so importing this package
costs nothing and never imports torch.

Example:
    >>> from ehrgen.evaluation import SUITES, evaluate
    >>> SUITES
    ('perplexity', 'privacy', 'fidelity', 'utility')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SUITES": "ehrgen.evaluation.suites",
    "Evaluation": "ehrgen.evaluation.suites",
    "evaluate": "ehrgen.evaluation.suites",
    "parse_suites": "ehrgen.evaluation.suites",
    "DIRECTIONS": "ehrgen.evaluation.rows",
    "MetricRow": "ehrgen.evaluation.rows",
    "write_report": "ehrgen.evaluation.report",
}

__all__ = [
    "DIRECTIONS",
    "SUITES",
    "Evaluation",
    "MetricRow",
    "evaluate",
    "parse_suites",
    "write_report",
]

if TYPE_CHECKING:
    from ehrgen.evaluation.report import write_report
    from ehrgen.evaluation.rows import DIRECTIONS, MetricRow
    from ehrgen.evaluation.suites import SUITES, Evaluation, evaluate, parse_suites


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ehrgen.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
