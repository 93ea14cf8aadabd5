"""Tests of lpl / mpl: hand-computed cases, bootstrap, the reference statistic."""

from __future__ import annotations

import numpy as np
import pytest

from ehrgen.evaluation.perplexity import (
    bootstrap_median,
    patient_perplexities,
    perplexity,
    reference_statistic,
)
from ehrgen.models.base import CodeScores


def _scores(rows, protocol="set", task="longitudinal") -> CodeScores:
    return CodeScores.from_rows(rows, ["diagnosis", "drug"], protocol, task, "hand")


def test_uniform_model_scores_the_vocabulary_size():
    """Check that a model uniform over V codes scores exactly V under set."""
    vocabulary = 37
    rows = [(p, t, 0, f"c{i}", -np.log(vocabulary))
            for p in range(5) for t in range(1, 4) for i in range(p + t)]  # fmt: skip
    result = perplexity(_scores(rows))
    figure = result.modalities["diagnosis"]
    assert figure.median == pytest.approx(vocabulary)
    assert figure.ci_low == pytest.approx(vocabulary)
    assert figure.mean == pytest.approx(vocabulary)
    assert figure.reference == pytest.approx(vocabulary)
    assert result.metric == "lpl" and result.direction == "lower is better"


def test_perfect_set_model_scores_the_visit_size():
    """Check that 1/l on each of a visit's l codes gives l; and the paper's visit
    averaging: a patient with visits of 2 and 8 codes scores exp(mean(log 2, log 8))."""
    rows = [(0, 1, 0, c, np.log(1 / 4)) for c in "abcd"]
    per_patient = patient_perplexities(_scores(rows))
    assert per_patient["diagnosis"].tolist() == pytest.approx([4])
    rows = [(1, 1, 1, c, np.log(1 / 2)) for c in "ab"] + [
        (1, 2, 1, c, np.log(1 / 8)) for c in "abcdefgh"
    ]
    assert patient_perplexities(_scores(rows))["drug"].tolist() == pytest.approx(
        [np.exp((np.log(2) + np.log(8)) / 2)]
    )


def test_median_and_bootstrap_interval():
    """Check the median of known values and that the interval brackets it, shrinks
    with more data, and is reproducible for a seed."""
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    median, low, high = bootstrap_median(values, seed=0)
    assert median == 3.0 and low <= 3.0 <= high
    assert (low, high) == bootstrap_median(values, seed=0)[1:]
    wide = np.random.default_rng(0).lognormal(size=50)
    narrow = np.random.default_rng(0).lognormal(size=5000)
    w_low, w_high = bootstrap_median(wide)[1:]
    n_low, n_high = bootstrap_median(narrow)[1:]
    assert n_high - n_low < w_high - w_low
    assert n_low < 1.0 < n_high  # the lognormal median is exp(0) = 1


def test_reference_statistic_is_a_median_of_batch_medians():
    """Check the reference's aggregation: median over a batch's tokens of 1/p, then
    the median over batches."""
    rows = [(0, 1, 0, "a", np.log(1 / 2)), (0, 1, 0, "b", np.log(1 / 4)),
            (1, 1, 0, "a", np.log(1 / 10)),
            (2, 1, 0, "a", np.log(1 / 3))]  # fmt: skip
    scores = _scores(rows)
    # Batches of two patients: {0, 1} -> median(2, 4, 10) = 4; {2} -> 3.
    assert reference_statistic(scores, 0, batch_size=2) == pytest.approx(3.5)
    assert np.isnan(reference_statistic(scores, 1))


def test_cross_modal_scores_give_mpl_and_results_serialise():
    """Check the metric name follows the task and to_dict is JSON-ready."""
    import json

    rows = [(0, 0, 1, "x", np.log(0.5))]
    result = perplexity(_scores(rows, protocol="chain", task="cross_modal"))
    assert result.metric == "mpl" and result.protocol == "chain"
    assert json.loads(json.dumps(result.to_dict()))["modalities"]["drug"]["median"] == 2
    assert result.modalities["diagnosis"].n_patients == 0


def test_code_scores_validate_their_columns():
    """Check that CodeScores refuses ragged columns and unknown protocols."""
    with pytest.raises(ValueError, match="protocol must be one of"):
        _scores([], protocol="beam")
    with pytest.raises(ValueError, match="rows; log_prob has"):
        CodeScores(np.zeros(2), np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1),
                   ("diagnosis",), "set", "longitudinal")  # fmt: skip
    table = _scores([(0, 1, 1, "x", -1.0)]).to_arrow()
    assert table.column("modality").to_pylist() == ["drug"]
