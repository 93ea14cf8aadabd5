"""Training examples for PromptEHR: the two imputation prompts and their corruptions.

From the paper (METHOD.md): longitudinal imputation as a prefix prompt (visits
``0..t-1`` in, visit ``t`` out; ``<eos>`` out past the last visit, so the model learns
when a patient ends); cross-modal imputation as a cloze prompt (visit ``t`` with
modality ``k`` replaced by ``<k> <mask> </k>`` in; ``<k>`` forced, then k's codes and
``</k>`` out); masking, deletion, Poisson(3) span infilling, code shuffling and
modality permutation of the encoder context only.

Ours: the rates (the paper gives none); shuffling and infilling stay within a modality
block, so the context stays well formed; a block emptied by deletion is dropped, but
its visit stays (as ``<v> </v>`` at worst), so the count of past visits is never
corrupted. Longitudinal *targets* are reordered too (never corrupted otherwise): the
codes within each block (``shuffle_targets``) and, in ``permute_target_rate`` of the
visits, the order of the blocks. With the schema's order alone, the decoder would only
ever see ``<bos> <v> <diagnosis>``, and the codes of a later modality only after the
earlier blocks of their visit; permuted targets make ``<bos> <v> <m> c1 ... cj`` a
prefix seen in training for every modality m, the prefix on which chain scoring
conditions m's codes (visits 1..t-1 and m's earlier codes only, as the paper's lpl
asks). Draws are seeded by ``(seed, epoch, index)``, not by worker or process.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ehrgen._config import ConfigMixin, check
from ehrgen.tokens.encoded import TokenizedCohort

__all__ = [
    "CROSS_MODAL",
    "IGNORE_INDEX",
    "LONGITUDINAL",
    "TASKS",
    "Example",
    "ExampleDataset",
    "TaskConfig",
    "TokenizedCohort",
    "collate",
    "cross_modal_example",
    "example_slots",
    "longitudinal_example",
    "validation_slots",
]

TASKS: tuple[str, ...] = ("longitudinal", "cross_modal")
# Task codes of a slot row; tokens.batching reads any code but 0 (LONGITUDINAL) as a
# source that holds the rest of visit t.
LONGITUDINAL, CROSS_MODAL = 0, 1
IGNORE_INDEX = -100  # label value that the loss skips (torch's default)
_RATES = ("longitudinal_share", "mask_rate", "delete_rate", "infill_rate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig(ConfigMixin):
    """Which examples to draw and how to corrupt their encoder side.

    Example:
        >>> TaskConfig.from_dict({"mask_rate": 0.3}) == TaskConfig(mask_rate=0.3)
        True
    """

    # Both prompts matter to the paper's use cases; it gives no ratio.
    longitudinal_share: float = 0.5
    # BART's token-masking rate.
    mask_rate: float = 0.15
    delete_rate: float = 0.05
    # Per modality block; span lengths ~ Poisson(poisson_lambda), as in the paper.
    infill_rate: float = 0.1
    poisson_lambda: float = 3.0
    # Codes of a modality form a set, so their order carries nothing: shuffle often.
    shuffle_rate: float = 0.5
    # Per visit: the modality order is fixed by the schema, so permute less often.
    permute_rate: float = 0.3
    # Tokens, <bos> and <eos> included; the model's prompt vectors come on top.
    max_source_length: int = 512
    # Decoder tokens; a MIMIC-III visit averages ~90 codes, longer ones are cut.
    max_target_length: int = 128
    # Shuffle each target block's codes in training examples: a modality is a set,
    # so the model should not learn the recorded order, and its first-code
    # distribution then spreads over the whole set (the "set" scoring protocol).
    shuffle_targets: bool = True
    # Per longitudinal target visit: the chance that its modality blocks come in a
    # random order (see the module docstring), so that every modality is seen
    # opening a visit; the other targets keep the schema's order.
    permute_target_rate: float = 0.5
    # One-pass objective only (PromptEHRConfig.objective): the share of visits that
    # also give a cross-modal (cloze) target, on a random modality of the visit. The
    # paper's objective draws each example's task with ``longitudinal_share``.
    cloze_rate: float = 0.5

    def __post_init__(self) -> None:
        name = type(self).__name__
        rates = ("shuffle_rate", "permute_rate", "permute_target_rate", "cloze_rate")
        for field in (*_RATES, *rates):
            value = getattr(self, field)
            check(_is_real(value) and 0 <= value <= 1, name, field, "in [0, 1]", value)
        lam = self.poisson_lambda
        ok = _is_real(lam) and 0 <= lam <= 1e6
        check(ok, name, "poisson_lambda", "a number in [0, 1e6]", lam)
        # The smallest source is <bos> <v> <k> <mask> </k> </v> <eos> plus one code;
        # the smallest visit target is <v> <k> code </k> </v>.
        for field, least in (("max_source_length", 8), ("max_target_length", 5)):
            value = getattr(self, field)
            ok = _is_real(value, integral=True) and value >= least
            check(ok, name, field, f"an int >= {least}", value)


def _is_real(value: Any, integral: bool = False) -> bool:
    kinds = (int, np.integer) if integral else (int, float, np.integer, np.floating)
    real = isinstance(value, kinds) and not isinstance(value, bool)
    return real and math.isfinite(value)


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One training example; every array is int64 except ``numerical``.

    ``labels[i]`` is what the decoder predicts after reading ``decoder_input[:i+1]``
    (``IGNORE_INDEX`` where nothing is learnt); ``label_modality[i]`` is the index of
    the modality whose block is open there, -1 at structural positions.
    """

    source: np.ndarray
    decoder_input: np.ndarray
    labels: np.ndarray
    label_modality: np.ndarray
    categorical: np.ndarray
    numerical: np.ndarray
    patient: int
    t: int
    task: str

    def __post_init__(self) -> None:
        for name in ("source", "decoder_input", "labels", "label_modality"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.int64))


