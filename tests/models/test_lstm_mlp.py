"""Tests of what is specific to the LSTM+MLP baseline: scores, learning, generation,
errors (the contract every model meets is in test_contract.py)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import Generator
from ehrgen.models.baselines import LSTMMLP, LSTMMLPConfig
from ehrgen.models.trained import SYNTHETIC_ID_BASE
from ehrgen.training import TrainingConfig

TASKS = ("longitudinal", "cross_modal")


def quick(**changes) -> TrainingConfig:
    base = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-2,
            "checkpoint_every_steps": None}  # fmt: skip
    return TrainingConfig(**{**base, **changes})


def score(model: LSTMMLP, cohort: Cohort, task: str):
    if task == "longitudinal":
        return model.score_longitudinal(cohort)
    return model.score_cross_modal(cohort)


def rows(scores) -> list[tuple[int, int, int, str]]:
    return list(zip(scores.patient.tolist(), scores.visit.tolist(),
                    scores.modality.tolist(), scores.code.tolist()))  # fmt: skip


@pytest.fixture(scope="module")
def train() -> Cohort:
    return demo_cohort(60, seed=0)


@pytest.fixture(scope="module")
def model(train: Cohort) -> LSTMMLP:
    return LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=quick())


@pytest.fixture(scope="module")
def held_out(train: Cohort) -> Cohort:
    """Unseen patients, plus one whose codes are all outside the vocabulary."""
    stranger = Patient("stranger", {"gender": "F"}, (
        Visit({"diagnosis": ("ICD9CM//ZZZ1",)}, datetime(2015, 1, 1)),
        Visit({"diagnosis": ("ICD9CM//ZZZ2",), "lab": ("NoSuchLab",)},
              datetime(2015, 2, 1)),
    ))  # fmt: skip
    return Cohort.from_patients([*demo_cohort(40, seed=1), stranger], train.schema)


def test_fit_returns_self_and_implements_the_generator_protocol(train: Cohort):
    """Check that fit returns the model itself, which is a Generator of "set"."""
    model = LSTMMLP(LSTMMLPConfig.tiny())
    assert model.fit(train, training=quick(epochs=1)) is model
    assert isinstance(model, Generator)
    assert LSTMMLP.protocols == ("set",)


def test_same_seed_gives_same_model_and_patients(model: LSTMMLP, train, held_out):
    """Check that the same training seed gives the same scores and the same
    generation seed the same patients, while another seed changes them."""
    again = LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=quick())
    other = LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=quick(seed=1))
    same, twin = model.score_cross_modal(held_out), again.score_cross_modal(held_out)
    np.testing.assert_array_equal(same.log_prob, twin.log_prob)
    assert not np.allclose(same.log_prob, other.score_cross_modal(held_out).log_prob)
    assert model.generate(12, seed=7) == model.generate(12, seed=7)
    assert model.generate(12, seed=7) != model.generate(12, seed=8)


def test_learns_better_than_uniform_and_untrained():
    """Check that eight epochs on 300 patients give a median per-patient set
    perplexity on 100 new patients below the vocabulary size (a uniform model) and
    below the untrained model's, for both tasks and every modality."""
    train, test = demo_cohort(300, seed=0), demo_cohort(100, seed=1)
    untrained = LSTMMLP(LSTMMLPConfig.tiny()).fit(
        train, training=quick(epochs=1, max_steps=1, learning_rate=1e-9)
    )
    model = LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=quick(epochs=8))
    for task in TASKS:
        learnt = _median_perplexity(score(model, test, task))
        start = _median_perplexity(score(untrained, test, task))
        for name, codes in model.tokenizer_.codes.items():
            assert learnt[name] < 0.9 * start[name] < 0.9 * len(codes), (task, name)


def _median_perplexity(scores) -> dict[str, float]:
    """Per modality, the median over patients of exp(mean NLL of their codes)."""
    out = {}
    for m, name in enumerate(scores.modalities):
        keep = scores.modality == m
        _, inverse = np.unique(scores.patient[keep], return_inverse=True)
        nll = np.bincount(inverse, -scores.log_prob[keep]) / np.bincount(inverse)
        out[name] = float(np.median(np.exp(nll)))
    return out


