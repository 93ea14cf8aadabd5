"""Tests of the one row type every suite's summary returns, and its pivot."""

from __future__ import annotations

import json
import math

import pytest

from ehrgen.errors import ConfigError
from ehrgen.evaluation.rows import MetricRow, pivot


def _row(value, mode=None, metric="m", **fields) -> MetricRow:
    return MetricRow(
        suite="privacy",
        metric=metric,
        value=value,
        direction="closer to 0.5",
        mode=mode,
        **fields,
    )


def test_unknown_suite_and_direction_are_refused():
    """Check that a misspelt suite or direction raises ConfigError with a hint."""
    with pytest.raises(ConfigError, match="Did you mean 'privacy'"):
        MetricRow(suite="privasy", metric="m", value=1.0, direction="lower")
    with pytest.raises(ConfigError, match="Did you mean 'higher'"):
        MetricRow(suite="privacy", metric="m", value=1.0, direction="highr")


def test_undefined_values_become_none_and_text_says_so():
    """Check that NaN values and intervals are stored as None, shown as n/a, and
    that to_dict is JSON-ready."""
    row = _row(math.nan, interval=(math.nan, 0.6))
    assert row.value is None and row.interval is None and row.text() == "n/a"
    assert json.loads(json.dumps(row.to_dict()))["value"] is None
    large = _row(123.456, interval=(100.0, 150.5))
    assert large.text() == "123.46 [100.00, 150.50]"


def test_pivot_lays_rows_out_by_mode():
    """Check that rows of one metric share a line with a cell per mode, a row of
    the model fills every cell, a missing mode is blank, and notes are kept."""
    rows = [
        _row(0.5, mode="a"),
        _row(0.6, mode="b", note="calibrated"),
        _row(0.7, metric="only a", mode="a"),
        MetricRow(suite="perplexity", metric="lpl", value=4.0, direction="lower"),
    ]
    lines = pivot(rows, ["a", "b"])
    assert [(row.metric, cells) for row, cells in lines] == [
        ("m", ["0.500", "0.600"]),
        ("only a", ["0.700", ""]),
        ("lpl", ["4.000", "4.000"]),
    ]
    assert lines[0][0].note == "calibrated"


def test_of_takes_an_estimate():
    """Check that MetricRow.of copies an estimate's value, interval, direction."""
    from ehrgen.evaluation.privacy import Estimate

    row = MetricRow.of("utility", "recall@10", Estimate(0.5, 0.4, 0.6, "higher"))
    assert (row.value, row.interval, row.direction) == (0.5, (0.4, 0.6), "higher")