class _Block(NamedTuple):
    modality: int
    codes: np.ndarray
    slot: bool = False  # the cloze slot <k> <mask> </k>: never corrupted or cut


def longitudinal_example(
    data: TokenizedCohort,
    patient: int,
    t: int,
    rng: np.random.Generator,
    config: TaskConfig,
    corrupt: bool = True,
) -> Example:
    """Predict visit ``t`` from visits ``0..t-1`` (``<eos>`` when past the last one).

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> cohort = Cohort.from_patients([Patient("1", {}, (Visit({"lab": ["hb"]}),))])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> rng = np.random.default_rng(0)
        >>> ex = longitudinal_example(data, 0, 0, rng, TaskConfig())
        >>> [data.tokenizer.tokens[i] for i in ex.labels]
        ['<v>', '<lab>', 'lab:hb', '</lab>', '</v>']
    """
    n = _check_visit(data, patient, t, "longitudinal_example", inclusive=True)
    tok = data.tokenizer
    source = _encoder_source(data, patient, t, None, rng, config, corrupt)
    if t == n:
        target, modality = np.array([tok.eos_id]), np.array([-1])
    else:
        blocks = _visit(data, data.visit_offsets[patient] + t)
        if corrupt and config.shuffle_targets:
            blocks = [b._replace(codes=rng.permutation(b.codes)) for b in blocks]
        if corrupt:
            blocks = _permute_blocks(blocks, rng, config.permute_target_rate)
        blocks = _keep_first_codes(blocks, config.max_target_length)
        target, modality = _serialise(data, blocks)
    decoder_input = np.concatenate([[tok.bos_id], target[:-1]])
    features = (data.categorical[patient].copy(), data.numerical[patient].copy())
    arrays = (source, decoder_input, target, modality, *features)
    return Example(*arrays, patient=patient, t=t, task="longitudinal")


