"""Tests of what is specific to the GPT-2 baseline: scoring protocols, generation,
errors (the contract every model meets is in test_contract.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import CodeScores, Generator
from ehrgen.models.baselines import gpt2
from ehrgen.models.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import VisitGrammar
from ehrgen.tokens.tokenizer import CodeTokenizer
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
    assert model.training_.train_patients == 8 and model.training_.steps >= 1


def test_loss_covers_visits_to_eos_only():
    """Check that the loss counts every token from the first <v> to <eos> except
    <unk>, never the demographic prefix or <bos>, and that each target sits in the
    grammar row the block open before it selects."""
    train = demo_cohort(6, seed=3)
    model = tiny_model(train, epochs=1)
    fitted, tok = model._fitted, model.tokenizer_
    first = Visit(
        {"diagnosis": ("NEVER",), "drug": (tok.codes["drug"][0],)},
        train[0].visits[0].time - timedelta(days=30),
    )
    patient = Patient("x", train[0].static, (first, *train[0].visits))  # fmt: skip
    cohort = Cohort.from_patients([patient], train.schema)
    ids = gpt2._encode(fitted, TokenizedCohort.from_cohort(cohort, tok), 256)[0]
    grammar = VisitGrammar(tok)
    n_prefix = len(train.schema.features)
    assert ids[n_prefix] == tok.bos_id and ids[-1] == tok.eos_id
    # As in training: the recorded order, and visits reordered (blocks permuted).
    reordered = gpt2._reorder_visits(ids, grammar, np.random.default_rng(0), True)
    batch = gpt2._collate(
        [(x, grammar.rows(x)) for x in (ids, reordered)],
        n_prefix, tok.pad_id, tok.unk_id,
    )  # fmt: skip
    expected = len(ids) - n_prefix - 1 - 1  # no prefix, no <bos>, one <unk>
    module = gpt2._LossModule(model.model_, tok)
    out = module(batch)
    assert int(out.n_tokens) == 2 * expected and torch.isfinite(out.loss_sum)
    labels, rows = batch["labels"], batch["rows"]
    allowed = module.allowed[rows[labels >= 0], labels[labels >= 0]]
    assert bool(allowed.all())


def test_training_reorders_blocks_and_codes_within_visits():
    """Check that the per-epoch reordering keeps the prefix, <bos>, <eos> and each
    visit's blocks and codes, and puts the blocks of some visits in another order."""
    train = demo_cohort(30, seed=3)
    tok = CodeTokenizer.fit(train)
    grammar, patient = VisitGrammar(tok), max(train, key=lambda p: len(p.visits))
    visits = [tok.encode_visit(v) for v in patient.visits]
    ids = np.array([99, tok.bos_id, *(t for v in visits for t in v), tok.eos_id])
    rng, moved = np.random.default_rng(0), 0
    for _ in range(10):
        out = gpt2._reorder_visits(ids, grammar, rng, shuffle=True)
        assert out[:2].tolist() == [99, tok.bos_id] and out[-1] == tok.eos_id
        new = tok.decode(out[1:]).visits
        assert len(new) == len(patient.visits)
        for v, w in zip(new, patient.visits):
            assert {m: set(c) for m, c in v.events.items()} == {
                m: set(c) for m, c in w.events.items()
            }
        opens = [t for t in out.tolist() if t in tok.open_ids.values()]
        moved += opens != [t for t in ids.tolist() if t in tok.open_ids.values()]
    assert moved > 0


def test_long_patients_lose_their_oldest_whole_visits():
    """Check that a patient longer than n_positions keeps prefix, <bos>, its newest
    whole visits and <eos>, and that scoring it works."""
    train = demo_cohort(40, seed=0)
    long = max(train, key=lambda p: len(p.visits))
    model = GPT2Baseline(GPT2BaselineConfig.tiny(n_positions=64)).fit(
        train, training=quick(epochs=1)
    )
    tok, n_prefix = model.tokenizer_, len(train.schema.features)
    data = TokenizedCohort.from_cohort(Cohort.from_patients([long], train.schema), tok)
    ids = gpt2._encode(model._fitted, data, 64)[0].tolist()
    assert 64 - max(len(tok.encode_visit(v)) for v in long.visits) < len(ids) <= 64
    assert ids[n_prefix : n_prefix + 2] == [tok.bos_id, tok.visit_open_id]
    kept = tok.decode(ids[n_prefix:]).visits
    assert [v.events for v in kept] == [
        v.events for v in long.visits[len(long.visits) - len(kept) :]
    ]
    cohort = Cohort.from_patients([long], train.schema)
    assert np.isfinite(model.score_longitudinal(cohort, "chain").log_prob).all()


# --------------------------------------------------------------------------- scoring


# --------------------------------------------------------------------------- errors


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
