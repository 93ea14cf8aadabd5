"""Tests of the GPT-2 baseline: scoring protocols, generation, persistence, errors."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import read_meds, write_meds
from ehrgen.errors import ConfigError, NotFittedError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import CodeScores, Generator
from ehrgen.models.baselines import gpt2
from ehrgen.models.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig
from ehrgen.training import TrainingConfig

TASKS = [("longitudinal", 1), ("cross_modal", 0)]  # (task, first scored visit)
SHORT = GenerationConfig(max_visits=3, max_codes_per_modality=8, batch_size=8)


def quick(**changes) -> TrainingConfig:
    base = {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3,
            "checkpoint_every_steps": None}  # fmt: skip
    return TrainingConfig(**{**base, **changes})


def tiny_model(cohort: Cohort, **changes) -> GPT2Baseline:
    return GPT2Baseline(GPT2BaselineConfig.tiny()).fit(
        cohort, training=quick(**changes)
    )


@pytest.fixture(scope="module")
def model() -> GPT2Baseline:
    return tiny_model(demo_cohort(60, seed=0))


@pytest.fixture(scope="module")
def scored(model) -> Cohort:
    """Twenty demo patients plus one whose codes were mostly never seen in training."""
    cohort = demo_cohort(20, seed=1)
    known = model.tokenizer_.codes["diagnosis"][0]
    visits = (
        Visit({"diagnosis": ("NEVER-1",), "drug": ("NEVER-2",)}, datetime(2020, 1, 2)),
        Visit({"diagnosis": ("NEVER-3", known)}, datetime(2020, 2, 2)),
    )
    unseen = Patient("unseen", {"gender": "F"}, visits)
    return Cohort.from_patients([*cohort, unseen], cohort.schema)


def score(model: GPT2Baseline, cohort: Cohort, task: str, protocol: str):
    return getattr(model, f"score_{task}")(cohort, protocol)


def true_codes(cohort: Cohort, first_visit: int, vocabulary) -> tuple[set, int]:
    """The (patient, visit, modality, code) rows to score, and the unseen codes."""
    rows, unseen = set(), 0
    for p, patient in enumerate(cohort):
        for t, visit in enumerate(patient.visits[first_visit:], start=first_visit):
            for m, codes in visit.events.items():
                rows |= {(p, t, m, c) for c in codes if c in vocabulary[m]}
                unseen += sum(c not in vocabulary[m] for c in codes)
    return rows, unseen


def rows_of(scores: CodeScores) -> list[tuple]:
    names = np.array(scores.modalities, dtype=object)[scores.modality].tolist()
    return list(
        zip(scores.patient.tolist(), scores.visit.tolist(), names, scores.code.tolist())
    )


def median_perplexity(scores: CodeScores, modality: int) -> float:
    """METHOD.md's per-patient perplexity (exp of the mean over visits of the mean
    code NLL), then the median over patients."""
    per_patient = []
    for p in np.unique(scores.patient[scores.modality == modality]):
        rows = (scores.patient == p) & (scores.modality == modality)
        nll = [
            -scores.log_prob[rows & (scores.visit == t)].mean()
            for t in np.unique(scores.visit[rows])
        ]
        per_patient.append(np.exp(np.mean(nll)))
    return float(np.median(per_patient))


# --------------------------------------------------------------------------- fitting


def test_fit_returns_self_and_the_model_is_a_generator():
    """Check that fit returns the model itself, which implements Generator."""
    model = GPT2Baseline(GPT2BaselineConfig.tiny())
    assert model.fit(demo_cohort(8, seed=0), training=quick(epochs=1)) is model
    assert isinstance(model, Generator) and model.protocols == ("chain", "set")
    assert model.info_["train_patients"] == 8 and model.info_["steps"] >= 1


def test_loss_covers_visits_to_eos_only():
    """Check that the loss counts every token from the first <v> to <eos> except
    <unk>, never the demographic prefix or <bos>, and that each target sits in the
    grammar row the block open before it selects."""
    train = demo_cohort(6, seed=3)
    model = tiny_model(train, epochs=1)
    fitted, tok = model._fitted, model.tokenizer_
    patient = Patient("x", train[0].static, (
        Visit({"diagnosis": ("NEVER",), "drug": (tok.codes["drug"][0],)}),
        *train[0].visits,
    ))  # fmt: skip
    ids = gpt2._encode(fitted, patient, 256)
    lookup = gpt2._structure(tok, fitted.prefix.vocab_size)
    n_prefix = len(train.schema.features)
    assert ids[n_prefix] == tok.bos_id and ids[-1] == tok.eos_id
    batch = gpt2._collate(
        [(ids, gpt2._grammar_rows(ids, lookup))], n_prefix, tok.pad_id, tok.unk_id
    )
    expected = len(ids) - n_prefix - 1 - 1  # no prefix, no <bos>, one <unk>
    module = gpt2._LossModule(model.model_, tok)
    out = module(batch)
    assert int(out.n_tokens) == expected and torch.isfinite(out.loss_sum)
    labels, rows = batch["labels"][0], batch["rows"][0]
    allowed = module.allowed[rows[labels >= 0], labels[labels >= 0]]
    assert bool(allowed.all())


def test_long_patients_lose_their_oldest_whole_visits():
    """Check that a patient longer than n_positions keeps prefix, <bos>, its newest
    whole visits and <eos>, and that scoring it works."""
    train = demo_cohort(40, seed=0)
    long = max(train, key=lambda p: len(p.visits))
    model = GPT2Baseline(GPT2BaselineConfig.tiny(n_positions=64)).fit(
        train, training=quick(epochs=1)
    )
    tok, n_prefix = model.tokenizer_, len(train.schema.features)
    ids = gpt2._encode(model._fitted, long, 64).tolist()
    assert 64 - max(len(tok.encode_visit(v)) for v in long.visits) < len(ids) <= 64
    assert ids[n_prefix : n_prefix + 2] == [tok.bos_id, tok.visit_open_id]
    kept = tok.decode(ids[n_prefix:]).visits
    assert [v.events for v in kept] == [
        v.events for v in long.visits[len(long.visits) - len(kept) :]
    ]
    cohort = Cohort.from_patients([long], train.schema)
    assert np.isfinite(model.score_longitudinal(cohort, "chain").log_prob).all()


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("protocol", ["chain", "set"])
@pytest.mark.parametrize(("task", "first_visit"), TASKS)
def test_scores_are_the_true_in_vocabulary_codes(
    model, scored, protocol, task, first_visit
):
    """Check that scores are finite log-probabilities of exactly the true
    in-vocabulary codes (each once), and that unseen codes are only counted."""
    scores = score(model, scored, task, protocol)
    vocabulary = {m: set(c) for m, c in model.tokenizer_.codes.items()}
    expected, unseen = true_codes(scored, first_visit, vocabulary)
    assert (scores.protocol, scores.task, scores.model) == (protocol, task, "gpt2")
    assert np.isfinite(scores.log_prob).all() and (scores.log_prob < 0).all()
    rows = rows_of(scores)
    assert len(rows) == len(set(rows)) and set(rows) == expected
    assert scores.n_out_of_vocabulary == unseen > 0


@pytest.mark.parametrize("task", ["longitudinal", "cross_modal"])
def test_set_probabilities_over_a_modality_sum_to_one(task):
    """Check that, under "set", an untrained model's probabilities of all the codes
    of a modality sum to 1: structure and prefix tokens get none of the mass."""
    train = demo_cohort(10, seed=2)
    model = tiny_model(train, epochs=1, max_steps=1, learning_rate=1e-9)
    first = train[0].visits[0]
    for m, codes in model.tokenizer_.codes.items():
        # Visit 1 holds every code of m, so its rows for m are the whole distribution.
        second = Visit({**first.events, m: codes}, datetime(2030, 1, 1))
        patient = Patient("all", train[0].static, (first, second))
        scores = score(
            model, Cohort.from_patients([patient], train.schema), task, "set"
        )
        rows = (scores.visit == 1) & (scores.modality == scores.modalities.index(m))
        assert rows.sum() == len(codes)
        assert np.exp(scores.log_prob[rows]).sum() == pytest.approx(1, abs=1e-5)


def test_chain_equals_set_for_a_single_code(model, scored):
    """Check that chain and set agree on a modality holding one code, where their
    contexts are the same: any modality under cross-modal scoring, the visit's first
    block under longitudinal scoring."""
    patients = list(scored)
    for task, _ in TASKS:
        chain, sets = (score(model, scored, task, p) for p in ("chain", "set"))
        assert rows_of(chain) == rows_of(sets)
        same = np.zeros(len(chain), dtype=bool)
        for i, (p, t, m, _) in enumerate(rows_of(chain)):
            visit = patients[p].visits[t]
            first_block = next(iter(visit.events)) == m
            alone = len(visit.codes(m)) == 1
            same[i] = alone and (task == "cross_modal" or first_block)
        assert same.sum() >= 3
        a, b = chain.log_prob, sets.log_prob
        np.testing.assert_allclose(a[same], b[same], atol=1e-5)
        assert not np.allclose(a[~same], b[~same])


@pytest.mark.slow
def test_trained_model_beats_the_uniform_model():
    """Check that, trained a few epochs on 300 demo patients, the median per-patient
    set perplexity on 100 new ones is below each modality's vocabulary size (the
    uniform model's), for longitudinal and cross-modal imputation."""
    model = GPT2Baseline(GPT2BaselineConfig.tiny()).fit(
        demo_cohort(300, seed=0), training=quick(epochs=8)
    )
    test = demo_cohort(100, seed=1)
    for task, _ in TASKS:
        scores = score(model, test, task, "set")
        for k, m in enumerate(scores.modalities):
            size = len(model.tokenizer_.codes[m])
            assert median_perplexity(scores, k) < 0.85 * size, (task, m)


