"""The one-pass objective: every target of a patient in one encoder and decoder pass.

The paper's objective (:mod:`.tasks`) makes one (history, target) example per target
visit, so a patient with T visits re-encodes its history about T times: O(T²) tokens
per epoch. Here a patient is one training item, and its cost is linear in its tokens:

* **Encoder, block-causal by visit.** The row is ``[prompts] <bos> v_1 ... v_n``
  (corrupted as in the paper: masking, deletion, span infilling, shuffling, block
  permutation). A token of visit i attends to the prompts, ``<bos>`` and visits 1..i,
  never to a later visit, so the states of visits < t are exactly what an encoder
  over the history 1..t-1 alone would give: one encoder pass serves every target.
* **Decoder, packed segments.** Target visit t is one segment ``<bos> <v> ... </v>``
  (its blocks shuffled and permuted as in the paper); its self-attention stays inside
  the segment (and the decoder prompts), its cross-attention sees the encoder's
  prompts, ``<bos>`` and visits < t only. The last segment is ``<bos>`` → ``<eos>``:
  with a ``<v>`` ("go on") target at every visit after the first and ``<eos>``
  ("end here") at the last, the end of a patient is trained as a hazard at every
  visit, not once per patient. Segment positions restart at every segment, as in
  a separate pass.
* **Cross-modal (cloze) targets in the same pass.** For a share of visits
  (``TaskConfig.cloze_rate``), a copy of visit t with one modality replaced by
  ``<k> <mask> </k>`` is appended to the encoder row, at visit t's positions, seeing
  visits < t and itself only (no real token sees it); its decoder segment
  ``<bos> <k>`` → k's codes and ``</k>`` sees the same.

Every mask is one rule over two integers per position, a *level* (how far into the
patient it may look) and a *group* (0 for the real visits, its own id for a cloze
copy, -1 for padding): position a sees encoder position b when b is real with
``level_b <= level_a``, or both belong to the same cloze copy. A patient too long for
``max_source_length`` is split into windows (rows) of consecutive visits; a later
window re-reads at most half its budget of earlier visits as history, so the cost
stays linear. Prompts are per-patient vectors: patients are padded, not packed, in a
batch, and the decoder's prompt vectors see the encoder's prompts and ``<bos>`` only
(they are shared by every segment).

Why this design (measured in ``docs/benchmarks.md``): the block-causal encoder makes
training and generation incremental at once (a new visit costs its own tokens at
generation), and it is exactly equivalent to separate per-target passes under the
same masks, which the tests check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ehrgen.models.promptehr.tasks import (
    IGNORE_INDEX,
    TaskConfig,
    _Block,
    _corrupt_visit,
    _keep_first_codes,
    _pad,
    _permute_blocks,
    _serialise,
    _trim_to_fit,
    _visit,
)
from ehrgen.tokens.encoded import TokenizedCohort

__all__ = [
    "PAD_GROUP",
    "PatientDataset",
    "PatientItem",
    "Row",
    "collate_patients",
    "patient_item",
    "visit_lengths",
]

PAD_GROUP = -1
_FAR = 1 << 30  # a level past every real one


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    """One encoder row and its packed decoder row (int64 arrays).

    Encoder positions and decoder positions count tokens after the prompt vectors.
    ``decoder_segment`` numbers the target segments from 1; ``decoder_level`` and
    ``decoder_group`` say which encoder positions a segment's cross-attention sees.
    ``first_visit`` is the patient's index of the row's first encoded visit.
    """

    encoder_ids: np.ndarray
    encoder_positions: np.ndarray
    encoder_level: np.ndarray
    encoder_group: np.ndarray
    decoder_ids: np.ndarray
    decoder_positions: np.ndarray
    decoder_segment: np.ndarray
    decoder_level: np.ndarray
    decoder_group: np.ndarray
    labels: np.ndarray
    label_modality: np.ndarray
    segment_visit: np.ndarray  # (n_segments,) target visit t of each segment
    segment_modality: np.ndarray  # (n_segments,) -1 longitudinal, else the cloze k
    first_visit: int


@dataclasses.dataclass(frozen=True, eq=False)
class PatientItem:
    """One patient: its rows (one per window) and baseline features."""

    rows: tuple[Row, ...]
    categorical: np.ndarray
    numerical: np.ndarray
    patient: int


def visit_lengths(data: TokenizedCohort, config: TaskConfig) -> np.ndarray:
    """(V,) the most encoder tokens each visit may take: its serialised length,
    capped at ``max_target_length``, plus one per block (span infilling may add a
    ``<mask>``)."""
    n_events = np.diff(data.event_offsets)
    n_blocks = np.diff(data.visit_block_offsets)
    return np.minimum(2 + n_events + 2 * n_blocks, config.max_target_length) + n_blocks


def windows(lengths: np.ndarray, budget: int) -> list[tuple[int, int, int]]:
    """``(start, first_target, end)`` visit windows of one patient: each window
    encodes visits ``start..end-1`` (at most ``budget`` tokens) and trains the targets
    ``first_target..end-1``; the windows' targets cover every visit once.

    Example:
        >>> windows(np.array([3, 3, 3, 3]), 7)
        [(0, 0, 2), (1, 2, 3), (2, 3, 4)]
    """
    n, out, first = len(lengths), [], 0
    while first < n or not out:
        if first == 0:
            start = 0
        else:  # history: at most half the budget, and room for one target
            room = min(budget // 2, budget - int(lengths[first]))
            start = first
            while start > 0 and lengths[start - 1 : first].sum() <= room:
                start -= 1
        end, used = start, 0
        while end < n and used + lengths[end] <= budget:
            used += int(lengths[end])
            end += 1
        end = max(end, first + 1) if n else 0
        out.append((start, first, end))
        if n == 0:
            break
        first = end
    return out


def patient_item(
    data: TokenizedCohort,
    patient: int,
    rng: np.random.Generator,
    config: TaskConfig,
    corrupt: bool = True,
) -> PatientItem:
    """Every target of ``patient`` as rows of packed sequences (see the module
    docstring). ``corrupt=False``: no corruption, no reordering and a cloze target
    for every (visit, present modality), for a deterministic validation.

    Example:
        >>> from ehrgen.data import Cohort, Patient, Visit
        >>> from ehrgen.tokens import CodeTokenizer
        >>> visits = (Visit({"lab": ["hb"]}), Visit({"lab": ["na"]}))
        >>> cohort = Cohort.from_patients([Patient("1", {}, visits)])
        >>> data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
        >>> item = patient_item(data, 0, np.random.default_rng(0), TaskConfig(), False)
        >>> row = item.rows[0]
        >>> " ".join(data.tokenizer.tokens[i] for i in row.encoder_ids[11:])
        '<v> <lab> <mask> </lab> </v> <v> <lab> <mask> </lab> </v>'
        >>> row.encoder_level.tolist()[:6], row.segment_modality.tolist()
        ([0, 1, 1, 1, 1, 1], [-1, 0, -1, 0, -1])
    """
    first, n = int(data.visit_offsets[patient]), int(data.visit_counts[patient])
    lengths = visit_lengths(data, config)[first : first + n]
    rows = tuple(
        _row(data, first, n, window, rng, config, corrupt)
        for window in windows(lengths, config.max_source_length - 1)
    )
    return PatientItem(
        rows,
        data.categorical[patient].copy(),
        data.numerical[patient].copy(),
        patient,
    )


def _row(data, first, n, window, rng, config, corrupt) -> Row:
    start, first_target, end = window
    tok = data.tokenizer
    encoder = _Columns()
    encoder.add([tok.bos_id], positions=[0], level=0, group=0)
    visit_start: dict[int, int] = {}  # visit t -> its first encoder position
    position = 1
    for t in range(start, end):
        blocks = _trim_to_fit(_visit(data, first + t), config.max_target_length)
        if corrupt:
            blocks = _corrupt_visit(blocks, rng, config, tok.mask_id)
        ids = _serialise(data, blocks)[0]
        visit_start[t] = position
        encoder.add(ids, np.arange(position, position + len(ids)), t - start + 1, 0)
        position += len(ids)
    visit_start[end] = position
    decoder, segments = _Columns(), []
    group = 0
    for t in range(first_target, end + (end == n)):
        level = t - start  # sees <bos> and visits start..t-1
        segments.append((t, -1))
        _add_longitudinal(data, decoder, first, n, t, level, len(segments), rng, config,
                          corrupt)  # fmt: skip
        if t == n:
            continue
        blocks = _visit(data, first + t)
        present = [b.modality for b in blocks]
        if corrupt:
            chosen = [] if rng.random() >= config.cloze_rate else [
                present[int(rng.integers(len(present)))]
            ]  # fmt: skip
        else:
            chosen = present
        for k in chosen:
            group += 1
            cloze = _cloze_blocks(blocks, k, tok.mask_id, config)
            if corrupt:
                cloze = _corrupt_visit(cloze, rng, config, tok.mask_id)
            ids = _serialise(data, cloze)[0]
            begin = visit_start[t]
            encoder.add(ids, np.arange(begin, begin + len(ids)), level, group)
            segments.append((t, k))
            codes = dict((b.modality, b.codes) for b in blocks)[k]
            if corrupt and config.shuffle_targets:
                codes = rng.permutation(codes)
            codes = codes[: config.max_target_length - 2]
            inputs = [tok.bos_id, data.open_ids[k], *codes]
            labels = [IGNORE_INDEX, *codes, data.close_ids[k]]
            modality = [-1] + [k] * (len(codes) + 1)
            decoder.add_segment(inputs, labels, modality, len(segments), level, group)
    return Row(
        *encoder.arrays(),
        *decoder.arrays(),
        np.array([t for t, _ in segments], np.int64),
        np.array([k for _, k in segments], np.int64),
        first_visit=start,
    )


def _add_longitudinal(data, decoder, first, n, t, level, segment, rng, config, corrupt):
    tok = data.tokenizer
    if t == n:
        target, modality = np.array([tok.eos_id]), np.array([-1])
    else:
        blocks = _visit(data, first + t)
        if corrupt and config.shuffle_targets:
            blocks = [b._replace(codes=rng.permutation(b.codes)) for b in blocks]
        if corrupt:
            blocks = _permute_blocks(blocks, rng, config.permute_target_rate)
        blocks = _keep_first_codes(blocks, config.max_target_length)
        target, modality = _serialise(data, blocks)
    inputs = np.concatenate([[tok.bos_id], target[:-1]])
    labels = target.copy()
    if t == 0:
        # A patient has a visit: the grammar never lets the first one be <eos>, so
        # "go on" is not trained there; trained, it would pull the end probability
        # of every later visit down toward the share of ends among all visits.
        labels[0] = IGNORE_INDEX
    decoder.add_segment(inputs, labels, modality, segment, level, 0)


def _cloze_blocks(blocks, k, mask_id, config) -> list[_Block]:
    slot = _Block(k, np.array([mask_id]), slot=True)
    partial = [slot if b.modality == k else b for b in blocks]
    return _trim_to_fit(partial, config.max_target_length)


class _Columns:
    """Growing columns of one encoder or decoder row."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def _put(self, **columns) -> None:
        for name, values in columns.items():
            self.parts.setdefault(name, []).append(np.asarray(values, np.int64))

    def add(self, ids, positions, level: int, group: int) -> None:
        n = len(ids)
        self._put(ids=ids, positions=positions, level=np.full(n, level),
                  group=np.full(n, group))  # fmt: skip

    def add_segment(self, inputs, labels, modality, segment, level, group) -> None:
        n = len(inputs)
        self._put(ids=inputs, positions=np.arange(n), segment=np.full(n, segment),
                  level=np.full(n, level), group=np.full(n, group), labels=labels,
                  modality=modality)  # fmt: skip

    def arrays(self) -> list[np.ndarray]:
        return [np.concatenate(values) for values in self.parts.values()]


