"""Tests of the one-pass objective: packing and masks, leakage, the encoder cache, the
end of a patient, windows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.generation import GenerationConfig
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig, blockwise, one_pass
from ehrgen.models.promptehr import tasks as task_lib
from ehrgen.models.registry import load_model
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.training import TrainingConfig


def _fit(cohort: Cohort, epochs: int = 1, **config) -> PromptEHR:
    training = TrainingConfig(epochs=epochs, batch_size=4, learning_rate=5e-3,
                              checkpoint_every_steps=None)  # fmt: skip
    config = {"objective": "one-pass", **config}
    return PromptEHR(PromptEHRConfig.tiny(**config)).fit(cohort, training=training)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return demo_cohort(24, seed=3)


@pytest.fixture(scope="module")
def model(cohort) -> PromptEHR:
    torch.manual_seed(0)
    return _fit(cohort, epochs=2)


def _longest(data: TokenizedCohort, tasks=None) -> int:
    """The patient with the most visits (among those that fit one row)."""
    if tasks is None:
        return int(np.argmax(data.visit_counts))
    from ehrgen.models.promptehr.fitting import patient_lengths

    fits = patient_lengths(data, tasks) < tasks.max_source_length
    return int(np.argmax(np.where(fits, data.visit_counts, -1)))


def _segment_losses(model: PromptEHR, data: TokenizedCohort, patient: int):
    """Per segment of the patient's packed row: (t, modality) -> summed loss."""
    item = one_pass.patient_item(
        data, patient, np.random.default_rng(0), model.tasks_, corrupt=False
    )
    (row,) = item.rows
    with torch.no_grad():
        out = model.model_(one_pass.collate_patients([item], model.tokenizer_.pad_id))
    segment = torch.as_tensor(row.decoder_segment)
    keys = zip(row.segment_visit.tolist(), row.segment_modality.tolist())
    return {
        key: float(out.token_nll[0][segment == s + 1].sum())
        for s, key in enumerate(keys)
    }


def test_packed_pass_equals_separate_passes(model, cohort):
    """Check that, for one patient, every target's loss in the packed pass equals its
    loss in a separate (history, target) pass under the same masks: the packing,
    positions and masks are right (the end of the patient and every cloze target
    included)."""
    model.model_.eval()
    data = TokenizedCohort.from_cohort(cohort, model.tokenizer_)
    patient = _longest(data, model.tasks_)
    packed = _segment_losses(model, data, patient)
    n = int(data.visit_counts[patient])
    assert n >= 3 and (n, -1) in packed
    assert sum(k >= 0 for _, k in packed) >= n  # a cloze target per present modality
    rng, tasks = np.random.default_rng(0), model.tasks_
    for (t, k), loss in packed.items():
        if k < 0:
            example = task_lib.longitudinal_example(data, patient, t, rng, tasks, False)
            if t == 0:  # the first visit's "go on" is the grammar's, not trained
                labels = example.labels.copy()
                labels[0] = task_lib.IGNORE_INDEX
                example = dataclasses.replace(example, labels=labels)
        else:
            example = task_lib.cross_modal_example(
                data, patient, t, k, rng, tasks, False
            )
        batch = task_lib.collate([example], model.tokenizer_.pad_id)
        with torch.no_grad():
            out = model.model_(batch)
        separate = float(out.loss_sum)
        assert loss == pytest.approx(separate, rel=1e-5, abs=1e-5), (t, k)


