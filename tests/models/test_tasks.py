"""Tests of PromptEHR's training examples, corruptions, slots and collation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.errors import ConfigError
from ehrgen.models.promptehr.tasks import (
    CROSS_MODAL,
    IGNORE_INDEX,
    LONGITUDINAL,
    ExampleDataset,
    TaskConfig,
    collate,
    cross_modal_example,
    example_slots,
    longitudinal_example,
    validation_slots,
)
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.tokenizer import CodeTokenizer
from tests.strategies import cohorts
from tests.tokens.samples import SCHEMA, small_cohort

CLEAN = TaskConfig(
    mask_rate=0.0,
    delete_rate=0.0,
    infill_rate=0.0,
    shuffle_rate=0.0,
    permute_rate=0.0,
    shuffle_targets=False,
    permute_target_rate=0.0,
)
RNG = np.random.default_rng  # short alias for the many generators below


@pytest.fixture(scope="module")
def data() -> TokenizedCohort:
    cohort = small_cohort()
    return TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))


def _names(data: TokenizedCohort, ids) -> str:
    """Token ids as readable names; the ignored label shows as ``_``."""
    return " ".join("_" if i == IGNORE_INDEX else data.tokenizer.tokens[i] for i in ids)


def _parse(data: TokenizedCohort, ids: np.ndarray) -> list[list[tuple[int, list]]]:
    """Check the grammar ``<bos> (<v> (<k> (code_k | <mask>)+ </k>)* </v>)* <eos>``
    and return the visits as lists of (modality, tokens)."""
    tok = data.tokenizer
    ids = ids.tolist()
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    visits, i = [], 1
    while i < len(ids) - 1:
        assert ids[i] == tok.visit_open_id, _names(data, ids)
        i, blocks = i + 1, []
        while ids[i] in data.open_ids:
            k = data.open_ids.index(ids[i])
            start, stop = tok.code_ranges[tok.modalities[k]]
            j = i + 1
            while ids[j] == tok.mask_id or start <= ids[j] < stop:
                j += 1
            assert ids[j] == data.close_ids[k] and j > i + 1, _names(data, ids)
            blocks.append((k, ids[i + 1 : j]))
            i = j + 1
        assert ids[i] == tok.visit_close_id, _names(data, ids)
        visits.append(blocks)
        i += 1
    return visits


# --------------------------------------------------------------------------- examples


def test_longitudinal_first_visit_from_nothing(data):
    """Check that t=0 has an empty history and visit 0 as its target."""
    ex = longitudinal_example(data, 0, 0, RNG(0), TaskConfig())
    assert _names(data, ex.source) == "<bos> <eos>"
    target = (
        "<v> <diagnosis> diagnosis:d1 diagnosis:d2 </diagnosis> <drug> drug:r1 </drug> "
        "</v>"
    )
    assert _names(data, ex.labels) == target
    assert _names(data, ex.decoder_input) == "<bos> " + target.rsplit(" ", 1)[0]
    assert ex.task == "longitudinal" and (ex.patient, ex.t) == (0, 0)


def test_longitudinal_next_visit(data):
    """Check that t=1 reads visit 0 and writes visit 1, in schema order."""
    ex = longitudinal_example(data, 0, 1, RNG(0), CLEAN)
    assert _names(data, ex.source) == (
        "<bos> <v> <diagnosis> diagnosis:d1 diagnosis:d2 </diagnosis> <drug> drug:r1 "
        "</drug> </v> <eos>"
    )
    assert _names(data, ex.labels) == (
        "<v> <diagnosis> diagnosis:d3 </diagnosis> <procedure> procedure:p1 "
        "</procedure> <lab> lab:l1 lab:l2 </lab> </v>"
    )
    assert ex.decoder_input.tolist() == [data.tokenizer.bos_id, *ex.labels[:-1]]


def test_longitudinal_label_modality(data):
    """Check that label_modality names the open block, -1 at structural labels."""
    ex = longitudinal_example(data, 0, 1, RNG(0), CLEAN)
    dx, px, lab = 0, 1, 3
    assert ex.label_modality.tolist() == [
        *(-1, -1, dx, dx),  # <v> <diagnosis> d3 </diagnosis>
        *(-1, px, px),  # <procedure> p1 </procedure>
        *(-1, lab, lab, lab),  # <lab> l1 l2 </lab>
        -1,  # </v>
    ]


def test_end_of_patient_target(data):
    """Check that t == n_visits reads every visit and predicts <eos> alone."""
    ex = longitudinal_example(data, 0, 3, RNG(0), CLEAN)
    assert _names(data, ex.labels) == "<eos>"
    assert _names(data, ex.decoder_input) == "<bos>"
    assert ex.label_modality.tolist() == [-1]
    assert len(_parse(data, ex.source)) == 3


def test_cross_modal_example(data):
    """Check the cloze source, the forced open token and the labels of a slot."""
    ex = cross_modal_example(data, 0, 1, "procedure", RNG(0), CLEAN)
    assert _names(data, ex.source) == (
        "<bos> <v> <diagnosis> diagnosis:d1 diagnosis:d2 </diagnosis> <drug> drug:r1 "
        "</drug> </v> <v> <diagnosis> diagnosis:d3 </diagnosis> <procedure> <mask> "
        "</procedure> <lab> lab:l1 lab:l2 </lab> </v> <eos>"
    )
    assert _names(data, ex.decoder_input) == "<bos> <procedure> procedure:p1"
    assert _names(data, ex.labels) == "_ procedure:p1 </procedure>"
    assert ex.label_modality.tolist() == [-1, 1, 1]
    by_index = cross_modal_example(data, 0, 1, 1, RNG(0), CLEAN)
    assert np.array_equal(by_index.source, ex.source)


def test_cross_modal_rejects_an_absent_modality(data):
    """Check that a modality missing from the visit is a ConfigError."""
    with pytest.raises(ConfigError, match=r"'modality' parameter.*'diagnosis', "):
        cross_modal_example(data, 0, 1, "drug", RNG(0), CLEAN)
    with pytest.raises(ConfigError, match="'modality' parameter"):
        cross_modal_example(data, 0, 1, "vitals", RNG(0), CLEAN)


def test_visit_index_is_checked(data):
    """Check that t past the end (or a bad patient) is a ConfigError."""
    with pytest.raises(ConfigError, match=r"'t' parameter .* \[0, 4\)"):
        longitudinal_example(data, 0, 4, RNG(0), CLEAN)
    with pytest.raises(ConfigError, match=r"'t' parameter .* \[0, 3\)"):
        cross_modal_example(data, 0, 3, 0, RNG(0), CLEAN)
    with pytest.raises(ConfigError, match="'patient' parameter"):
        longitudinal_example(data, 3, 0, RNG(0), CLEAN)


def test_static_features_pass_through(data):
    """Check categorical indices (missing -> cardinality) and raw numericals."""
    assert data.cardinalities == (2,)
    assert data.categorical.tolist() == [[0], [2], [1]]
    ex = longitudinal_example(data, 1, 0, RNG(0), CLEAN)
    assert ex.categorical.tolist() == [2] and math.isnan(ex.numerical[0])
    assert longitudinal_example(data, 0, 0, RNG(0), CLEAN).numerical.tolist() == [70.0]


# --------------------------------------------------------------------------- noise


def _check_corrupted(data, ex, clean, cross_k):
    """Structure intact, codes drawn from the true history, slot untouched."""
    visits, truth = _parse(data, ex.source), _parse(data, clean.source)
    assert len(visits) == len(truth)  # never a visit lost or added
    for got, true in zip(visits, truth):
        allowed = {(k, c) for k, codes in true for c in codes}
        for k, codes in got:
            mask = data.tokenizer.mask_id
            assert all((k, c) in allowed for c in codes if c != mask)
    if cross_k is not None:
        assert [b for b in visits[-1] if b[0] == cross_k] == [
            (cross_k, [data.tokenizer.mask_id])
        ]
    assert np.array_equal(ex.labels, clean.labels)  # the target is never corrupted
    assert np.array_equal(ex.decoder_input, clean.decoder_input)
    data.tokenizer.decode(ex.source)  # and the tokenizer reads it


rates = st.floats(0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    cohort=cohorts(max_patients=3),
    seed=st.integers(0, 2**32 - 1),
    rates=st.tuples(rates, rates, rates, rates, rates),
    lam=st.floats(0.0, 6.0),
    pick=st.integers(0, 10**6),
)
def test_corruption_keeps_structure(cohort, seed, rates, lam, pick):
    """Check that corruption never touches structure tokens, targets or the slot."""
    data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
    mask, delete, infill, shuffle, permute = rates
    config = TaskConfig(
        mask_rate=mask,
        delete_rate=delete,
        infill_rate=infill,
        poisson_lambda=lam,
        shuffle_rate=shuffle,
        permute_rate=permute,
        shuffle_targets=False,
        permute_target_rate=0.0,
    )
    slots = validation_slots(data)
    patient, t, task, k = slots[pick % len(slots)].tolist()
    if task == CROSS_MODAL:
        ex = cross_modal_example(data, patient, t, k, RNG(seed), config)
        clean = cross_modal_example(data, patient, t, k, RNG(0), CLEAN, False)
    else:
        ex, k = longitudinal_example(data, patient, t, RNG(seed), config), None
        clean = longitudinal_example(data, patient, t, RNG(0), CLEAN, corrupt=False)
    _check_corrupted(data, ex, clean, k)


def _only(**rate) -> TaskConfig:
    return CLEAN.replace(**rate)


def test_mask_rate_one_masks_every_code(data):
    """Check that mask_rate=1 turns every code into <mask>, structure unchanged."""
    clean = longitudinal_example(data, 0, 3, RNG(0), CLEAN).source
    got = longitudinal_example(data, 0, 3, RNG(1), _only(mask_rate=1.0)).source
    is_code = data.tokenizer.token_modality[clean] >= 0
    assert np.array_equal(got[~is_code], clean[~is_code])
    assert (got[is_code] == data.tokenizer.mask_id).all() and is_code.sum() == 8


def test_delete_rate_one_empties_visits_but_keeps_them(data):
    """Check that delete_rate=1 drops every code and block, never a visit."""
    ex = longitudinal_example(data, 0, 3, RNG(1), _only(delete_rate=1.0))
    assert _names(data, ex.source) == "<bos> <v> </v> <v> </v> <v> </v> <eos>"
    ex = cross_modal_example(data, 0, 1, "lab", RNG(1), _only(delete_rate=1.0))
    assert (
        _names(data, ex.source) == "<bos> <v> </v> <v> <lab> <mask> </lab> </v> <eos>"
    )


def test_infill_rate_one_replaces_spans(data):
    """Check infilling: a long span becomes one <mask>; a 0-length one inserts it."""
    config = _only(infill_rate=1.0, poisson_lambda=1000.0)
    visits = _parse(data, longitudinal_example(data, 2, 2, RNG(3), config).source)
    mask = data.tokenizer.mask_id
    assert visits == [[(0, [mask]), (2, [mask])], [(0, [mask]), (3, [mask])]]
    config = _only(infill_rate=1.0, poisson_lambda=0.0)
    got = _parse(data, longitudinal_example(data, 2, 2, RNG(3), config).source)
    truth = _parse(data, longitudinal_example(data, 2, 2, RNG(3), CLEAN).source)
    for got_visit, true_visit in zip(got, truth):
        for (k, codes), (true_k, true_codes) in zip(got_visit, true_visit):
            assert k == true_k and codes.count(mask) == 1
            assert [c for c in codes if c != mask] == true_codes


def test_shuffle_rate_one_shuffles_within_blocks(data):
    """Check that shuffle_rate=1 permutes codes inside each block, and only there."""
    truth = _parse(data, longitudinal_example(data, 2, 1, RNG(0), CLEAN).source)
    orders = set()
    for seed in range(5):
        ex = longitudinal_example(data, 2, 1, RNG(seed), _only(shuffle_rate=1.0))
        visits = _parse(data, ex.source)
        assert [(k, sorted(c)) for k, c in visits[0]] == [
            (k, sorted(c)) for k, c in truth[0]
        ]
        orders.add(tuple(visits[0][0][1]))
    assert len(orders) > 1  # 8! orders: five seeds agreeing would mean no shuffle


def test_permute_rate_one_permutes_blocks(data):
    """Check that permute_rate=1 reorders the blocks of a visit, codes intact."""
    truth = _parse(data, longitudinal_example(data, 0, 2, RNG(0), CLEAN).source)
    orders = set()
    for seed in range(8):
        ex = longitudinal_example(data, 0, 2, RNG(seed), _only(permute_rate=1.0))
        visits = _parse(data, ex.source)
        assert [sorted(v) for v in visits] == [sorted(v) for v in truth]
        orders.add(tuple(k for k, _ in visits[1]))
    assert len(orders) > 1


def test_permute_moves_the_slot_with_its_block(data):
    """Check that the cloze slot can move under permutation, still uncorrupted."""
    positions = set()
    for seed in range(10):
        config = _only(permute_rate=1.0, mask_rate=1.0)
        ex = cross_modal_example(data, 0, 1, "lab", RNG(seed), config)
        last = _parse(data, ex.source)[-1]
        assert (3, [data.tokenizer.mask_id]) in last
        positions.add([k for k, _ in last].index(3))
    assert len(positions) > 1


# --------------------------------------------------------------------------- lengths


def test_long_history_loses_oldest_visits_whole(data):
    """Check that a too-long history is cut at visit boundaries, oldest first."""
    full = longitudinal_example(data, 0, 3, RNG(0), CLEAN).source
    lengths = [9, 12, 5]  # the three visits of patient 0, serialised
    assert len(full) == 2 + sum(lengths)
    config = CLEAN.replace(max_source_length=2 + 12 + 5)
    ex = longitudinal_example(data, 0, 3, RNG(0), config)
    assert np.array_equal(ex.source, np.concatenate([full[:1], full[10:]]))
    ex = longitudinal_example(data, 0, 3, RNG(0), config.replace(max_source_length=18))
    assert np.array_equal(ex.source, np.concatenate([full[:1], full[22:]]))


def test_last_visit_is_cut_within_its_longest_block(data):
    """Check that a last visit too long alone loses codes from its longest block."""
    config = CLEAN.replace(max_source_length=10)
    ex = longitudinal_example(data, 0, 1, RNG(0), config)
    assert _names(data, ex.source) == (
        "<bos> <v> <diagnosis> diagnosis:d1 </diagnosis> <drug> drug:r1 </drug> </v> "
        "<eos>"
    )
    ex = longitudinal_example(data, 0, 2, RNG(0), CLEAN.replace(max_source_length=13))
    assert _names(data, ex.source) == (
        "<bos> <v> <diagnosis> diagnosis:d3 </diagnosis> <procedure> procedure:p1 "
        "</procedure> <lab> lab:l1 </lab> </v> <eos>"
    )
    config = CLEAN.replace(max_source_length=8)  # the slot alone still fits
    ex = cross_modal_example(data, 2, 0, "drug", RNG(0), config)
    assert _names(data, ex.source) == "<bos> <v> <drug> <mask> </drug> </v> <eos>"


def test_long_targets_keep_first_codes_and_closers(data):
    """Check target truncation for both tasks, within max_target_length."""
    config = CLEAN.replace(max_target_length=8)
    ex = longitudinal_example(data, 0, 1, RNG(0), config)
    assert _names(data, ex.labels) == (
        "<v> <diagnosis> diagnosis:d3 </diagnosis> <procedure> procedure:p1 "
        "</procedure> </v>"
    )
    ex = longitudinal_example(data, 2, 0, RNG(0), config)
    assert _names(data, ex.labels) == (
        "<v> <diagnosis> diagnosis:c0 diagnosis:c1 diagnosis:c2 diagnosis:c3 "
        "</diagnosis> </v>"
    )
    assert ex.label_modality.tolist() == [-1, -1, 0, 0, 0, 0, 0, -1]
    ex = cross_modal_example(data, 2, 0, "diagnosis", RNG(0), config)
    assert len(ex.decoder_input) == len(ex.labels) == 8
    assert _names(data, ex.labels) == "_ " + " ".join(
        [f"diagnosis:c{i}" for i in range(6)] + ["</diagnosis>"]
    )


# --------------------------------------------------------------------------- epochs


def test_same_seed_same_examples_other_seed_differs(data):
    """Check that examples depend on (seed, epoch, index) only."""
    config = TaskConfig(mask_rate=0.5, infill_rate=0.5)
    slots = example_slots(data, 0, 3, config)

    def sources(seed, epoch, order):
        dataset = ExampleDataset(data, slots, config, seed=seed, epoch=epoch)
        return {i: dataset[i].source.tolist() for i in order}

    forward = sources(3, 0, range(len(slots)))
    assert forward == sources(3, 0, reversed(range(len(slots))))
    assert forward != sources(4, 0, range(len(slots)))
    assert forward != sources(3, 1, range(len(slots)))


def test_example_slots_are_deterministic(data):
    """Check that slots are a function of (seed, epoch)."""
    config = TaskConfig()
    first = example_slots(data, 2, 5, config)
    assert np.array_equal(first, example_slots(data, 2, 5, config))
    others = [example_slots(data, e, s, config) for e, s in ((3, 5), (2, 6))]
    assert all(not np.array_equal(first, other) for other in others)


def _many_patients(n_patients: int) -> TokenizedCohort:
    """n patients of two visits, each visit with diagnosis and lab blocks."""
    cohort = Cohort.from_patients(
        [Patient("x", {}, (Visit({"diagnosis": ["a"], "lab": ["b"]}),))], SCHEMA
    )
    tokenizer = CodeTokenizer.fit(cohort)
    n_visits = 2 * n_patients
    dx, lab = tokenizer.code_id("diagnosis", "a"), tokenizer.code_id("lab", "b")
    return TokenizedCohort(
        tokenizer,
        np.tile([dx, lab], n_visits),
        np.tile([0, 3], n_visits),
        np.arange(0, 2 * n_visits + 1, 2),
        np.arange(0, n_visits + 1, 2),
        np.zeros((n_patients, 1)),
        np.zeros((n_patients, 1)),
        (2,),
    )


def test_example_slots_counts_and_shares():
    """Check n + 1 slots per patient, the task share (end-of-patient slots kept at
    the longitudinal share, so that ending is not over-trained) and modality draws."""
    data = _many_patients(3000)
    slots = example_slots(data, 0, 0, TaskConfig(longitudinal_share=0.3))
    assert slots.shape == (3000 * 3, 4) and slots.dtype == np.int64
    patient, t, task, modality = slots.T
    assert np.array_equal(np.bincount(patient), np.full(3000, 3))
    cross = task == CROSS_MODAL
    assert (task[t == 2] == LONGITUDINAL).all()  # an end slot is longitudinal...
    assert abs((t == 2).mean() - 0.3 / 3) < 0.01  # ...kept at the longitudinal share
    assert abs(cross.mean() - 0.7) < 0.03
    assert abs((~cross[t < 2]).mean() - 0.3 * 2 / (3 - 0.3)) < 0.03
    assert set(modality[cross].tolist()) == {0, 3}
    assert abs((modality[cross] == 0).mean() - 0.5) < 0.03
    assert (modality[~cross] == -1).all()
    for share, expected in ((1.0, 0), (0.0, 9000)):
        config = TaskConfig(longitudinal_share=share)
        assert example_slots(data, 1, 1, config)[:, 2].sum() == expected


def test_example_slots_modality_is_present(data):
    """Check that a cross-modal slot's modality is one of its visit's."""
    slots = example_slots(data, 0, 0, TaskConfig(longitudinal_share=0.0))
    for patient, t, _, k in slots[slots[:, 2] == CROSS_MODAL].tolist():
        visit = data.visit_offsets[patient] + t
        assert k in [m for m, _ in data.visit_blocks(visit)]
        cross_modal_example(data, patient, t, k, RNG(0), CLEAN)  # buildable


def test_validation_slots(data):
    """Check every longitudinal and every (visit, modality) slot, sorted."""
    slots = validation_slots(data)
    n_blocks = len(data.block_modality)
    assert len(slots) == 3 + 6 + n_blocks and n_blocks == 11  # P + V + blocks
    assert (slots[:, 2] == CROSS_MODAL).sum() == n_blocks
    assert np.array_equal(slots, slots[np.lexsort(slots.T[::-1])])
    assert slots[:4].tolist() == [
        [0, 0, 0, -1],
        [0, 0, 1, 0],
        [0, 0, 1, 2],
        [0, 1, 0, -1],
    ]
    subset = validation_slots(data, seed=1, max_slots=5)
    assert len(subset) == 5
    assert {tuple(r) for r in subset} <= {tuple(r) for r in slots.tolist()}
    with pytest.raises(ConfigError, match="'max_slots' parameter of validation_slots"):
        validation_slots(data, max_slots=-1)


def test_dataset_rejects_bad_slots(data):
    """Check that a slot table of the wrong shape is a ConfigError."""
    with pytest.raises(ConfigError, match="'slots' parameter of ExampleDataset"):
        ExampleDataset(data, np.zeros((3, 3)), CLEAN, seed=0)


def test_collate_pads_right(data):
    """Check shapes, padding values, masks and the static features of a batch."""
    slots = validation_slots(data)
    dataset = ExampleDataset(data, slots, CLEAN, seed=0, corrupt=False)
    examples = [dataset[0], dataset[len(slots) - 1], dataset[5]]
    batch = collate(examples, pad_id=data.tokenizer.pad_id)
    lengths = [len(e.source) for e in examples]
    targets = [len(e.labels) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert (
        batch["labels"].shape == batch["decoder_input_ids"].shape == (3, max(targets))
    )
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["decoder_attention_mask"].sum(1).tolist() == targets
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == data.tokenizer.pad_id).all()
    dpad = batch["decoder_attention_mask"] == 0
    assert (batch["labels"][dpad] == IGNORE_INDEX).all()
    assert (batch["label_modality"][dpad] == -1).all()
    assert batch["input_ids"][0, : lengths[0]].tolist() == examples[0].source.tolist()
    for key in ("input_ids", "labels", "label_modality", "categorical", "patient"):
        assert batch[key].dtype == torch.long
    assert batch["numerical"].dtype == torch.float32
    assert batch["numerical"].shape == (3, 1) and batch["categorical"].shape == (3, 1)
    assert batch["patient"].tolist() == [e.patient for e in examples]
    assert torch.isnan(batch["numerical"][1, 0])  # patient c has no age


def test_collate_in_a_data_loader(data):
    """Check that the dataset and collate work through a torch DataLoader."""
    dataset = ExampleDataset(
        data, example_slots(data, 0, 0, TaskConfig()), TaskConfig(), 0
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, collate_fn=lambda b: collate(b, data.tokenizer.pad_id)
    )
    assert sum(len(b["patient"]) for b in loader) == len(dataset)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mask_rate", 1.5),
        ("delete_rate", -0.1),
        ("infill_rate", float("nan")),
        ("shuffle_rate", True),
        ("permute_rate", "0.3"),
        ("permute_target_rate", 1.5),
        ("longitudinal_share", 2),
        ("poisson_lambda", -1.0),
        ("max_source_length", 7),
        ("max_source_length", 512.0),
        ("max_target_length", 4),
    ],
)
def test_task_config_validation(field, value):
    """Check that each invalid field is named in a ConfigError."""
    with pytest.raises(ConfigError, match=f"The '{field}' parameter of TaskConfig"):
        TaskConfig(**{field: value})


@given(
    share=st.floats(0, 1),
    mask=st.floats(0, 1),
    lam=st.floats(0, 100),
    source=st.integers(8, 4096),
    target=st.integers(5, 4096),
)
def test_task_config_round_trip(share, mask, lam, source, target):
    """Check that to_dict -> JSON -> from_dict gives the same config."""
    config = TaskConfig(
        longitudinal_share=share,
        mask_rate=mask,
        poisson_lambda=lam,
        max_source_length=source,
        max_target_length=target,
    )
    assert TaskConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_task_config_rejects_unknown_keys():
    """Check that a misspelt key is refused with a did-you-mean hint."""
    with pytest.raises(ConfigError, match="Did you mean 'mask_rate'"):
        TaskConfig.from_dict({"mask_rat": 0.2})


def test_targets_are_shuffled_within_blocks_in_training_only(data):
    """Check that training targets list each block's codes in a random order, and
    validation targets (corrupt=False) in the recorded order."""
    config = CLEAN.replace(shuffle_targets=True)
    clean = longitudinal_example(data, 2, 0, RNG(0), config, corrupt=False)
    orders = set()
    for seed in range(20):
        ex = longitudinal_example(data, 2, 0, RNG(seed), config)
        assert sorted(ex.labels.tolist()) == sorted(clean.labels.tolist())
        assert ex.labels[:2].tolist() == clean.labels[:2].tolist()  # <v> <diagnosis>
        orders.add(tuple(ex.labels.tolist()))
    assert len(orders) > 1


def test_target_blocks_are_permuted_in_training_only(data):
    """Check that permute_target_rate=1 puts a target visit's blocks in several
    orders, codes and label modalities moving with their block, and that
    validation targets (corrupt=False) keep the schema's order."""
    config, tok = CLEAN.replace(permute_target_rate=1.0), data.tokenizer

    def target(ex):
        return _parse(data, np.array([tok.bos_id, *ex.labels, tok.eos_id]))[0]

    truth = target(longitudinal_example(data, 0, 1, RNG(0), config, corrupt=False))
    assert [k for k, _ in truth] == [0, 1, 3]
    firsts = set()
    for seed in range(12):
        ex = longitudinal_example(data, 0, 1, RNG(seed), config)
        visit = target(ex)
        assert sorted(visit) == sorted(truth)
        firsts.add(visit[0][0])
        assert np.array_equal(ex.decoder_input[1:], ex.labels[:-1])
    assert firsts == {0, 1, 3}  # every modality of the visit opens it sometimes
