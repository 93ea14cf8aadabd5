"""The models of :mod:`ehrgen.evaluation.utility`, and the cohorts as they read them.

Cohorts are first put in one joint code space (:func:`joint_records`): each
``(modality, code string)`` of any cohort gets one id, so a model trained on one cohort
reads another, and baseline features are laid out as the test cohort's schema has them
(a training category the test schema lacks reads as unknown).

The network (:class:`_Network`): a visit is the sum of the embeddings of its codes
(equal to a linear layer over its multi-hot vector, all modalities), concatenated with
the baseline features (one-hot with an unknown slot; z-scores with a missing flag); a
left-to-right LSTM reads the visits, and a linear head on its state after visit t gives
one logit per target code of visit t + 1, its bias started at the code's log-odds.
Loss: binary cross-entropy summed over the target codes, averaged over examples. Codes
the training data never had are ignored when read and never predicted.

Also here: the two baselines' rankings (:func:`baseline_rankings`) and the label
classifier's test scores (:func:`label_scores`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._early_stopping import BestWeights
from ehrgen.data import Cohort

__all__ = [
    "HeldOut",
    "Predictor",
    "Records",
    "baseline_rankings",
    "fit_predictor",
    "joint_records",
    "label_scores",
    "next_visit_examples",
    "ranges",
    "rank_scores",
]

_PREDICT_BATCH = 512  # patients per forward pass when scoring
_BUCKET_BATCHES = 50  # batches sorted by length together, to cut padding
_CHUNK = 1024  # test examples ranked at a time by the history baseline


# --------------------------------------------------------------------------- data


def ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``starts[i] + 0 .. counts[i] - 1`` for every i, flat, and the i of each."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return np.arange(counts.sum(), dtype=np.int64) - first[owner] + starts[owner], owner


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@dataclass(frozen=True)
class Records:
    """Patients in a joint code space, with their baseline features and one label."""

    visit_offsets: np.ndarray  # (P+1,)
    event_offsets: np.ndarray  # (V+1,)
    codes: np.ndarray  # (E,) joint code ids
    categorical: np.ndarray  # (P, Fc) category index in the layout; -1 missing
    numerical: np.ndarray  # (P, Fn) float32; NaN missing
    label: np.ndarray | None = None  # (P,) float32, NaN missing; None: no such label

    def __len__(self) -> int:
        return len(self.visit_offsets) - 1

    @property
    def n_visits(self) -> int:
        return len(self.event_offsets) - 1

    @property
    def visit_patient(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.visit_offsets))

    @property
    def event_visit(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_visits), np.diff(self.event_offsets))

    def select(self, patients: np.ndarray) -> Records:
        """The records of these patients, in this order."""
        counts = np.diff(self.visit_offsets)[patients]
        visits, _ = ranges(self.visit_offsets[patients], counts)
        n_events = np.diff(self.event_offsets)[visits]
        events, _ = ranges(self.event_offsets[visits], n_events)
        label = None if self.label is None else self.label[patients]
        return Records(
            _offsets(counts),
            _offsets(n_events),
            self.codes[events],
            self.categorical[patients],
            self.numerical[patients],
            label,
        )

    @staticmethod
    def concat(parts: Sequence[Records]) -> Records:
        """The records of every part, in order; a part with no label reads as NaN."""
        labels = [p.label for p in parts]
        label = None
        if any(x is not None for x in labels):
            label = np.concatenate(
                [
                    np.full(len(p), np.nan, np.float32) if x is None else x
                    for p, x in zip(parts, labels)
                ]
            )
        return Records(
            _offsets(np.concatenate([np.diff(p.visit_offsets) for p in parts])),
            _offsets(np.concatenate([np.diff(p.event_offsets) for p in parts])),
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.categorical for p in parts]),
            np.concatenate([p.numerical for p in parts]),
            label,
        )


def joint_records(
    cohorts: Sequence[Cohort], layout: Cohort, label: str | None, target: str
) -> tuple[np.ndarray, list[Records]]:
    """Number the codes of all cohorts jointly; lay out baseline features as
    ``layout``'s schema does; keep the patient-level ``label`` (if any). Returns
    which joint codes are of the ``target`` modality, (G,) bool, and the records."""
    index: dict[tuple[str, str], int] = {}
    lookups = []
    for cohort in cohorts:
        names = cohort.schema.modalities
        pairs = zip(cohort.code_modality.tolist(), cohort.code_values.tolist())
        lookups.append(
            np.array(
                [index.setdefault((names[m], str(c)), len(index)) for m, c in pairs],
                dtype=np.int64,
            )
        )
    is_target = np.array([m == target for m, _ in index], dtype=bool)
    records = [
        _records(cohort, lookup, layout, label)
        for cohort, lookup in zip(cohorts, lookups)
    ]
    return is_target, records


def _records(
    cohort: Cohort, lookup: np.ndarray, layout: Cohort, label: str | None
) -> Records:
    n = len(cohort)
    categorical = np.full((n, len(layout.schema.categorical)), -1, dtype=np.int64)
    for j, (name, categories) in enumerate(layout.schema.categorical.items()):
        if name in cohort.schema.categorical:
            where = {c: i for i, c in enumerate(categories)}
            own = cohort.schema.categorical[name]
            to_layout = np.array([where.get(c, -1) for c in own] + [-1], np.int64)
            categorical[:, j] = to_layout[cohort.static[name]]  # -1 -> the last: -1
    numerical = np.full((n, len(layout.schema.numerical)), np.nan, dtype=np.float32)
    for j, name in enumerate(layout.schema.numerical):
        if name in cohort.schema.numerical:
            numerical[:, j] = cohort.static[name]
    values = cohort.labels.get(label) if label is not None else None
    return Records(
        np.asarray(cohort.visit_offsets, np.int64),
        np.asarray(cohort.event_offsets, np.int64),
        lookup[cohort.event_codes] if len(lookup) else np.zeros(0, np.int64),
        categorical,
        numerical,
        None if values is None else np.asarray(values, np.float32),
    )


def next_visit_examples(records: Records, is_target: np.ndarray) -> np.ndarray:
    """(N,) the visits followed by a visit of the same patient with at least one
    target code (``is_target`` is (G,) bool): each is one example, predicting the
    next visit's target codes from the visits up to it."""
    target_visits = records.event_visit[is_target[records.codes]]
    per_visit = np.bincount(target_visits, minlength=records.n_visits)
    ok = np.zeros(records.n_visits, dtype=bool)
    ok[:-1] = per_visit[1:] > 0
    ok[records.visit_offsets[1:] - 1] = False  # a patient's last visit
    return np.flatnonzero(ok)