def test_generated_patients_are_well_formed_and_round_trip_meds(
    model: LSTMMLP, tmp_path
):
    """Check that generated patients have 1..max_visits non-empty visits of unique
    in-vocabulary codes, increasing times, and survive a MEDS round trip."""
    cohort = model.generate(25, generation=GenerationConfig(max_visits=4), seed=0)
    assert len(cohort) == 25 and cohort.patient_ids[0] == str(SYNTHETIC_ID_BASE)
    assert np.diff(cohort.visit_offsets).min() >= 1
    assert np.diff(cohort.visit_offsets).max() <= 4
    assert np.diff(cohort.visit_offsets).max() > 1  # the end logit lets some continue
    for patient in cohort:
        for before, after in zip(patient.visits, patient.visits[1:]):
            assert before.time < after.time
        for visit in patient.visits:
            assert visit.n_codes > 0
            for name, codes in visit.events.items():
                assert len(set(codes)) == len(codes)
                assert set(codes) <= set(model.tokenizer_.codes[name])
    assert read_meds(write_meds(cohort, tmp_path / "meds")) == cohort


def test_generation_honours_conditions_and_limits(model: LSTMMLP):
    """Check that conditions are imposed, invalid ones rejected, and that the
    per-modality cap and max_visits hold."""
    cohort = model.generate(10, conditions={"gender": "F", "age": 70.0}, seed=0)
    assert all(p.static["gender"] == "F" and p.static["age"] == 70 for p in cohort)
    with pytest.raises(ConfigError, match="gendr"):
        model.generate(2, conditions={"gendr": "F"})
    limits = GenerationConfig(max_visits=1, max_codes_per_modality=1)
    capped = model.generate(10, generation=limits, seed=1)
    assert capped.n_visits == 10
    assert all(len(c) == 1 for p in capped for v in p.visits for c in v.events.values())


def test_chain_protocol_raises_not_implemented(model: LSTMMLP, train: Cohort):
    """Check that the chain protocol is refused, naming the protocol and model."""
    for call in (model.score_longitudinal, model.score_cross_modal):
        with pytest.raises(NotImplementedError, match="'chain'.*lstm-mlp"):
            call(train, protocol="chain")
    with pytest.raises(ConfigError, match="protocol"):
        model.score_longitudinal(train, protocol="bag")


def test_a_cohort_of_another_schema_raises_schema_error(model: LSTMMLP):
    """Check that scoring a cohort whose schema differs from training's raises."""
    other = Cohort.from_patients([Patient("1", {}, (Visit({"diagnosis": ("x",)}),))])
    with pytest.raises(SchemaError, match="schema"):
        model.score_longitudinal(other)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_longitudinal_scores_never_read_the_future(train: Cohort, bidirectional):
    """Check that changing visit 3 of a patient leaves the longitudinal scores of
    visits 1-3 unchanged (left to right, or bidirectional over the history only)
    but changes those of visit 4."""
    config = LSTMMLPConfig.tiny(bidirectional=bidirectional)
    model = LSTMMLP(config).fit(train, training=quick(epochs=1))
    patient = next(p for p in train if len(p.visits) >= 4)
    changed = list(patient.visits)
    changed[2] = Visit({"drug": model.tokenizer_.codes["drug"][:5]}, changed[2].time)
    cohorts = [
        Cohort.from_patients([Patient("1", patient.static, visits)], train.schema)
        for visits in (patient.visits, changed)
    ]
    a, b = (model._visit_log_probs(c, "longitudinal") for c in cohorts)
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-6)
    assert not np.allclose(a[3], b[3], atol=1e-4)


def test_config_round_trips_and_rejects_bad_values():
    """Check that configs round-trip through dicts and reject bad values."""
    config = LSTMMLPConfig.tiny(bidirectional=True)
    assert LSTMMLPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="dropout"):
        LSTMMLPConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="hidden"):
        LSTMMLPConfig.from_dict({"hiden": 3})