def cross_modal_example(
    data: TokenizedCohort,
    patient: int,
    t: int,
    modality: int | str,
    rng: np.random.Generator,
    config: TaskConfig,
    corrupt: bool = True,
) -> Example:
    """Predict the codes of ``modality`` (name or index) in visit ``t`` from the rest.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> visit = Visit({"drug": ["x"], "lab": ["hb"]})
        >>> cohort = Cohort.from_patients([Patient("1", {}, (visit,))])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> rng = np.random.default_rng(0)
        >>> ex = cross_modal_example(data, 0, 0, "lab", rng, TaskConfig(), False)
        >>> " ".join(data.tokenizer.tokens[i] for i in ex.source)
        '<bos> <v> <drug> drug:x </drug> <lab> <mask> </lab> </v> <eos>'
    """
    _check_visit(data, patient, t, "cross_modal_example", inclusive=False)
    names, tok = data.tokenizer.modalities, data.tokenizer
    blocks = _visit(data, data.visit_offsets[patient] + t)
    present = [b.modality for b in blocks]
    k = names.index(modality) if modality in names else modality
    ok = _is_real(k, integral=True) and k in present
    expected = f"a modality of visit {t}: one of {[names[m] for m in present]}"
    check(ok, "cross_modal_example", "modality", expected + " or its index", modality)
    slot = _Block(k, np.array([tok.mask_id]), slot=True)
    partial = [slot if b.modality == k else b for b in blocks]
    source = _encoder_source(data, patient, t, partial, rng, config, corrupt)
    # The forced <k> takes one decoder position, the close token another.
    codes = blocks[present.index(k)].codes
    if corrupt and config.shuffle_targets:
        codes = rng.permutation(codes)
    codes = codes[: config.max_target_length - 2]
    target = np.concatenate([codes, [data.close_ids[k]]])
    decoder_input = np.concatenate([[tok.bos_id, data.open_ids[k]], codes])
    labels = np.concatenate([[IGNORE_INDEX], target])  # <k> is given, not predicted
    label_modality = np.concatenate([[-1], np.full(len(target), k)])
    features = (data.categorical[patient].copy(), data.numerical[patient].copy())
    arrays = (source, decoder_input, labels, label_modality, *features)
    return Example(*arrays, patient=patient, t=t, task="cross_modal")


def _check_visit(
    data: TokenizedCohort, patient: int, t: int, owner: str, inclusive: bool
) -> int:
    check(0 <= patient < len(data), owner, "patient", f"in [0, {len(data)})", patient)
    stop = int(data.visit_counts[patient]) + int(inclusive)
    check(0 <= t < stop, owner, "t", f"in [0, {stop}) for this patient", t)
    return stop - int(inclusive)


def _visit(data: TokenizedCohort, v: int) -> list[_Block]:
    return [_Block(m, codes) for m, codes in data.visit_blocks(int(v))]


def _serialise(data: TokenizedCohort, blocks: list[_Block]) -> tuple[np.ndarray, Any]:
    """``<v> <k> codes </k> ... </v>`` as int64 ids, and each token's label modality.

    The label modality is -1 for ``<v>``, ``</v>`` and open tokens (no block is open
    when they are predicted), the block's modality for its codes and close token.
    """
    tok, ids, modality = data.tokenizer, [[data.tokenizer.visit_open_id]], [[-1]]
    for b in blocks:
        ids += [[data.open_ids[b.modality]], b.codes, [data.close_ids[b.modality]]]
        modality += [[-1], np.full(len(b.codes) + 1, b.modality)]
    ids.append([tok.visit_close_id])
    modality.append([-1])
    return np.concatenate(ids).astype(np.int64), np.concatenate(modality)


def _keep_first_codes(blocks: list[_Block], budget: int) -> list[_Block]:
    """Cut a visit target to ``budget`` tokens, keeping its first codes."""
    room, kept = budget - 2, []  # <v> and </v> always stay
    for b in blocks:
        if room < 3:  # an open, a code and a close
            break
        take = min(len(b.codes), room - 2)
        kept.append(b._replace(codes=b.codes[:take]))
        room -= take + 2
    return kept