@dataclass(frozen=True)
class HeldOut:
    """The test examples (:func:`next_visit_examples`) and their true codes."""

    records: Records
    examples: np.ndarray  # (N,) visits followed by a visit to predict
    patient: np.ndarray  # (N,) the example's patient, among those with an example
    n_patients: int
    truth: np.ndarray  # sorted keys example * G + joint code, of the true codes
    n_true: np.ndarray  # (N,) the number of true codes
    n_codes: int  # G

    @classmethod
    def of(cls, records: Records, is_target: np.ndarray) -> HeldOut:
        examples = next_visit_examples(records, is_target)
        after = examples + 1
        n_next = np.diff(records.event_offsets)[after]
        events, owner = ranges(records.event_offsets[after], n_next)
        codes = records.codes[events]
        target, g = is_target[codes], len(is_target)
        keys = np.sort(owner[target] * g + codes[target])
        _, patient = np.unique(records.visit_patient[examples], return_inverse=True)
        n_true = np.bincount(owner[target], minlength=len(examples))
        n_patients = int(patient.max(initial=-1)) + 1
        return cls(records, examples, patient, n_patients, keys, n_true, g)

    def hits(self, ranked: np.ndarray) -> np.ndarray:
        """(N, k) bool: whether each ranked joint code is true."""
        query = np.arange(len(ranked))[:, None] * self.n_codes + ranked
        if not len(self.truth):
            return np.zeros(ranked.shape, dtype=bool)
        where = np.searchsorted(self.truth, query).clip(max=len(self.truth) - 1)
        return (ranked >= 0) & (self.truth[where] == query)


def rank_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) the columns of each row's k highest finite scores, best first; -1 pads
    a row with fewer (ties at the k-th place are broken arbitrarily)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    n, c = scores.shape
    top = np.full((n, k), -1, dtype=np.int64)
    kept = min(k, c)
    if kept == 0 or n == 0:
        return top
    part = np.argpartition(-scores, kept - 1, axis=1)[:, :kept]  # (N, kept) unsorted
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    best = np.take_along_axis(part, order, 1)
    finite = np.isfinite(np.take_along_axis(scores, best, 1))
    top[:, :kept] = np.where(finite, best, -1)
    return top