def test_a_later_visit_leaves_earlier_targets_unchanged(model, cohort):
    """Check that replacing visit 3 of a patient changes no loss of a target at
    visits 1-2 (longitudinal or cloze) nor any score of visit 2, and does change
    later ones: nothing leaks from the future."""
    model.model_.eval()
    source = [p for p in cohort if len(p.visits) >= 2]
    visits = [Visit(v.events) for v in (*source[0].visits[:2], source[1].visits[0])]
    first = Patient("a", source[0].static, tuple(visits))
    replaced = Visit(source[2].visits[1].events)
    changed = Patient("a", source[0].static, (*visits[:2], replaced))
    cohorts = [Cohort.from_patients([p], cohort.schema) for p in (first, changed)]
    losses = [
        _segment_losses(model, TokenizedCohort.from_cohort(c, model.tokenizer_), 0)
        for c in cohorts
    ]
    for (t, k), loss in losses[0].items():
        if t <= 1:
            assert losses[1][(t, k)] == pytest.approx(loss, rel=1e-6, abs=1e-6)
    # The visit replaced (its own targets) and the end of the patient change.
    assert abs(losses[1][(2, -1)] - losses[0][(2, -1)]) > 1e-3
    assert abs(losses[1][(3, -1)] - losses[0][(3, -1)]) > 1e-6
    for task in ("longitudinal", "cross_modal"):
        before, after = (getattr(model, f"score_{task}")(c, "chain") for c in cohorts)
        early = before.visit <= 1
        assert np.allclose(before.log_prob[early], after.log_prob[after.visit <= 1])


def test_cached_generation_equals_uncached(model, cohort):
    """Check that greedy generation with the encoder and decoder caches writes what
    encoding each history again writes (from scratch with continuous batching, slots
    refilled as patients end; continuing real patients; from seeds), with and
    without prompts."""
    for current in (model, _fit(cohort, use_prompts=False)):
        outputs = []
        for cache in (True, False):
            sampling = GenerationConfig(
                greedy=True,
                use_cache=cache,
                max_visits=5,
                calibrated_length=False,
                batch_size=2,
            )
            outputs.append([
                current.generate(6, generation=sampling, seed=2),
                current.continue_patients(cohort[:4], 2, sampling, seed=2),
                current.generate_from_seeds(cohort[:3], 1, sampling, seed=2),
            ])  # fmt: skip
        for with_cache, without in zip(*outputs):
            assert [p.visits for p in with_cache] == [p.visits for p in without]
        assert any(len(p.visits) > 1 for p in outputs[0][0])


def test_everyone_has_three_visits():
    """Check the end-of-patient decision: trained on a cohort where every patient
    has exactly three visits, the model generates three-visit patients without any
    length calibration."""
    full = demo_cohort(300, seed=1)
    three = Cohort.from_patients(
        [Patient(p.patient_id, p.static, p.visits[:3])
         for p in full if len(p.visits) >= 3][:120],
        full.schema,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PromptEHR(PromptEHRConfig.tiny(objective="one-pass")).fit(
        three,
        training=TrainingConfig(epochs=25, batch_size=8, learning_rate=1e-2,
                                checkpoint_every_steps=None),
    )  # fmt: skip
    assert model._fitted.length_calibration is None
    sampling = GenerationConfig(max_visits=8, calibrated_length=False)
    counts = np.diff(model.generate(100, generation=sampling, seed=0).visit_offsets)
    assert np.mean(counts == 3) >= 0.8


def test_blockwise_layers_match_bart_with_barts_masks(model):
    """Check that our layer loop over BART's modules gives BART's own encoder and
    decoder outputs when given BART's masks (bidirectional; causal)."""
    bart = model.model_.bart
    bart.eval()
    torch.manual_seed(0)
    embeds = torch.randn(2, 7, bart.config.d_model)
    positions = torch.arange(7).expand(2, -1)
    with torch.no_grad():
        ours, _ = blockwise.encoder_layers(
            bart.encoder,
            blockwise.embed(bart.encoder, embeds, positions, False),
            torch.ones(2, 7, 7, dtype=torch.bool),
        )
        theirs = bart.encoder(inputs_embeds=embeds).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-5)
        causal = torch.tril(torch.ones(7, 7, dtype=torch.bool)).expand(2, -1, -1)
        ours, _ = blockwise.decoder_layers(
            bart.decoder,
            blockwise.embed(bart.decoder, embeds, positions, False),
            causal,
            blockwise.cross_keys_values(bart.decoder, theirs),
            torch.ones(2, 7, 7, dtype=torch.bool),
        )
        decoded = bart.decoder(inputs_embeds=embeds, encoder_hidden_states=theirs)
        assert torch.allclose(ours, decoded.last_hidden_state, atol=1e-5)