# --------------------------------------------------------------------------- generation


def test_same_seed_same_cohort(model):
    """Check that a seed fixes the generated cohort, and another seed changes it."""
    first = model.generate(12, generation=SHORT, seed=5)
    assert first == model.generate(12, generation=SHORT, seed=5)
    assert first != model.generate(12, generation=SHORT, seed=6)


def test_generated_patients_are_well_formed(model, tmp_path):
    """Check that generated patients respect the conditions, the vocabulary and the
    visit cap, end on their own, and round-trip through MEDS."""
    sampling = GenerationConfig(max_visits=5, batch_size=16, max_codes_per_modality=6)
    cohort = model.generate(40, conditions={"gender": "F"}, generation=sampling, seed=0)
    assert [p.patient_id for p in cohort] == [f"synthetic-{i:02d}" for i in range(40)]
    vocabulary = model.tokenizer_.codes
    lengths = [len(p.visits) for p in cohort]
    assert min(lengths) >= 1 and max(lengths) <= 5 and min(lengths) < 5
    for patient in cohort:
        assert patient.static["gender"] == "F" and "age" in patient.static
        for visit in patient.visits:
            assert visit.n_codes > 0 and visit.time is not None
            for m, codes in visit.events.items():
                assert set(codes) <= set(vocabulary[m]) and len(codes) <= 6
    assert read_meds(write_meds(cohort, tmp_path / "meds")) == cohort