class StaticEncoder:
    """Baseline features as numbers: one-hot with an unknown slot per categorical
    feature, and per numerical one a z-score (training mean and standard deviation;
    0 when missing) and a missing flag."""

    def __init__(self, train: Records, cardinalities: Sequence[int]) -> None:
        self.cardinalities = list(cardinalities)
        values = train.numerical.astype(np.float64)
        with warnings.catch_warnings():  # an all-missing feature gets mean 0, std 1
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mean = np.nan_to_num(np.nanmean(values, 0))
            std = np.nan_to_num(np.nanstd(values, 0), nan=1.0)
        self.std = np.where(std > 0, std, 1.0)

    @property
    def width(self) -> int:
        return sum(c + 1 for c in self.cardinalities) + 2 * len(self.mean)

    def __call__(self, records: Records, patients: np.ndarray) -> np.ndarray:
        """(B, width) float32 features of these patients."""
        parts = []
        for j, size in enumerate(self.cardinalities):
            value = records.categorical[patients, j]
            value = np.where((value >= 0) & (value < size), value, size)
            parts.append(np.eye(size + 1, dtype=np.float32)[value])
        numerical = records.numerical[patients].astype(np.float64)
        missing = np.isnan(numerical)
        z = np.where(missing, 0.0, (numerical - self.mean) / self.std)
        parts += [z, missing]
        return np.concatenate(parts, 1).astype(np.float32)


# --------------------------------------------------------------------------- model


@dataclass
class _Batch:
    codes: torch.Tensor  # (K,) input columns of the visits' known codes
    offsets: torch.Tensor  # (n,) where each visit's codes start in ``codes``
    row: torch.Tensor  # (n,) the batch row of each visit
    position: torch.Tensor  # (n,) its index within the patient
    static: torch.Tensor  # (B, S)
    steps: int  # T, the most visits of a patient of the batch
    example_row: torch.Tensor  # (N,)
    example_position: torch.Tensor  # (N,)
    targets: torch.Tensor | None  # (N, C) 0/1, when training


class _Network(nn.Module):
    """Code embeddings (summed per visit), an LSTM and a linear head."""

    def __init__(
        self, n_inputs: int, n_static: int, n_outputs: int, hidden: int, layers: int
    ) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(max(n_inputs, 1), hidden, mode="sum")
        # As nn.Linear would start the multi-hot layer, not N(0, 1) per code.
        bound = 1 / math.sqrt(max(n_inputs, 1))
        nn.init.uniform_(self.embed.weight, -bound, bound)
        self.lstm = nn.LSTM(hidden + n_static, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, batch: _Batch) -> torch.Tensor:
        """(N, C) logits of the next visit's target codes, one row per example."""
        visits = self.embed(batch.codes, batch.offsets)  # (n, H)
        width = visits.shape[1]
        padded = visits.new_zeros(len(batch.static), batch.steps, width)  # (B, T, H)
        padded[batch.row, batch.position] = visits
        static = batch.static.unsqueeze(1).expand(-1, batch.steps, -1)  # (B, T, S)
        # Padding comes last and the LSTM reads left to right: it leaks nowhere.
        states, _ = self.lstm(torch.cat([padded, static], 2))  # (B, T, H)
        return self.head(states[batch.example_row, batch.example_position])


@dataclass
class Predictor:
    """A trained next-visit predictor over one joint code space."""

    network: _Network
    inputs: np.ndarray  # (G,) the input column of each joint code; -1 unseen
    outputs: np.ndarray  # (G,) the output column of each joint code; -1 not a target
    output_codes: np.ndarray  # (C,) the joint code of each output column
    static: StaticEncoder
    epochs_run: int
    train_loss: float

    def batch(
        self,
        records: Records,
        patients: np.ndarray,
        is_example: np.ndarray,
        train: bool,
    ) -> _Batch:
        """The tensors of these patients; targets when ``train``."""
        counts = np.diff(records.visit_offsets)[patients]
        visits, row = ranges(records.visit_offsets[patients], counts)
        position = visits - records.visit_offsets[patients][row]
        n_events = np.diff(records.event_offsets)[visits]
        events, owner = ranges(records.event_offsets[visits], n_events)
        columns = self.inputs[records.codes[events]]
        keep = columns >= 0
        kept = np.bincount(owner[keep], minlength=len(visits))
        example = is_example[visits]
        targets = None
        if train:
            after = visits[example] + 1  # the visit each example predicts
            n_next = np.diff(records.event_offsets)[after]
            next_events, which = ranges(records.event_offsets[after], n_next)
            out = self.outputs[records.codes[next_events]]
            hit = out >= 0
            dense = np.zeros((len(after), len(self.output_codes)), dtype=np.float32)
            dense[which[hit], out[hit]] = 1.0
            targets = torch.from_numpy(dense)
        tensor = torch.from_numpy
        return _Batch(
            codes=tensor(columns[keep]),
            offsets=tensor(np.cumsum(kept) - kept),
            row=tensor(row),
            position=tensor(position),
            static=tensor(self.static(records, patients)),
            steps=int(counts.max(initial=0)),
            example_row=tensor(row[example]),
            example_position=tensor(position[example]),
            targets=targets,
        )

    @torch.no_grad()
    def rank(self, records: Records, examples: np.ndarray, k: int) -> np.ndarray:
        """(N, k) the joint codes most likely in each example's next visit, best
        first (-1 pads); ``examples`` from :func:`next_visit_examples`."""
        self.network.eval()
        is_example = np.zeros(records.n_visits, dtype=bool)
        is_example[examples] = True
        patients = np.unique(records.visit_patient[examples])
        ranked = [np.zeros((0, k), dtype=np.int64)]
        for start in range(0, len(patients), _PREDICT_BATCH):
            chunk = patients[start : start + _PREDICT_BATCH]
            logits = self.network(self.batch(records, chunk, is_example, False))
            top = rank_scores(logits.numpy(), k)
            ranked.append(np.where(top >= 0, self.output_codes[top], -1))
        return np.concatenate(ranked)