@given(
    lengths=st.lists(st.integers(1, 40), min_size=0, max_size=30),
    budget=st.integers(40, 200),
)
def test_windows_train_every_target_once_within_budget(lengths, budget):
    """Check that a patient's windows train each visit exactly once (and the end
    once), each window fits the budget, and a later window re-reads at most half
    the budget of history."""
    lengths = np.array(lengths, dtype=np.int64)
    windows = one_pass.windows(lengths, budget)
    targets = [t for _, first, end in windows for t in range(first, end)]
    assert targets == list(range(len(lengths)))
    assert windows[-1][2] == len(lengths)
    for start, first, end in windows:
        assert lengths[start:end].sum() <= budget
        if first > 0:
            assert lengths[start:first].sum() <= budget // 2


def test_long_patients_are_split_into_windows(cohort):
    """Check that a patient longer than ``max_source_length`` becomes several rows
    whose targets cover every visit once, and that training and generation run on
    such patients with positions inside the table."""
    tasks = task_lib.TaskConfig(max_source_length=40, max_target_length=20)
    data = TokenizedCohort.from_cohort(cohort, _tokenizer(cohort))
    patient = _longest(data)
    item = one_pass.patient_item(data, patient, np.random.default_rng(0), tasks)
    assert len(item.rows) > 1
    visits = [
        int(t) for row in item.rows
        for t, k in zip(row.segment_visit, row.segment_modality) if k < 0
    ]  # fmt: skip
    assert visits == list(range(int(data.visit_counts[patient]) + 1))
    for row in item.rows:
        assert row.encoder_positions.max() < tasks.max_source_length
    config = PromptEHRConfig.tiny(max_position_embeddings=128, objective="one-pass")
    model = PromptEHR(config, tasks).fit(
        cohort, training=TrainingConfig(epochs=1, batch_size=4)
    )
    long = model.continue_patients(cohort, 4, GenerationConfig(max_visits=12), seed=0)
    assert all(len(p.visits) == len(q.visits) + 4 for p, q in zip(long, cohort))


def _tokenizer(cohort):
    from ehrgen.tokens import CodeTokenizer

    return CodeTokenizer.fit(cohort)


def test_a_saved_config_without_objective_loads_as_paper(model, tmp_path):
    """Check that a model folder written before the one-pass objective (no
    ``objective`` in ``config.json``) loads with the paper's objective, and that a
    one-pass model round-trips as one-pass with identical scores."""
    folder = model.save_pretrained(tmp_path / "one-pass")
    again = load_model(folder)
    assert again.config.objective == "one-pass"
    cohort = demo_cohort(6, seed=9)
    assert np.allclose(
        again.score_longitudinal(cohort).log_prob,
        model.score_longitudinal(cohort).log_prob,
    )
    paper = _fit(demo_cohort(12, seed=0), objective="paper")
    folder = paper.save_pretrained(tmp_path / "paper")
    config = json.loads((folder / "config.json").read_text())
    del config["objective"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder).config.objective == "paper"


def test_every_epoch_runs_to_its_end_when_batch_counts_vary():
    """Check that budgeted batches (whose number varies by epoch) train every batch
    of every epoch: the trainer once took an epoch shorter than the first for a stop
    inside it and ended the run."""
    from ehrgen.models.promptehr import fitting

    cohort = demo_cohort(40, seed=1)
    training = TrainingConfig(epochs=5, batch_size=4, learning_rate=5e-3,
                              checkpoint_every_steps=None)  # fmt: skip
    model = PromptEHR(PromptEHRConfig.tiny(objective="one-pass"))
    model.fit(cohort, cohort[:6], training=training)
    loader, _ = fitting.loaders(model._fitted, cohort, None, training)
    lengths = [len(loader(epoch)) for epoch in range(5)]
    assert min(lengths[1:]) < lengths[0]
    assert model.training_.epochs_completed == 5
    assert model.training_.steps == sum(lengths)