def test_cache_and_no_cache_decode_alike(model):
    """Check that greedy decoding gives the same patients with and without the
    key/value cache (the left-padded, cached loop reads the right positions)."""
    greedy = SHORT.replace(greedy=True)
    cached = model.generate(8, generation=greedy, seed=0)
    no_cache = greedy.replace(use_cache=False)
    assert cached == model.generate(8, generation=no_cache, seed=0)


def test_bad_generation_arguments_are_refused(model):
    """Check that a bad n, unknown condition or too short a window is refused."""
    with pytest.raises(ConfigError, match="'n' parameter"):
        model.generate(0)
    with pytest.raises(ConfigError, match="Unknown condition 'gendr'"):
        model.generate(2, conditions={"gendr": "F"})
    with pytest.raises(ConfigError, match="one mapping, or one per patient"):
        model.generate(2, conditions=[{}])
    with pytest.raises(ConfigError, match="n_positions"):
        model.generate(2, generation=GenerationConfig(max_codes_per_modality=200))


# ------------------------------------------------------------------------- persistence


def test_save_and_load_keep_scores_and_samples(model, scored, tmp_path):
    """Check that from_pretrained(save_pretrained(m)) keeps scores within 1e-5 and
    generated patients, and writes the documented files."""
    folder = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "ehrgen.json", "model.safetensors", "schema.json",
        "tokenizer.json",
    ]  # fmt: skip
    info = json.loads((folder / "ehrgen.json").read_text())
    assert info["model"] == "gpt2" and len(info["decile_edges"]["age"]) == 9
    loaded = GPT2Baseline.from_pretrained(folder)
    assert loaded.config == model.config and loaded.tokenizer_ == model.tokenizer_
    for task, _ in TASKS:
        for protocol in model.protocols:
            before, after = (score(m, scored, task, protocol) for m in (model, loaded))
            np.testing.assert_allclose(after.log_prob, before.log_prob, atol=1e-5)
    assert loaded.generate(5, generation=SHORT, seed=1) == model.generate(
        5, generation=SHORT, seed=1
    )
    with pytest.raises(Exception, match="already holds a model"):
        model.save_pretrained(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "tokenizer.json").unlink(), r"tokenizer.json: missing"),
        (lambda f: (f / "ehrgen.json").unlink(), r"ehrgen.json: missing"),
        (lambda f: (f / "config.json").write_text("{"), r"config.json: unreadable"),
        (
            lambda f: (f / "config.json").write_text('{"n_embed": 8}'),
            r"config.json: .*Did you mean 'n_embd'",
        ),
        (
            lambda f: (f / "ehrgen.json").write_text('{"model": "promptehr"}'),
            r"ehrgen.json: .*expected model 'gpt2'",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 10),
            r"model.safetensors: cannot load the weights",
        ),
    ],
)
def test_damaged_model_folder_is_named(model, tmp_path, damage, message):
    """Check that a folder with a missing or corrupt file fails naming that file."""
    folder = model.save_pretrained(tmp_path / "model")
    damage(folder)
    with pytest.raises(SchemaError, match=message):
        GPT2Baseline.from_pretrained(folder)