def _loss(network: _Network, batch: _Batch) -> torch.Tensor:
    logits = network(batch)
    bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="sum")
    return bce / max(len(logits), 1)


@torch.no_grad()
def _mean_loss(
    predictor: Predictor, records: Records, patients: np.ndarray, is_example: np.ndarray
) -> float:
    """The loss per example over these patients."""
    predictor.network.eval()
    total, count = 0.0, 0
    for start in range(0, len(patients), _PREDICT_BATCH):
        chunk = patients[start : start + _PREDICT_BATCH]
        batch = predictor.batch(records, chunk, is_example, True)
        n = len(batch.targets)
        total, count = total + _loss(predictor.network, batch).item() * n, count + n
    return total / max(count, 1)


def _batches(
    patients: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches, each of patients of similar length (less padding)."""
    order = rng.permutation(patients)
    batches = []
    span = size * _BUCKET_BATCHES
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def fit_predictor(
    train: Records, is_target: np.ndarray, cardinalities: Sequence[int], config: Any
) -> Predictor:
    """Train a next-visit predictor on ``train`` (``config``: a ``UtilityConfig``).

    Randomness is local: a numpy generator for the batches, and torch's global
    generator forked (restored on exit) and seeded for the weights.
    """
    seed = config.seed
    seen = np.unique(train.codes)
    inputs = np.full(len(is_target), -1, dtype=np.int64)
    inputs[seen] = np.arange(len(seen))
    output_codes = seen[is_target[seen]]
    outputs = np.full(len(is_target), -1, dtype=np.int64)
    outputs[output_codes] = np.arange(len(output_codes))
    examples = next_visit_examples(train, is_target)
    is_example = np.zeros(train.n_visits, dtype=bool)
    is_example[examples] = True
    patients = np.unique(train.visit_patient[examples])
    rng = np.random.default_rng(seed)
    validation = np.zeros(0, dtype=np.int64)
    if config.validation_fraction > 0 and len(patients) > 1:
        shuffled = rng.permutation(patients)
        n_val = int(
            np.clip(
                round(config.validation_fraction * len(patients)), 1, len(patients) - 1
            )
        )
        validation, patients = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])
    # Small training sets get more epochs, so that no setting is judged untrained.
    per_epoch = math.ceil(len(patients) / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / per_epoch))
    encoder = StaticEncoder(train, cardinalities)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _Network(
            len(seen), encoder.width, len(output_codes), config.hidden, config.layers
        )
        predictor = Predictor(
            network, inputs, outputs, output_codes, encoder, 0, math.nan
        )
        _start_at_rates(predictor, train, examples)
        _train(
            predictor, train, is_example, (patients, validation), epochs, config, rng
        )
    return predictor


@torch.no_grad()
def _start_at_rates(predictor: Predictor, train: Records, examples: np.ndarray) -> None:
    """Start each output bias at the log-odds of its code in the predicted visits,
    so that training spends its steps on structure."""
    after = examples + 1
    n_next = np.diff(train.event_offsets)[after]
    events, _ = ranges(train.event_offsets[after], n_next)
    out = predictor.outputs[train.codes[events]]
    counts = np.bincount(out[out >= 0], minlength=len(predictor.output_codes))
    rate = np.clip(counts / max(len(examples), 1), 1e-4, 1 - 1e-4)
    predictor.network.head.bias.copy_(torch.as_tensor(np.log(rate / (1 - rate))))


def _train(
    predictor: Predictor,
    train: Records,
    is_example: np.ndarray,
    split: tuple[np.ndarray, np.ndarray],
    epochs: int,
    config: Any,
    rng: np.random.Generator,
) -> None:
    """Adam over shuffled batches; with a validation set, stop after ``patience``
    epochs without a lower validation loss and keep the best weights."""
    (patients, validation), network = split, predictor.network
    lengths = np.diff(train.visit_offsets)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    keeper = BestWeights(config.patience)
    for epoch in range(epochs):
        network.train()
        total, steps = 0.0, 0
        for chunk in _batches(patients, lengths, config.batch_size, rng):
            loss = _loss(network, predictor.batch(train, chunk, is_example, True))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, steps = total + loss.item(), steps + 1
        predictor.epochs_run, predictor.train_loss = epoch + 1, total / max(steps, 1)
        if not len(validation):
            continue
        if keeper.update(network, _mean_loss(predictor, train, validation, is_example)):
            break
    keeper.restore(network)


# --------------------------------------------------------------------------- others


def baseline_rankings(
    train: Records, test: Records, examples: np.ndarray, is_target: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """(N, k) the joint codes each baseline ranks first for each test example
    (``examples`` of ``test``), with frequencies counted on ``train``.

    ``frequency``: the target codes by how many training visits have them.
    ``history``: the example patient's target codes of visits 1..t by how many of
    those visits have them, then the rest as ``frequency`` ranks them.
    """
    from scipy import sparse

    targets = np.flatnonzero(is_target)  # target column -> joint code
    column = np.full(len(is_target), -1, dtype=np.int64)
    column[targets] = np.arange(len(targets))
    known = column[train.codes]
    frequency = np.bincount(known[known >= 0], minlength=len(targets)).astype(float)
    # In [0, 1): any code of the patient's past ranks above every other code.
    prior = np.where(frequency > 0, frequency / (frequency.max(initial=0) + 1), -np.inf)
    ranked = {"frequency": np.repeat(rank_scores(prior[None], k), len(examples), 0)}
    first = test.visit_offsets[test.visit_patient[examples]]
    visits, owner = ranges(first, examples - first + 1)  # visits 1..t of each example
    to_visits = sparse.csr_matrix(
        (np.ones(len(visits)), (owner, visits)), shape=(len(examples), test.n_visits)
    )
    col = column[test.codes]
    keep = col >= 0
    visit_codes = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (test.event_visit[keep], col[keep])),
        shape=(test.n_visits, len(targets)),
    )
    history = (to_visits @ visit_codes).tocsr()  # (N, target codes) past visit counts
    chunks = []
    for start in range(0, len(examples), _CHUNK):
        past = history[start : start + _CHUNK].toarray()
        chunks.append(rank_scores(np.where(past > 0, past + prior.clip(0), prior), k))
    ranked["history"] = np.concatenate(chunks) if chunks else np.zeros((0, k), int)
    return {name: np.where(r >= 0, targets[r], -1) for name, r in ranked.items()}


def label_scores(
    train: Records, test: Records, cardinalities: Sequence[int], n_codes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression of the label on log(1 + visits with each code) and the
    baseline features, fitted on ``train``'s labelled patients; the scores and the
    labels of ``test``'s labelled patients."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    fit = np.flatnonzero(np.isfinite(train.label))
    scored = np.flatnonzero(np.isfinite(test.label))
    seen = np.unique(train.codes)
    columns = np.full(n_codes, -1, dtype=np.int64)
    columns[seen] = np.arange(len(seen))
    encoder = StaticEncoder(train, cardinalities)

    def features(records: Records, patients: np.ndarray) -> Any:
        visit_patient = records.visit_patient[records.event_visit]
        col = columns[records.codes]
        keep = col >= 0
        counts = sparse.csr_matrix(
            (np.ones(int(keep.sum())), (visit_patient[keep], col[keep])),
            shape=(len(records), len(seen)),
        )
        counts.sum_duplicates()
        counts.data = np.log1p(counts.data)
        static = encoder(records, patients)
        return sparse.hstack([counts[patients], static]).tocsr()

    model = LogisticRegression(max_iter=1000)
    model.fit(features(train, fit), train.label[fit])
    return model.decision_function(features(test, scored)), test.label[scored]
