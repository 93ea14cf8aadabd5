"""Tests of what each scoring protocol conditions on, and of cached decoding, for
PromptEHR, the GPT-2 baseline and HALO (the autoregressive models)."""

from __future__ import annotations

import numpy as np
import pytest

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.generation import Decoder, GenerationConfig
from ehrgen.models.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig
from ehrgen.models.baselines.halo import HALO, HALOConfig
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig

TRAINING = TrainingConfig(
    epochs=1, batch_size=8, learning_rate=3e-3, checkpoint_every_steps=None
)
BUILDERS = {
    "promptehr": lambda: PromptEHR(PromptEHRConfig.tiny()),
    "promptehr-one-pass": lambda: PromptEHR(PromptEHRConfig.tiny(objective="one-pass")),
    "gpt2": lambda: GPT2Baseline(GPT2BaselineConfig.tiny()),
    "halo": lambda: HALO(HALOConfig.tiny()),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def model(request):
    return BUILDERS[request.param]().fit(demo_cohort(24, seed=0), training=TRAINING)


@pytest.fixture(scope="module")
def scored() -> Cohort:
    """Demo patients with at least three visits, visit 1 holding diagnoses and
    drugs."""
    cohort = demo_cohort(60, seed=1)
    patients = [
        p
        for p in cohort
        if len(p.visits) >= 3 and {"diagnosis", "drug"} <= set(p.visits[1].events)
    ]
    assert len(patients) >= 4
    return Cohort.from_patients(patients[:6], cohort.schema)


def _with_visit(cohort: Cohort, t: int, change) -> Cohort:
    """The cohort with visit t of every patient replaced by ``change(visit)``."""
    patients = []
    for p in cohort:
        visits = list(p.visits)
        visits[t] = Visit(change(visits[t]), visits[t].time)
        patients.append(Patient(p.patient_id, p.static, tuple(visits)))
    return Cohort.from_patients(patients, cohort.schema)


def _rows(scores, t: int, modality: str | None = None) -> np.ndarray:
    keep = scores.visit == t
    if modality is not None:
        keep &= scores.modality == scores.modalities.index(modality)
    return keep


def _other_diagnoses(model, visit: Visit) -> dict:
    """The visit with its diagnoses replaced by three other known ones."""
    others = [c for c in model.tokenizer_.codes["diagnosis"] if c not in visit.events]
    return {**visit.events, "diagnosis": tuple(others[:3])}


def test_chain_lpl_of_a_modality_ignores_the_rest_of_its_visit(model, scored):
    """Check that chain lpl scores of visit 1's drugs are the same when visit 1's
    diagnoses change (they condition on visits before 1 and earlier drugs only),
    while cross-modal scores of the same drugs, which do see the diagnoses, move."""
    changed = _with_visit(scored, 1, lambda v: _other_diagnoses(model, v))
    for task, moves in (("longitudinal", False), ("cross_modal", True)):
        a = getattr(model, f"score_{task}")(scored, "chain")
        b = getattr(model, f"score_{task}")(changed, "chain")
        rows_a, rows_b = _rows(a, 1, "drug"), _rows(b, 1, "drug")
        assert rows_a.sum() >= 4 and list(a.code[rows_a]) == list(b.code[rows_b])
        same = np.allclose(a.log_prob[rows_a], b.log_prob[rows_b], atol=1e-5)
        assert same != moves, task


@pytest.mark.parametrize("protocol", ["chain", "set"])
def test_lpl_of_a_visit_ignores_later_visits(model, scored, protocol):
    """Check that the longitudinal scores of visits 1 and earlier are the same
    when visit 2 changes, under both protocols."""
    changed = _with_visit(scored, 2, lambda v: _other_diagnoses(model, v))
    a = model.score_longitudinal(scored, protocol)
    b = model.score_longitudinal(changed, protocol)
    rows_a, rows_b = a.visit <= 1, b.visit <= 1
    assert rows_a.sum() >= 8 and list(a.code[rows_a]) == list(b.code[rows_b])
    np.testing.assert_allclose(a.log_prob[rows_a], b.log_prob[rows_b], atol=1e-5)


def test_cached_and_uncached_decoding_sample_alike(model):
    """Check that sampling (not greedy) with and without the key/value cache gives
    the same patients for the same seed, and that the network is a Decoder (the
    sampler's interface) or is wrapped in one. A one-pass PromptEHR decodes with
    continuous batching when cached, so its random draws come in another order:
    it is checked greedy (sampling alike is checked for the paper's objective)."""
    sampling = GenerationConfig(max_visits=3, max_codes_per_modality=5, batch_size=8)
    if isinstance(model, PromptEHR) and model.config.objective == "one-pass":
        sampling = sampling.replace(greedy=True)
    cached = model.generate(10, generation=sampling, seed=4)
    uncached = model.generate(10, generation=sampling.replace(use_cache=False), seed=4)
    assert cached == uncached
    assert sum(len(p.visits) for p in cached) >= 10
    if isinstance(model, PromptEHR):
        assert isinstance(model.model_, Decoder)