def _trim_to_fit(blocks: list[_Block], budget: int) -> list[_Block]:
    """Cut codes from the end of the longest block until the visit fits ``budget``;
    drop a block cut to nothing. The cloze slot is never cut (and always fits)."""
    blocks, excess = list(blocks), 2 + sum(len(b.codes) + 2 for b in blocks) - budget
    while excess > 0:
        sizes = np.array([-1 if b.slot else len(b.codes) for b in blocks] + [-1])
        i = int(np.argmax(sizes))
        if sizes[i] < 0:
            break
        # Cut down to the next-longest block at once, so the loop stays short.
        runner_up = max(int(np.partition(sizes, -2)[-2]), 0)
        cut = max(1, min(excess, sizes[i] - runner_up))
        if cut >= sizes[i]:
            excess -= sizes[i] + 2
            del blocks[i]
        else:
            blocks[i] = blocks[i]._replace(codes=blocks[i].codes[:-cut])
            excess -= cut
    return blocks


def _encoder_source(
    data: TokenizedCohort,
    patient: int,
    t: int,
    partial: list[_Block] | None,
    rng: np.random.Generator,
    config: TaskConfig,
    corrupt: bool,
) -> np.ndarray:
    """``<bos>`` + visits ``0..t-1`` (+ the partial visit ``t``) + ``<eos>``.

    Visits are corrupted newest first and kept while they fit: a long history loses its
    oldest visits whole; the newest piece always stays, cut within blocks if need be.
    """
    tok, budget = data.tokenizer, config.max_source_length - 2  # <bos>, <eos>
    first = int(data.visit_offsets[patient])
    history = (_visit(data, v) for v in range(first + t - 1, first - 1, -1))
    # Lazy: visits older than what fits are never built nor corrupted.
    visits = itertools.chain([partial] if partial is not None else [], history)
    pieces: list[np.ndarray] = []
    for blocks in visits:
        if corrupt:
            blocks = _corrupt_visit(blocks, rng, config, tok.mask_id)
        if not pieces:
            blocks = _trim_to_fit(blocks, budget)
        piece = _serialise(data, blocks)[0]
        if len(piece) > budget:
            break
        pieces.append(piece)
        budget -= len(piece)
    return np.concatenate([[tok.bos_id], *reversed(pieces), [tok.eos_id]])


def _corrupt_visit(
    blocks: list[_Block], rng: np.random.Generator, config: TaskConfig, mask_id: int
) -> list[_Block]:
    """Corrupt each block's codes, drop emptied blocks, maybe permute the blocks."""
    out = []
    for b in blocks:
        codes = b.codes if b.slot else _corrupt_codes(b.codes, rng, config, mask_id)
        if len(codes):
            out.append(b._replace(codes=codes))
    return _permute_blocks(out, rng, config.permute_rate)


def _permute_blocks(
    blocks: list[_Block], rng: np.random.Generator, rate: float
) -> list[_Block]:
    """The blocks in a random order with probability ``rate``; a zero rate or a
    single block draws nothing."""
    if rate > 0 and len(blocks) > 1 and rng.random() < rate:
        return [blocks[i] for i in rng.permutation(len(blocks))]
    return blocks


