"""LSTM+MLP, the paper's simplest baseline: an LSTM over multi-hot visits, an MLP head.

Reproduced (METHOD.md, Baselines): a 3-layer, 128-unit LSTM reads each visit as a
multi-hot vector (one unit per code of every modality) with the baseline features
concatenated (one-hot with an "unknown" slot; z-scores with a missing flag); one
256-wide MLP layer gives one logit per code; Adam, learning rate 1e-4. Decided here:

* **Left to right.** The paper's LSTM is bidirectional, but a model imputing visit t
  must not read visits t, t+1, ...: the state before visit t summarises visits
  1..t-1 (a learned vector before the first). ``bidirectional=True`` re-reads each
  history in both directions, at a cost quadratic in the number of visits.
* **Two heads, one MLP**, which reads the state, the baseline features, a multi-hot
  *context* and a learned task vector: *longitudinal* (empty context; every code of
  visit t) or *cross-modal* for modality k (visit t without k's codes; k's codes).
  Every visit is a longitudinal target, and one of its modalities, drawn anew each
  epoch, a cross-modal one. An end-of-patient logit follows each visit.
* **Loss.** Binary cross-entropy summed over label entries (every code of each visit,
  the removed modality's codes, one end-of-patient entry per visit); ``n_tokens``
  counts the entries, so the Trainer's "validation perplexity" is exp(mean BCE).
* **Scores** use the *set* protocol (``ehrgen.models.base``): the sigmoid scores of a
  modality's codes normalised to sum to one. A multi-label model gives no order of
  codes, so the *chain* protocol is not supported.
* **Generation** draws each code independently (Bernoulli), re-draws an empty visit up
  to :data:`_REDRAWS` times and then keeps its most likely code, keeps at most
  ``max_codes_per_modality`` codes per modality (the most likely drawn), and stops
  with the end-of-patient probability or at ``max_visits``. Baseline features and
  visit times come from the training population in aggregate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.data import Cohort, CohortSchema, Visit
from ehrgen.models.base import CodeScores
from ehrgen.models.trained import (
    TrainedGenerator,
    check_schema,
    static_arrays,
)
from ehrgen.tokens import CodeTokenizer
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.training import TrainingConfig

__all__ = ["LSTMMLP", "LSTMMLPConfig"]

logger = logging.getLogger(__name__)

MODEL_NAME = "lstm-mlp"
_REDRAWS = 8


@dataclass(frozen=True, kw_only=True)
class LSTMMLPConfig(ConfigMixin):
    """Sizes of the LSTM+MLP baseline; the defaults are the paper's.

    Example:
        >>> LSTMMLPConfig().hidden, LSTMMLPConfig.tiny().layers
        (128, 1)
    """

    hidden: int = 128
    layers: int = 3
    # Width of the one hidden MLP layer.
    mlp: int = 256
    # Between LSTM layers (when layers > 1) and after the MLP layer.
    dropout: float = 0.1
    # Re-read each history in both directions (quadratic; see the module docstring).
    bidirectional: bool = False

    def __post_init__(self) -> None:
        check_positive_ints(self, "hidden", "layers", "mlp")
        name = type(self).__name__
        check(0 <= self.dropout < 1, name, "dropout", "in [0, 1)", self.dropout)

    @classmethod
    def tiny(cls, **changes: Any) -> LSTMMLPConfig:
        """A few thousand parameters: for tests and docs; trains in seconds."""
        return cls(hidden=16, layers=1, mlp=32, dropout=0.0).replace(**changes)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``starts[i] + 0 .. counts[i] - 1`` for every i, flat, and the i of each."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return np.arange(counts.sum()) - first[owner] + starts[owner], owner


def _code_offset(tokenizer: CodeTokenizer) -> int:
    """Token id of the first code: code blocks are contiguous, in modality order."""
    return tokenizer.code_ranges[tokenizer.modalities[0]][0]


class _Encoded:
    """A cohort as the network reads it: the shared encoded cohort
    (:class:`~ehrgen.tokens.encoded.TokenizedCohort`) with each event's token as a
    column of the multi-hot visit vector.

    Attributes:
        cohort: the cohort encoded (its event-to-visit arrays are read for scoring).
        event_columns: (E,) the network column of each event's code, -1 if unknown.
        categorical, numerical: (N, ·) category indices (the cardinality when
            missing), raw values.
        position: (V,) the index of each visit within its patient.
    """

    def __init__(self, cohort: Cohort, tokenizer: CodeTokenizer) -> None:
        data = TokenizedCohort.from_cohort(cohort, tokenizer)
        self.cohort, self.n_modalities = cohort, data.n_modalities
        tokens = data.event_tokens.astype(np.int64)
        unknown = tokens == tokenizer.unk_id
        self.event_columns = np.where(unknown, -1, tokens - _code_offset(tokenizer))
        self.categorical, self.numerical = data.categorical, data.numerical
        first = np.repeat(data.visit_offsets[:-1], data.visit_counts)
        self.position = np.arange(len(data.event_offsets) - 1) - first
        self.n_codes = tokenizer.vocab_size - _code_offset(tokenizer)

    def random_targets(self, rng: np.random.Generator) -> np.ndarray:
        """(V,) one modality with known codes per visit, drawn uniformly; -1: none."""
        known = self.event_columns >= 0
        present = np.zeros((self.cohort.n_visits, self.n_modalities), dtype=bool)
        present[self.cohort.event_visit[known], self.cohort.event_modality[known]] = 1
        keys = np.where(present, rng.random(present.shape), -1.0)
        return np.where(present.any(1), keys.argmax(1), -1)

    def batch(self, patients, targets=None) -> dict[str, torch.Tensor]:
        """Tensors of these patients, padded over visits; ``targets`` holds the
        cross-modal modality of every visit of the cohort."""
        cohort = self.cohort
        counts = np.diff(cohort.visit_offsets)[patients]
        visits, row = _ranges(cohort.visit_offsets[patients], counts)
        pos = self.position[visits]
        n_events = cohort.event_offsets[visits + 1] - cohort.event_offsets[visits]
        events, owner = _ranges(cohort.event_offsets[visits], n_events)
        columns = self.event_columns[events]
        keep = columns >= 0
        shape = (len(patients), int(counts.max(initial=0)), self.n_codes)
        multi_hot = np.zeros(shape, dtype=np.float32)  # (B, T, C)
        multi_hot[row[owner][keep], pos[owner][keep], columns[keep]] = 1.0
        target = np.full(shape[:2], -1, dtype=np.int64)  # (B, T)
        if targets is not None:
            target[row, pos] = targets[visits]
        arrays = dict(visits=multi_hot, lengths=counts, target=target)
        arrays.update(categorical=self.categorical[patients])
        arrays.update(numerical=self.numerical[patients].astype(np.float32))
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


@dataclass
class _Output:
    loss_sum: torch.Tensor
    n_tokens: torch.Tensor


class _Network(nn.Module):
    """The LSTM, the MLP head with its task vectors, the end-of-patient head."""

    def __init__(
        self, config: LSTMMLPConfig, tokenizer: CodeTokenizer, schema: CohortSchema
    ) -> None:
        super().__init__()
        offset, self.config = _code_offset(tokenizer), config
        ranges = tokenizer.code_ranges.values()
        self.slices = [(a - offset, b - offset) for a, b in ranges]
        self.cardinalities = [len(c) for c in schema.categorical.values()]
        n_codes, n_numerical = self.slices[-1][1], len(schema.numerical)
        n_static = sum(c + 1 for c in self.cardinalities) + 2 * n_numerical
        width = config.hidden * (2 if config.bidirectional else 1)
        dropout = config.dropout if config.layers > 1 else 0.0  # between layers
        lstm = dict(
            batch_first=True, dropout=dropout, bidirectional=config.bidirectional
        )
        self.lstm = nn.LSTM(n_codes + n_static, config.hidden, config.layers, **lstm)
        self.initial = nn.Parameter(torch.zeros(width))
        self.head_input = nn.Linear(width + n_static + n_codes, config.mlp)
        # Task 0 is longitudinal, task k + 1 cross-modal for modality k.
        self.task = nn.Embedding(len(self.slices) + 1, config.mlp)
        self.head_output = nn.Linear(config.mlp, n_codes)
        self.dropout = nn.Dropout(config.dropout)
        self.end = nn.Linear(width, 1)
        # The standardisation of numerical features, saved with the weights.
        self.register_buffer("mean", torch.zeros(n_numerical))
        self.register_buffer("std", torch.ones(n_numerical))
        sizes = torch.tensor([b - a for a, b in self.slices])
        modality = torch.repeat_interleave(torch.arange(len(sizes)), sizes)  # (C,)
        self.register_buffer("column_modality", modality, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.initial.device

    def static_features(self, categorical, numerical) -> torch.Tensor:
        """(B, n_categorical) indices, (B, n_numerical) raw values -> (B, S)."""
        parts = []
        for i, size in enumerate(self.cardinalities):
            value = categorical[:, i]
            value = torch.where((value >= 0) & (value < size), value, size)
            parts.append(F.one_hot(value, size + 1).float())
        if numerical.shape[1]:
            missing = torch.isnan(numerical)
            z = (torch.nan_to_num(numerical) - self.mean) / self.std
            parts += [z.masked_fill(missing, 0.0), missing.float()]
        return torch.cat(parts, 1) if parts else numerical.new_zeros(len(numerical), 0)

    def history(self, visits, static, lengths) -> torch.Tensor:
        """(B, T, C) visits -> (B, T + 1, H) states; state t summarises visits < t."""
        batch, steps = visits.shape[:2]
        initial = self.initial.expand(batch, 1, -1)
        if steps == 0:
            return initial
        x = torch.cat([visits, static.unsqueeze(1).expand(-1, steps, -1)], 2)
        if not self.config.bidirectional:
            out, _ = self.lstm(x)  # (B, T, H); padding comes last, so it leaks nowhere
            return torch.cat([initial, out], 1)
        states = [initial]
        for t in range(1, steps + 1):  # each history read again, in both directions
            length = lengths.clamp(1, t).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(
                x[:, :t], length, batch_first=True, enforce_sorted=False
            )
            _, (h, _) = self.lstm(packed)  # (layers * 2, B, hidden)
            states.append(torch.cat([h[-2], h[-1]], 1).unsqueeze(1))
        return torch.cat(states, 1)

    def head(self, state, static, context, task) -> torch.Tensor:
        """Code logits (..., C) from the state, static features, context and task."""
        static = static.expand(*state.shape[:-1], -1)
        hidden = self.head_input(torch.cat([state, static, context], -1))
        return self.head_output(self.dropout(torch.relu(hidden + self.task(task))))

    def _read(self, batch: Mapping[str, torch.Tensor]):
        visits, lengths = batch["visits"], batch["lengths"]
        static = self.static_features(batch["categorical"], batch["numerical"])
        states = self.history(visits, static, lengths)  # (B, T + 1, H)
        steps = torch.arange(visits.shape[1], device=visits.device)
        return visits, static.unsqueeze(1), states, steps < lengths.unsqueeze(1)

    def _without(self, visits: torch.Tensor, modality: torch.Tensor):
        """(B, T, C) columns of ``modality`` (B, T), and the visits without them."""
        columns = self.column_modality == modality.unsqueeze(-1)
        return columns, visits.masked_fill(columns, 0.0)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> _Output:
        """Summed BCE of both heads and of the end-of-patient logit."""
        visits, static, states, valid = self._read(batch)
        before, target = states[:, :-1], batch["target"]  # the state before each visit
        zeros = torch.zeros_like(target)
        logits = self.head(before, static, torch.zeros_like(visits), zeros)
        bce = F.binary_cross_entropy_with_logits(logits, visits, reduction="none")
        loss, count = bce[valid].sum(), valid.sum() * visits.shape[2]
        columns, context = self._without(visits, target)
        logits = self.head(before, static, context, (target + 1).clamp(min=0))
        bce = F.binary_cross_entropy_with_logits(logits, visits, reduction="none")
        labels = columns & (valid & (target >= 0)).unsqueeze(-1)
        loss, count = loss + bce[labels].sum(), count + labels.sum()
        steps = torch.arange(visits.shape[1], device=visits.device)
        last = (steps == batch["lengths"].unsqueeze(1) - 1).float()
        end = self.end(states[:, 1:]).squeeze(-1)  # (B, T): after each visit
        bce = F.binary_cross_entropy_with_logits(end, last, reduction="none")
        return _Output(loss + bce[valid].sum(), count + valid.sum())

    @torch.no_grad()
    def set_log_probs(self, batch: Mapping[str, torch.Tensor], task: str):
        """(valid visits, C) set log-probabilities on the CPU: sigmoid scores
        normalised within each modality."""
        visits, static, states, valid = self._read(batch)
        before = states[:, :-1]
        zeros = torch.zeros(visits.shape[:2], dtype=torch.long, device=self.device)
        if task == "longitudinal":
            logits = self.head(before, static, torch.zeros_like(visits), zeros)
        else:
            logits = torch.empty_like(visits)
            for k, (a, b) in enumerate(self.slices):
                _, context = self._without(visits, zeros + k)
                out = self.head(before, static, context, zeros + k + 1)
                logits[..., a:b] = out[..., a:b]
        scores = F.logsigmoid(logits[valid])
        for a, b in self.slices:
            if b > a:
                part = scores[:, a:b]
                scores[:, a:b] = part - torch.logsumexp(part, 1, keepdim=True)
        return scores.cpu()

    @torch.no_grad()
    def calibrate(self, data: _Encoded) -> None:
        """Store the standardisation, and start the code and end-of-patient biases
        at the training rates, so that training spends its steps on structure."""
        values = data.numerical.astype(np.float64)
        with warnings.catch_warnings():  # an all-missing feature gets mean 0, std 1
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(values, 0))
            std = np.nan_to_num(np.nanstd(values, 0), nan=1.0)
        self.mean.copy_(torch.as_tensor(mean))
        self.std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0)))
        n_visits = max(data.cohort.n_visits, 1)
        known = data.event_columns[data.event_columns >= 0]
        rate = np.bincount(known, minlength=data.n_codes) / n_visits
        self.head_output.bias.copy_(torch.as_tensor(_log_odds(rate)))
        self.end.bias.fill_(float(_log_odds(len(data.cohort) / n_visits)))

    @torch.no_grad()
    def sample(self, categorical, numerical, generation, generator) -> list[np.ndarray]:
        """Each patient's visits as a (visits, C) bool array, drawn visit by visit.

        Draws happen on the CPU, so that a seed gives the same patients on any
        device; each step re-reads the history so far (a bidirectional LSTM needs it).
        """
        device, n_codes = self.device, self.slices[-1][1]
        static = self.static_features(categorical.to(device), numerical.to(device))
        batch = len(static)
        visits = torch.zeros(batch, 0, n_codes, device=device)
        counts = torch.zeros(batch, dtype=torch.long)
        alive = torch.ones(batch, dtype=torch.bool)
        task = torch.zeros(batch, dtype=torch.long, device=device)
        context = torch.zeros(batch, n_codes, device=device)  # longitudinal: none
        for t in range(generation.max_visits):
            lengths = torch.full((batch,), t, dtype=torch.long)
            state = self.history(visits, static, lengths)[:, -1]  # (B, H)
            if t:
                p_end = torch.sigmoid(self.end(state).squeeze(-1)).cpu()
                alive &= ~torch.bernoulli(p_end, generator=generator).bool()
                if not alive.any():
                    break
            logits = self.head(state, static, context, task)
            visit = self._draw(logits.cpu(), generation, generator)
            visits = torch.cat([visits, visit.float().to(device).unsqueeze(1)], 1)
            counts += alive.long()
        chosen = visits.bool().cpu().numpy()
        return [chosen[i, :c] for i, c in enumerate(counts.tolist())]

    def _draw(self, logits, generation, generator) -> torch.Tensor:
        """(B, C) bool: independent draws; empty visits re-drawn, then the top code."""
        probs = torch.sigmoid(logits / generation.temperature)
        if generation.greedy:
            chosen = probs > 0.5
        else:
            chosen = torch.bernoulli(probs, generator=generator).bool()
            for _ in range(_REDRAWS):
                empty = ~chosen.any(1)
                if not empty.any():
                    break
                chosen[empty] = torch.bernoulli(
                    probs[empty], generator=generator
                ).bool()
        empty = torch.nonzero(~chosen.any(1)).flatten()
        chosen[empty, probs[empty].argmax(1)] = True
        cap = generation.max_codes_per_modality
        for a, b in self.slices:
            if b - a > cap:  # keep the most likely of the codes drawn
                ranked = torch.where(chosen[:, a:b], probs[:, a:b], -1.0)
                top = torch.zeros_like(chosen[:, a:b])
                chosen[:, a:b] &= top.scatter_(1, ranked.topk(cap, 1).indices, True)
        return chosen


def _log_odds(p):
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class LSTMMLP(TrainedGenerator):
    """The LSTM+MLP baseline (see the module docstring).

    Args:
        config: the sizes (default :class:`LSTMMLPConfig`, the paper's).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> cohort = demo_cohort(16, seed=0)
        >>> model = LSTMMLP(LSTMMLPConfig.tiny()).fit(
        ...     cohort, training=TrainingConfig(epochs=1, batch_size=8)
        ... )
        >>> bool((model.score_longitudinal(cohort).log_prob <= 0).all())
        True
        >>> len(model.generate(3, conditions={"gender": "F"}, seed=0))
        3
    """

    name = MODEL_NAME
    config_class = LSTMMLPConfig
    summary = (
        "The paper's LSTM+MLP baseline: an LSTM over multi-hot visits and an MLP "
        "head giving one independent probability per code."
    )
    protocols: tuple[str, ...] = ("set",)

    def __init__(self, config: LSTMMLPConfig | None = None) -> None:
        self.config = config or LSTMMLPConfig()
        self._fitted = None

    # ---- hooks of the shared layer (ehrgen.models.trained)

    def _default_training(self) -> TrainingConfig:
        """The paper's: Adam (no weight decay), learning rate 1e-4."""
        return TrainingConfig(learning_rate=1e-4, weight_decay=0.0)

    def _new_network(self, tokenizer, schema, train, state):
        network = self._empty_network(tokenizer, schema, state)
        network.calibrate(_Encoded(train, tokenizer))
        return network, None

    def _empty_network(self, tokenizer, schema, state) -> _Network:
        return _Network(self.config, tokenizer, schema)

    def _loaders(self, fitted, train, val, training):
        return _loaders(
            _Encoded(train, fitted.tokenizer), val, fitted.tokenizer, training
        )

    def _architecture(self) -> str:
        c = self.config
        return f"LSTM {c.layers} x {c.hidden}, MLP {c.mlp}"

    # ---- scoring

    def score_longitudinal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Each true code of visit t >= 2 (index 1 on) given visits 1..t-1 and the
        baseline features (set protocol)."""
        return self._score(cohort, "longitudinal", protocol)

    def score_cross_modal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Each true code of modality k of each visit given the earlier visits and
        the visit's other modalities (set protocol)."""
        return self._score(cohort, "cross_modal", protocol)

    def _score(self, cohort: Cohort, task: str, protocol: str) -> CodeScores:
        self._check_protocol(protocol, task, "a multi-label model gives no code order")
        data = self._encode(cohort)
        first = 1 if task == "longitudinal" else 0
        events, values, n_unknown = [np.zeros(0, np.int64)], [np.zeros(0)], 0
        event_visit = cohort.event_visit  # a derived array: computed once
        for start, scores in self._log_probs(data, task):
            a = cohort.event_offsets[start]
            b = cohort.event_offsets[start + len(scores)]
            visit, columns = event_visit[a:b], data.event_columns[a:b]
            scored = data.position[visit] >= first
            n_unknown += int((scored & (columns < 0)).sum())
            keep = np.flatnonzero(scored & (columns >= 0))
            events.append(keep + a)
            values.append(scores[visit[keep] - start, columns[keep]])
        events, values = np.concatenate(events), np.concatenate(values)
        visits, codes = event_visit[events], cohort.event_codes[events]
        # The dtypes of CodeScores.from_rows.
        patient = cohort.visit_patient[visits].astype(np.int64)
        position = data.position[visits].astype(np.int32)
        modality = cohort.code_modality[codes].astype(np.int8)
        columns = (patient, position, modality, cohort.code_values[codes], values)
        names = tuple(cohort.schema.modalities)
        return CodeScores(*columns, names, "set", task, MODEL_NAME, n_unknown)

    def _encode(self, cohort: Cohort) -> _Encoded:
        fitted = self._check_fitted()
        check_schema(cohort, fitted.schema, "LSTMMLP")
        return _Encoded(cohort, fitted.tokenizer)

    def _log_probs(self, data: _Encoded, task: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first visit index, (visits, C) set log-probabilities) per patient batch."""
        network, n = self._check_fitted().network.eval(), len(data.cohort)
        for start in range(0, n, 64):
            batch = data.batch(np.arange(start, min(start + 64, n)))
            batch = {k: v.to(network.device) for k, v in batch.items()}
            scores = network.set_log_probs(batch, task).numpy()
            yield int(data.cohort.visit_offsets[start]), scores

    def _visit_log_probs(self, cohort: Cohort, task: str) -> np.ndarray:
        """(visits, C) set log-probabilities of every code for every visit; columns
        in the tokenizer's code order (for tests)."""
        parts = [s for _, s in self._log_probs(self._encode(cohort), task)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    # ---- generation

    def _patient_sampler(self, fitted, generation, generator):
        """Visits drawn code by code (see the module docstring); ``generation``
        uses ``max_visits``, ``max_codes_per_modality``, ``temperature`` (divides
        the logits), ``greedy`` (the codes above probability 0.5) and
        ``batch_size``."""
        network = fitted.network.eval()

        def sample(statics):
            categorical, numerical = static_arrays(statics, fitted.schema)
            rows = network.sample(categorical, numerical, generation, generator)
            return [_visits(fitted.tokenizer, history) for history in rows]

        return sample


def _loaders(data: _Encoded, val: Cohort | None, tokenizer, training):
    """The Trainer's ``train_loader(epoch)`` and validation loader."""
    from torch.utils.data import DataLoader

    def train_loader(epoch: int) -> DataLoader:
        # Order and cross-modal targets from (seed, epoch): a resumed run sees the same.
        rng = np.random.default_rng([training.seed, epoch])
        targets, order = data.random_targets(rng), rng.permutation(len(data.cohort))

        def collate(rows):
            return data.batch(np.array(rows), targets)

        size, workers = training.batch_size, training.num_workers
        return DataLoader(order, size, collate_fn=collate, num_workers=workers)

    if val is None:
        return train_loader, None
    val_data = _Encoded(val, tokenizer)
    val_targets = val_data.random_targets(np.random.default_rng(training.seed))

    def collate_val(rows):
        return val_data.batch(np.array(rows), val_targets)

    rows = np.arange(len(val))
    return train_loader, DataLoader(rows, training.batch_size, collate_fn=collate_val)


def _visits(tokenizer: CodeTokenizer, history: np.ndarray) -> list[Visit]:
    """(visits, C) bool rows as visits, codes in the tokenizer's order."""
    names = [m for m in tokenizer.modalities for _ in tokenizer.codes[m]]
    values = [c for m in tokenizer.modalities for c in tokenizer.codes[m]]
    visits = []
    for row in history:
        events: dict[str, list[str]] = {}
        for column in np.flatnonzero(row).tolist():
            events.setdefault(names[column], []).append(values[column])
        visits.append(Visit(events))
    return visits
