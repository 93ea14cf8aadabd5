"""The evaluation report: one self-contained HTML page and ``metrics.json``.

:func:`write_report` turns an :class:`~ehrgen.evaluation.Evaluation` into
``report.html`` and ``metrics.json``; :mod:`ehrgen.evaluation.report.descriptions`
gives codes their human-readable descriptions, offline.
"""

from ehrgen.evaluation.report._report import render_report, write_report

__all__ = ["render_report", "write_report"]
