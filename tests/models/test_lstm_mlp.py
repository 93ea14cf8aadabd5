"""Tests of the LSTM+MLP baseline: scores, learning, generation, persistence, errors."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.errors import ConfigError, NotFittedError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import Generator
from ehrgen.models.baselines import LSTMMLP, LSTMMLPConfig
from ehrgen.models.baselines.lstm_mlp import MODEL_FILES
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


@pytest.mark.parametrize("task", TASKS)
def test_scores_are_log_probabilities_of_exactly_the_true_codes(
    model: LSTMMLP, held_out: Cohort, task: str
):
    """Check that each true in-vocabulary code of each scored visit gets one finite
    log-probability <= 0, and that the codes outside the vocabulary are counted."""
    scores = score(model, held_out, task)
    expected, unknown = [], 0
    first = 1 if task == "longitudinal" else 0
    vocabulary = model.tokenizer_.codes
    for p, patient in enumerate(held_out):
        for t, visit in enumerate(patient.visits[first:], start=first):
            for m, name in enumerate(held_out.schema.modalities):
                for code in visit.codes(name):
                    if code in vocabulary[name]:
                        expected.append((p, t, m, code))
                    else:
                        unknown += 1
    assert sorted(rows(scores)) == sorted(expected)
    assert scores.n_out_of_vocabulary == unknown >= 2
    assert np.isfinite(scores.log_prob).all() and (scores.log_prob <= 0).all()
    assert (scores.protocol, scores.task, scores.model) == ("set", task, "lstm-mlp")


@pytest.mark.parametrize("task", TASKS)
def test_each_modality_distribution_sums_to_one(
    model: LSTMMLP, held_out: Cohort, task: str
):
    """Check that per visit the probabilities of all codes of a modality sum to 1,
    and that the scores are entries of those distributions."""
    log_probs = model._visit_log_probs(held_out, task)
    tokenizer = model.tokenizer_
    offset = tokenizer.code_ranges[tokenizer.modalities[0]][0]
    assert log_probs.shape == (held_out.n_visits, tokenizer.vocab_size - offset)
    for a, b in tokenizer.code_ranges.values():
        totals = np.exp(log_probs[:, a - offset : b - offset].astype(np.float64))
        np.testing.assert_allclose(totals.sum(1), 1.0, atol=1e-5)
    scores = score(model, held_out, task)
    visit = held_out.visit_offsets[scores.patient] + scores.visit
    names = np.array(tokenizer.modalities)[scores.modality]
    column = [tokenizer.code_id(m, c) - offset for m, c in zip(names, scores.code)]
    np.testing.assert_allclose(scores.log_prob, log_probs[visit, column], atol=1e-6)


def test_save_and_load_keep_scores_and_samples(model: LSTMMLP, held_out, tmp_path):
    """Check that a saved and reloaded model gives the same scores (within 1e-5)
    and the same patients for a seed, from JSON and safetensors files only."""
    folder = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    info = json.loads((folder / "ehrgen.json").read_text())
    assert info["model"] == "lstm-mlp" and "population" in info
    assert info["standardisation"]["mean"] == pytest.approx([57.0], abs=15)
    loaded = LSTMMLP.from_pretrained(folder)
    for task in TASKS:
        before, after = score(model, held_out, task), score(loaded, held_out, task)
        assert rows(before) == rows(after)
        np.testing.assert_allclose(before.log_prob, after.log_prob, atol=1e-5)
    assert model.generate(5, seed=3) == loaded.generate(5, seed=3)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_missing_or_corrupt_file_raises_schema_error(model: LSTMMLP, tmp_path, name):
    """Check that loading a folder with a missing or corrupt file raises a
    SchemaError that names the file."""
    folder = model.save_pretrained(tmp_path / "model")
    (folder / name).write_bytes(b"\x00not what it should be")
    with pytest.raises(SchemaError, match=name):
        LSTMMLP.from_pretrained(folder)
    (folder / name).unlink()
    with pytest.raises(SchemaError, match=f"{name}: missing"):
        LSTMMLP.from_pretrained(folder)


def test_a_foreign_model_folder_is_refused(model: LSTMMLP, tmp_path):
    """Check that a folder whose ehrgen.json names another model is refused."""
    folder = model.save_pretrained(tmp_path / "model")
    info = json.loads((folder / "ehrgen.json").read_text())
    (folder / "ehrgen.json").write_text(json.dumps({**info, "model": "promptehr"}))
    with pytest.raises(SchemaError, match="'lstm-mlp'"):
        LSTMMLP.from_pretrained(folder)


def test_use_before_fit_raises_not_fitted(train: Cohort, tmp_path):
    """Check that scoring, generating and saving before fit raise NotFittedError."""
    model = LSTMMLP(LSTMMLPConfig.tiny())
    for call in (
        lambda: model.score_longitudinal(train),
        lambda: model.score_cross_modal(train),
        lambda: model.generate(2, seed=0),
        lambda: model.save_pretrained(tmp_path / "m"),
    ):
        with pytest.raises(NotFittedError, match="from_pretrained"):
            call()


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
    """Check that a few epochs on 300 patients give a median per-patient set
    perplexity on 100 new patients below the vocabulary size (a uniform model) and
    below the untrained model's, for both tasks and every modality."""
    train, test = demo_cohort(300, seed=0), demo_cohort(100, seed=1)
    untrained = LSTMMLP(LSTMMLPConfig.tiny()).fit(
        train, training=quick(epochs=1, max_steps=1, learning_rate=1e-9)
    )
    model = LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=quick(epochs=5))
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
    assert len(cohort) == 25 and cohort.patient_ids[0] == "synthetic-00"
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


def test_checkpoints_resume_and_load(train: Cohort, tmp_path):
    """Check that a Trainer checkpoint loads with from_pretrained and that training
    resumes from it, with validation picking the best epoch."""
    training = quick(epochs=2, checkpoint_every_steps=2)
    LSTMMLP(LSTMMLPConfig.tiny()).fit(train, training=training, output_dir=tmp_path)
    checkpoint = sorted((tmp_path / "checkpoints").iterdir())[0]
    assert LSTMMLP.from_pretrained(checkpoint).generate(2, seed=0)
    resumed = LSTMMLP(LSTMMLPConfig.tiny()).fit(
        train, val=train[:20], training=quick(epochs=3), resume_from=checkpoint
    )
    assert np.isfinite(resumed.info_["best_val_perplexity"])
    assert resumed.info_["epochs_completed"] == 3


def test_config_round_trips_and_rejects_bad_values():
    """Check that configs round-trip through dicts and reject bad values."""
    config = LSTMMLPConfig.tiny(bidirectional=True)
    assert LSTMMLPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="dropout"):
        LSTMMLPConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="hidden"):
        LSTMMLPConfig.from_dict({"hiden": 3})
