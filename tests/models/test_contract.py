"""One contract for every model: PromptEHR and each baseline, via the registry."""

from __future__ import annotations

import numpy as np
import pytest

from ehrgen.data import Cohort
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError, NotFittedError
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.generation import GenerationConfig
from ehrgen.models.registry import MODELS, build_model
from ehrgen.training import TrainingConfig

TRAINING = TrainingConfig(
    epochs=3, batch_size=32, learning_rate=5e-3, checkpoint_every_steps=None
)


@pytest.fixture(scope="module")
def cohorts() -> tuple[Cohort, Cohort]:
    return demo_cohort(150, seed=0), demo_cohort(40, seed=1)


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request, cohorts):
    train, _ = cohorts
    model = build_model(request.param, "tiny")
    assert model.fit(train, None, TRAINING) is model
    return request.param, model


def _true_codes(cohort: Cohort, first_visit: int, vocabulary) -> set:
    rows = set()
    for p, patient in enumerate(cohort):
        for t, visit in enumerate(patient.visits[first_visit:], start=first_visit):
            for m, codes in visit.events.items():
                rows |= {(p, t, m, c) for c in codes if c in vocabulary[m]}
    return rows


def test_scores_are_log_probabilities_of_exactly_the_true_codes(fitted, cohorts):
    """Check, for every protocol a model supports, that its scores are finite
    log-probabilities of exactly the true in-vocabulary codes, and that it beats the
    uniform model (its vocabulary size) on every modality."""
    name, model = fitted
    _, test = cohorts
    vocabulary = {m: set(c) for m, c in model.tokenizer_.codes.items()}
    sizes = {m: len(c) for m, c in vocabulary.items()}
    for protocol in model.protocols:
        for scorer, first in (
            (model.score_longitudinal, 1),
            (model.score_cross_modal, 0),
        ):
            scores = scorer(test, protocol)
            assert scores.protocol == protocol
            assert (
                np.isfinite(scores.log_prob).all() and (scores.log_prob <= 1e-6).all()
            )
            names = np.array(scores.modalities, dtype=object)[scores.modality]
            rows = set(
                zip(
                    scores.patient.tolist(),
                    scores.visit.tolist(),
                    names.tolist(),
                    scores.code.tolist(),
                )
            )
            assert rows == _true_codes(test, first, vocabulary)
            assert len(rows) == len(scores)
            if protocol == "set":
                for m, figure in perplexity(scores).modalities.items():
                    assert figure.median < sizes[m], (name, m, figure.median, sizes[m])


def test_save_load_same_scores_and_samples(fitted, cohorts, tmp_path):
    """Check that save/load keeps scores (within 1e-5) and generated patients, and
    that a seed fixes generation."""
    name, model = fitted
    _, test = cohorts
    loaded = type(model).from_pretrained(model.save_pretrained(tmp_path / name))
    for protocol in model.protocols:
        a, b = (
            model.score_longitudinal(test, protocol),
            loaded.score_longitudinal(test, protocol),
        )
        np.testing.assert_allclose(a.log_prob, b.log_prob, atol=1e-5)
    sampling = GenerationConfig(max_visits=5, batch_size=16)
    first = model.generate(20, generation=sampling, seed=3)
    assert first == model.generate(20, generation=sampling, seed=3)
    assert first == loaded.generate(20, generation=sampling, seed=3)
    assert len(first) == 20 and all(1 <= len(p.visits) <= 5 for p in first)


def test_unfitted_models_refuse_work(cohorts):
    """Check that every model raises NotFittedError before fit."""
    _, test = cohorts
    for name in MODELS:
        model = build_model(name, "tiny")
        with pytest.raises(NotFittedError):
            model.score_longitudinal(test, "set")
        with pytest.raises(NotFittedError):
            model.generate(2, seed=0)
    with pytest.raises(ConfigError, match="known models are"):
        build_model("halo")