@dataclasses.dataclass(eq=False)
class PatientDataset(torch.utils.data.Dataset):
    """One item per patient of ``patients`` (indices into ``data``).

    Item ``i`` draws from ``np.random.default_rng([seed, epoch, i, 2])``, whatever
    the worker or process that builds it.
    """

    data: TokenizedCohort
    patients: np.ndarray
    config: TaskConfig
    seed: int
    epoch: int = 0
    corrupt: bool = True

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, i: int) -> PatientItem:
        i = range(len(self))[i]
        rng = np.random.default_rng([self.seed, self.epoch, i, 2])
        return patient_item(
            self.data, int(self.patients[i]), rng, self.config, self.corrupt
        )


def collate_patients(
    items: Sequence[PatientItem], pad_id: int, loss_denominator: float | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad the rows of a batch of patients into tensors.

    ``loss_denominator`` (the label tokens of a full step, a constant of the run) is
    added to the batch: the trainer divides the loss by it rather than by the batch's
    own token count, so that every token weighs the same whatever the lengths of the
    patients it was batched with.

    Returns (R rows): ``encoder_*`` (R, S) and ``decoder_*``, ``labels``,
    ``label_modality`` (R, T) padded with ``pad_id`` / position 0 / level -1 /
    group ``PAD_GROUP`` / segment -1 / -100 / -1; ``categorical``, ``numerical`` of
    each row's patient; ``row_patient`` (R,) the item index of each row.
    """
    rows = [row for item in items for row in item.rows]
    owner = [i for i, item in enumerate(items) for _ in item.rows]
    pads = {
        "encoder_ids": pad_id,
        "encoder_positions": 0,
        "encoder_level": _FAR,
        "encoder_group": PAD_GROUP,
        "decoder_ids": pad_id,
        "decoder_positions": 0,
        "decoder_segment": -1,
        "decoder_level": 0,
        "decoder_group": 0,
        "labels": IGNORE_INDEX,
        "label_modality": -1,
    }
    batch = {
        name: _pad([getattr(row, name) for row in rows], value)[0]
        for name, value in pads.items()
    }
    categorical = np.stack([items[i].categorical for i in owner]).astype(np.int64)
    numerical = np.stack([items[i].numerical for i in owner]).astype(np.float32)
    batch["categorical"] = torch.from_numpy(categorical)
    batch["numerical"] = torch.from_numpy(numerical)
    batch["row_patient"] = torch.tensor(owner, dtype=torch.long)
    if loss_denominator is not None:
        batch["loss_denominator"] = torch.tensor(float(loss_denominator))
    return batch


def sees(
    query_level: torch.Tensor,
    query_group: torch.Tensor,
    key_level: torch.Tensor,
    key_group: torch.Tensor,
) -> torch.Tensor:
    """(B, Lq, Lk) bool: which keys each query sees under the level/group rule (see
    the module docstring). Arguments are (B, Lq) and (B, Lk)."""
    kl, kg = key_level[:, None, :], key_group[:, None, :]
    ql, qg = query_level[:, :, None], query_group[:, :, None]
    return ((kg == 0) & (kl <= ql)) | ((qg > 0) & (kg == qg))