def _corrupt_codes(
    codes: np.ndarray, rng: np.random.Generator, config: TaskConfig, mask_id: int
) -> np.ndarray:
    """Shuffle, mask, delete, then infill one span; zero rates draw nothing."""
    if config.shuffle_rate > 0 and rng.random() < config.shuffle_rate:
        codes = rng.permutation(codes)
    if config.mask_rate > 0:
        codes = np.where(rng.random(len(codes)) < config.mask_rate, mask_id, codes)
    if config.delete_rate > 0:
        codes = codes[rng.random(len(codes)) >= config.delete_rate]
    if config.infill_rate > 0 and rng.random() < config.infill_rate:
        # A 0-length span inserts a <mask>, as in BART's text infilling: the model
        # learns that a <mask> may hide nothing.
        span = min(int(rng.poisson(config.poisson_lambda)), len(codes))
        start = int(rng.integers(0, len(codes) - span + 1))
        codes = np.concatenate([codes[:start], [mask_id], codes[start + span :]])
    return np.asarray(codes, dtype=np.int64)


def example_slots(
    data: TokenizedCohort, epoch: int, seed: int, config: TaskConfig
) -> np.ndarray:
    """(N, 4) int64 rows ``(patient, t, task_code, modality)``, t in ``0..n_visits``.

    ``modality`` is -1 for longitudinal rows. The end-of-patient slot is kept with
    the same probability as any other longitudinal slot, and otherwise becomes a
    cross-modal slot on a random visit: were it always kept, "end here" would be
    trained more often than "go on", and generated patients would end too early.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> visits = (Visit({"lab": ["hb"]}), Visit({"lab": ["na"]}))
        >>> cohort = Cohort.from_patients([Patient("1", {}, visits)])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> example_slots(data, 0, 0, TaskConfig(longitudinal_share=0.0))[:, 2].tolist()
        [1, 1, 1]
    """
    patient, t = _all_positions(data)
    rng = np.random.default_rng([seed, epoch])
    draw_task, draw_modality = rng.random(len(t)), rng.random(len(t))
    draw_visit = rng.random(len(t))
    counts = data.visit_counts[patient]
    cross = draw_task < 1 - config.longitudinal_share
    end = cross & (t == counts)  # becomes cross-modal on a random visit
    t = np.where(end, np.minimum((draw_visit * counts).astype(np.int64), counts - 1), t)
    modality = np.full(len(t), -1, dtype=np.int64)
    visit = data.visit_offsets[patient[cross]] + t[cross]
    first = data.visit_block_offsets[visit]
    n_blocks = data.visit_block_offsets[visit + 1] - first
    # A uniform block of the visit is a uniform present modality (one block each).
    pick = np.minimum((draw_modality[cross] * n_blocks).astype(np.int64), n_blocks - 1)
    modality[cross] = data.block_modality[first + pick]
    return np.stack([patient, t, cross.astype(np.int64), modality], axis=1)


def validation_slots(
    data: TokenizedCohort, seed: int = 0, max_slots: int | None = None
) -> np.ndarray:
    """Every longitudinal slot and every (visit, present modality) cross-modal slot.

    Rows are sorted by (patient, t, task, modality). ``max_slots`` keeps a random
    subset of that many rows (drawn with ``seed``) to bound validation time. Build
    the examples with ``corrupt=False`` for a deterministic perplexity.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> visit = Visit({"diagnosis": ["a"], "drug": ["x"]})
        >>> cohort = Cohort.from_patients([Patient("1", {}, (visit,))])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> validation_slots(data).tolist()
        [[0, 0, 0, -1], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, -1]]
    """
    if max_slots is not None:
        ok = _is_real(max_slots, integral=True) and max_slots >= 0
        check(ok, "validation_slots", "max_slots", "an int >= 0 or None", max_slots)
    patient, t = _all_positions(data)
    longitudinal = np.stack([patient, t, 0 * t, 0 * t - 1], axis=1)
    n_visits = len(data.visit_block_offsets) - 1
    block_visit = np.repeat(np.arange(n_visits), np.diff(data.visit_block_offsets))
    p = np.repeat(np.arange(len(data)), data.visit_counts)[block_visit]
    v = block_visit - data.visit_offsets[p]
    m = data.block_modality.astype(np.int64)
    rows = np.concatenate([longitudinal, np.stack([p, v, 0 * m + 1, m], axis=1)])
    if max_slots is not None and max_slots < len(rows):
        rows = rows[np.random.default_rng(seed).choice(len(rows), max_slots, False)]
    return rows[np.lexsort(rows.T[::-1])]


