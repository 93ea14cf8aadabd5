"""Tests of what is specific to HALO: the two levels and their caches, exact
scores, learning, generation, errors (the contract every model meets is in
test_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import Generator
from ehrgen.models.baselines import halo_sequences
from ehrgen.models.baselines.halo import HALO, HALOConfig
from ehrgen.models.registry import build_model
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import VisitGrammar
from ehrgen.training import TrainingConfig

TASKS = ("longitudinal", "cross_modal")
SHORT = GenerationConfig(max_visits=5, max_codes_per_modality=6, batch_size=8)


def quick(**changes) -> TrainingConfig:
    base = {"epochs": 3, "batch_size": 16, "learning_rate": 5e-3,
            "checkpoint_every_steps": None}  # fmt: skip
    return TrainingConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def train() -> Cohort:
    return demo_cohort(120, seed=0)


@pytest.fixture(scope="module")
def model(train: Cohort) -> HALO:
    return HALO(HALOConfig.tiny()).fit(train, training=quick())


@pytest.fixture(scope="module")
def long_patients(train: Cohort) -> Cohort:
    """Held-out patients with at least four visits."""
    patients = [p for p in demo_cohort(60, seed=1) if len(p.visits) >= 4][:8]
    assert len(patients) >= 4
    return Cohort.from_patients(patients, train.schema)


def score(model: HALO, cohort: Cohort, task: str, protocol: str):
    return getattr(model, f"score_{task}")(cohort, protocol)


def median_perplexity(scores) -> dict[str, float]:
    """Per modality, the median over patients of exp(mean NLL of their codes)."""
    out = {}
    for m, name in enumerate(scores.modalities):
        keep = scores.modality == m
        _, inverse = np.unique(scores.patient[keep], return_inverse=True)
        nll = np.bincount(inverse, -scores.log_prob[keep]) / np.bincount(inverse)
        out[name] = float(np.median(np.exp(nll)))
    return out


# --------------------------------------------------------------------------- fitting


def test_fit_returns_self_and_the_model_is_a_generator(train: Cohort):
    """Check that fit returns the model, a Generator of both protocols, that the
    registry builds it, and that the tiny preset is a few thousand parameters."""
    model = HALO(HALOConfig.tiny())
    assert model.fit(train[:8], training=quick(epochs=1)) is model
    assert isinstance(model, Generator) and model.protocols == ("chain", "set")
    assert isinstance(build_model("halo", "tiny"), HALO)
    assert build_model("halo", "paper").config == HALOConfig.paper()
    n_parameters = sum(p.numel() for p in model.model_.parameters())
    assert 2_000 < n_parameters < 20_000


def test_a_batch_targets_every_token_of_every_visit_and_each_end(train: Cohort):
    """Check that a training batch predicts each visit's tokens from <v> to </v>
    (the first from the visit state alone), one <eos> per patient, and nothing for
    unknown codes; and that the loss counts exactly those targets."""
    model = HALO(HALOConfig.tiny()).fit(train[:4], training=quick(epochs=1))
    fitted, tok = model._fitted, model.tokenizer_
    first = train[0].visits[0]
    odd = Visit({**first.events, "drug": ("NEVER-SEEN",)}, first.time)
    patient = Patient("x", train[0].static, (odd, *train[0].visits[1:]))
    cohort = Cohort.from_patients([patient, train[1]], train.schema)
    patients = halo_sequences._patients(
        fitted, TokenizedCohort.from_cohort(cohort, tok)
    )
    batch = halo_sequences._collate(patients, VisitGrammar(tok))
    visits = [*patients[0][1], *patients[1][1]]
    n_slots = len(visits) + 2  # one end sequence per patient
    assert batch["tokens"].shape[0] == n_slots
    targets = batch["targets"]
    assert int((targets == tok.eos_id).sum()) == 2
    assert int((targets == tok.visit_open_id).sum()) == len(visits)
    n_targets = sum(len(v) for v in visits) + 2 - 1  # less one unknown code
    assert int((targets != halo_sequences.IGNORE).sum()) == n_targets
    assert torch.equal(batch["tokens"][0, 1 : len(visits[0]) + 1],
                       torch.from_numpy(visits[0]))  # fmt: skip
    out = model.model_.train()(batch)
    model.model_.eval()
    assert int(out.n_tokens) == n_targets and torch.isfinite(out.loss_sum)


@pytest.mark.slow
def test_learns_better_than_uniform_and_untrained():
    """Check that brief training gives, on new patients, a median per-patient
    perplexity below 0.8 times the vocabulary size (a uniform model) for both
    tasks, both protocols and every modality, and below the untrained model's (its
    output biases start at the code frequencies) in geometric mean over
    modalities."""
    train, test = demo_cohort(300, seed=0), demo_cohort(80, seed=1)
    untrained = HALO(HALOConfig.tiny()).fit(
        train, training=quick(epochs=1, max_steps=1, learning_rate=1e-9)
    )
    model = HALO(HALOConfig.tiny()).fit(train, training=quick(epochs=8))
    for task in TASKS:
        for protocol in ("chain", "set"):
            learnt = median_perplexity(score(model, test, task, protocol))
            start = median_perplexity(score(untrained, test, task, protocol))
            for name, codes in model.tokenizer_.codes.items():
                assert learnt[name] < 0.8 * len(codes), (task, protocol, name)
            gain = np.mean(np.log(list(learnt.values()))) - np.mean(
                np.log(list(start.values()))
            )
            assert gain < np.log(0.95), (task, protocol, learnt, start)


# --------------------------------------------------------------------------- caches


def test_cached_and_uncached_states_and_logits_are_equal(model: HALO):
    """Check that the visit level fed one visit at a time with its cache gives the
    states of one pass over the whole history, and that the code level fed one
    token at a time gives the logits of one pass over the whole visit."""
    network = model.model_
    generator = torch.Generator().manual_seed(0)
    width = network.config.n_embd
    steps = network.config.n_visit_positions + 3  # past the last learned position
    inputs = torch.randn(3, steps, width, generator=generator)
    with torch.no_grad():
        whole, _ = network.history(inputs)
        parts, cache = network.history(inputs[:, :2])
        parts = [parts]
        for t in range(2, steps):
            state, cache = network.history(inputs[:, t : t + 1], cache)
            parts.append(state)
        torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)
        context = whole[:, -1]
        tokens = torch.randint(0, model.tokenizer_.vocab_size, (3, 40),
                               generator=generator)  # fmt: skip
        hidden, _ = network.code_hidden(context, tokens)
        one, cache = network.code_hidden(context, tokens[:, :1])
        steps_out = [one]
        for i in range(1, tokens.shape[1]):
            h, cache = network.code_hidden(context, tokens[:, i : i + 1], cache)
            steps_out.append(h)
        torch.testing.assert_close(
            network.logits(torch.cat(steps_out, 1)), network.logits(hidden),
            atol=1e-5, rtol=1e-5,
        )  # fmt: skip
        # Position 0 is the visit state alone: its token changes nothing.
        other = tokens.clone()
        other[:, 0] = (tokens[:, 0] + 1) % model.tokenizer_.vocab_size
        torch.testing.assert_close(network.code_hidden(context, other)[0], hidden)


@pytest.mark.parametrize("greedy", [True, False])
def test_cached_sampling_equals_uncached_sampling(model: HALO, greedy: bool):
    """Check that generation with the key/value caches (both levels) gives the same
    patients as re-reading everything at every step, greedy and sampled with one
    seed, and that the model decides how many visits a patient has."""
    settings = SHORT.replace(greedy=greedy)
    cached = model.generate(16, generation=settings, seed=3)
    uncached = model.generate(16, generation=settings.replace(use_cache=False), seed=3)
    assert cached == uncached
    counts = [len(p.visits) for p in cached]
    assert min(counts) >= 1 and max(counts) <= settings.max_visits
    if not greedy:
        assert len(set(counts)) > 1  # the end token, not the cap, ends patients
        assert cached != model.generate(16, generation=settings, seed=4)


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("task", TASKS)
def test_changing_a_later_visit_leaves_earlier_scores_unchanged(
    model: HALO, long_patients: Cohort, task: str
):
    """Check that replacing visit 3 of each patient leaves the scores of visits 1-2
    unchanged, under both protocols, and changes those of visit 4 (the history is
    read)."""
    changed = []
    codes = model.tokenizer_.codes
    for p in long_patients:
        visits = list(p.visits)
        visits[2] = Visit({"drug": codes["drug"][:4], "lab": codes["lab"][-3:]},
                          visits[2].time)  # fmt: skip
        changed.append(Patient(p.patient_id, p.static, tuple(visits)))
    after = Cohort.from_patients(changed, long_patients.schema)
    for protocol in ("chain", "set"):
        a = score(model, long_patients, task, protocol)
        b = score(model, after, task, protocol)
        early_a, early_b = a.visit < 2, b.visit < 2
        assert early_a.sum() > 0
        np.testing.assert_array_equal(a.code[early_a], b.code[early_b])
        np.testing.assert_allclose(a.log_prob[early_a], b.log_prob[early_b], atol=1e-5)
        later_a, later_b = a.visit == 3, b.visit == 3
        np.testing.assert_array_equal(a.code[later_a], b.code[later_b])
        assert not np.allclose(a.log_prob[later_a], b.log_prob[later_b], atol=1e-4)


def test_chain_scores_equal_the_sampling_decoder(model: HALO, long_patients: Cohort):
    """Check that the chain scores of one visit's modality equal what the sampling
    path (visit state from the cached visit level, the code decoder fed token by
    token with its cache) gives the recorded codes, renormalised over the
    modality's codes; and that the first code's chain score is its set score."""
    tok, network = model.tokenizer_, model.model_
    patient, t, m = long_patients[0], 2, "diagnosis"
    k = tok.modalities.index(m)
    one = Cohort.from_patients([patient], long_patients.schema)
    chain = model.score_longitudinal(one, "chain")
    rows = (chain.visit == t) & (chain.modality == k)
    assert rows.sum() >= 1
    prefix = torch.tensor([model._fitted.state.ids(patient.static)])
    with torch.no_grad():
        inputs = network.static_vector(prefix)[:, None]
        states, cache = network.history(inputs)
        for visit in patient.visits[:t]:
            ids = torch.tensor(tok.encode_visit(visit))
            codes = ids[network.is_code[ids]]
            vector = network.visit_vectors(codes, torch.tensor([len(codes)]))
            states, cache = network.history(vector[:, None], cache)
        decoder = halo_sequences._CodeDecoder(network)
        prefix_tokens = torch.tensor([[tok.visit_open_id, tok.open_ids[m]]])
        state = decoder.start(states[:, -1], None, None, prefix_tokens, use_cache=True)
        logits = decoder.next_logits(state, None)
        expected = []
        lo, hi = tok.code_ranges[m]
        for code in patient.visits[t].events[m]:
            token = tok.code_id(m, code)
            expected.append(float(logits[0, lo:hi].log_softmax(-1)[token - lo]))
            logits = decoder.next_logits(state, torch.tensor([token]))
    np.testing.assert_allclose(chain.log_prob[rows], expected, atol=1e-5)
    first = model.score_longitudinal(one, "set")
    set_rows = (first.visit == t) & (first.modality == k)
    np.testing.assert_allclose(first.log_prob[set_rows][0], expected[0], atol=1e-5)


# --------------------------------------------------------------------------- generation


def test_generation_honours_conditions_and_limits(model: HALO):
    """Check that conditions are imposed, a typo refused, and that max_visits and
    the per-modality cap hold, in well-formed visits of in-vocabulary codes."""
    cohort = model.generate(8, conditions={"gender": "F", "age": 70.0}, seed=0)
    assert all(p.static["gender"] == "F" and p.static["age"] == 70 for p in cohort)
    with pytest.raises(ConfigError, match="gendr"):
        model.generate(2, conditions={"gendr": "F"})
    limits = GenerationConfig(max_visits=2, max_codes_per_modality=1)
    capped = model.generate(10, generation=limits, seed=1)
    assert max(len(p.visits) for p in capped) <= 2
    for patient in capped:
        for visit in patient.visits:
            assert visit.n_codes > 0
            for name, codes in visit.events.items():
                assert len(codes) == 1 and codes[0] in model.tokenizer_.codes[name]


# --------------------------------------------------------------------------- errors


def test_bad_input_is_refused(model: HALO, train: Cohort):
    """Check that bad configs, protocols and cohorts are refused, naming what is
    wrong."""
    with pytest.raises(ConfigError, match="'n_head' parameter"):
        HALOConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="'dropout' parameter"):
        HALOConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="Did you mean 'n_layer'"):
        HALOConfig.from_dict({"n_layers": 2})
    assert HALOConfig.from_dict(HALOConfig.tiny().to_dict()) == HALOConfig.tiny()
    with pytest.raises(ConfigError, match="'protocol' parameter"):
        model.score_longitudinal(train[:3], "beam")
    other = Cohort.from_patients([Patient("1", {}, (Visit({"dx": ("a",)}),))])
    with pytest.raises(SchemaError, match="HALO: the model was trained"):
        model.score_cross_modal(other, "set")
    with pytest.raises(SchemaError, match="training cohort is empty"):
        HALO(HALOConfig.tiny()).fit(train[:0])