def test_checkpoints_load_and_resume(tmp_path):
    """Check that a checkpoint is a loadable model and that resuming from it ends
    with the step count of one uninterrupted run."""
    cohort = demo_cohort(32, seed=4)
    settings = quick(epochs=2, batch_size=8)
    whole = tiny_model(cohort, epochs=2, batch_size=8)
    GPT2Baseline(GPT2BaselineConfig.tiny()).fit(
        cohort, training=settings.replace(max_steps=3, checkpoint_every_steps=3),
        output_dir=tmp_path,
    )  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / f"step-{3:07d}"
    loaded = GPT2Baseline.from_pretrained(checkpoint)
    assert len(loaded.generate(2, generation=SHORT, seed=0)) == 2
    resumed = GPT2Baseline(GPT2BaselineConfig.tiny()).fit(
        cohort, training=settings, resume_from=checkpoint
    )
    assert resumed.info_["steps"] == whole.info_["steps"]
    for name, value in whole.model_.state_dict().items():
        torch.testing.assert_close(resumed.model_.state_dict()[name], value)


# --------------------------------------------------------------------------- errors


def test_unfitted_model_refuses_work():
    """Check that every entry point raises NotFittedError before fit."""
    model, cohort = GPT2Baseline(GPT2BaselineConfig.tiny()), demo_cohort(3, seed=0)
    calls = [
        lambda: model.score_longitudinal(cohort, "set"),
        lambda: model.score_cross_modal(cohort, "chain"),
        lambda: model.generate(2, seed=0),
        lambda: model.save_pretrained("unused"),
        lambda: model.model_,
    ]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call()


def test_bad_input_is_refused(model):
    """Check that bad configs, protocols and cohorts are refused with clear errors."""
    with pytest.raises(ConfigError, match="'n_head' parameter"):
        GPT2BaselineConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="Did you mean 'n_layer'"):
        GPT2BaselineConfig.from_dict({"n_layers": 2})
    with pytest.raises(ConfigError, match="'protocol' parameter"):
        model.score_longitudinal(demo_cohort(3, seed=0), "beam")
    other = Cohort.from_patients([Patient("1", {}, (Visit({"dx": ("a",)}),))])
    with pytest.raises(SchemaError, match="scored cohort"):
        model.score_cross_modal(other, "set")
    with pytest.raises(SchemaError, match="training cohort"):
        GPT2Baseline(GPT2BaselineConfig.tiny()).fit(demo_cohort(3, seed=0)[:0])