def _all_positions(data: TokenizedCohort) -> tuple[np.ndarray, np.ndarray]:
    """(patient, t) for t in 0..n_visits of each patient, vectorised."""
    per_patient = data.visit_counts + 1
    patient = np.repeat(np.arange(len(data)), per_patient)
    start = np.cumsum(per_patient) - per_patient
    return patient, np.arange(len(patient)) - np.repeat(start, per_patient)


@dataclasses.dataclass(eq=False)
class ExampleDataset(torch.utils.data.Dataset):
    """The examples of a slot table, built on the fly.

    Example ``i`` draws from ``np.random.default_rng([seed, epoch, i, 1])``, so it is
    the same whatever the worker or process that builds it.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> cohort = Cohort.from_patients([Patient("1", {}, (Visit({"lab": ["hb"]}),))])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> slots, config = validation_slots(data), TaskConfig()
        >>> dataset = ExampleDataset(data, slots, config, seed=7, corrupt=False)
        >>> len(dataset), dataset[1].task
        (3, 'cross_modal')
    """

    data: TokenizedCohort
    slots: np.ndarray
    config: TaskConfig
    seed: int
    epoch: int = 0
    corrupt: bool = True

    def __post_init__(self) -> None:
        self.slots = np.asarray(self.slots, dtype=np.int64)
        ok, shape = self.slots.ndim == 2 and self.slots.shape[1] == 4, self.slots.shape
        check(ok, "ExampleDataset", "slots", "an (N, 4) array", f"shape {shape}")

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> Example:
        i = range(len(self))[i]  # negative indices and IndexError, as for a list
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        patient, t, task, modality = self.slots[i].tolist()
        args = (rng, self.config, self.corrupt)
        if task == CROSS_MODAL:
            return cross_modal_example(self.data, patient, t, modality, *args)
        return longitudinal_example(self.data, patient, t, *args)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of examples into tensors.

    Returns:
        (B, S) ``input_ids``, ``attention_mask``; (B, T) ``decoder_input_ids``,
        ``decoder_attention_mask``, ``labels`` (-100 at padding), ``label_modality``
        (-1 at padding); ``categorical``, ``numerical`` (NaN kept), ``patient``.

    Example:
        >>> ex = Example(np.array([1, 2]), np.array([1]), np.array([2]), np.array([-1]),
        ...              np.zeros(0, np.int64), np.zeros(0, np.float32), 0, 0, "x")
        >>> collate([ex, ex], pad_id=0)["input_ids"].shape
        torch.Size([2, 2])
    """
    check(len(examples) > 0, "collate", "examples", "non-empty", examples)
    input_ids, attention_mask = _pad([e.source for e in examples], pad_id)
    decoder_ids, decoder_mask = _pad([e.decoder_input for e in examples], pad_id)
    categorical = np.stack([e.categorical for e in examples]).astype(np.int64)
    numerical = np.stack([e.numerical for e in examples]).astype(np.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_ids,
        "decoder_attention_mask": decoder_mask,
        "labels": _pad([e.labels for e in examples], IGNORE_INDEX)[0],
        "label_modality": _pad([e.label_modality for e in examples], -1)[0],
        "categorical": torch.from_numpy(categorical),
        "numerical": torch.from_numpy(numerical),
        "patient": torch.tensor([e.patient for e in examples], dtype=torch.long),
    }


def _pad(rows: list[np.ndarray], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) long tensor right-padded with ``value``, and its 0/1 mask."""
    lengths = np.array([len(r) for r in rows])
    out = np.full((len(rows), lengths.max()), value, dtype=np.int64)
    mask = np.arange(out.shape[1]) < lengths[:, None]  # (B, L)
    out[mask] = np.concatenate(rows)
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))
