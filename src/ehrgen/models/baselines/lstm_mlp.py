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

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen._io import atomic_file, write_json
from ehrgen.data import Cohort, CohortBuilder, CohortSchema
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import GenerationConfig
from ehrgen.models.base import (
    PROTOCOLS,
    CodeScores,
    FittedState,
    check_model_folder_free,
    load_weights,
)
from ehrgen.models.population import Population, per_patient
from ehrgen.tokens.tokenizer import CodeTokenizer
from ehrgen.training import TrainingConfig

__all__ = ["LSTMMLP", "LSTMMLPConfig"]

logger = logging.getLogger(__name__)

MODEL_NAME = "lstm-mlp"
FORMAT_VERSION = 1
# ehrgen.json is written last: a folder without it is incomplete.
MODEL_FILES = ("config.json", "tokenizer.json", "schema.json", "model.safetensors")
MODEL_FILES += ("ehrgen.json",)
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


def _stack(cohort: Cohort, names: Sequence[str], dtype) -> np.ndarray:
    columns = [np.asarray(cohort.static[k], dtype) for k in names]
    return np.stack(columns, 1) if columns else np.zeros((len(cohort), 0), dtype)


def _code_offset(tokenizer: CodeTokenizer) -> int:
    """Token id of the first code: code blocks are contiguous, in modality order."""
    return tokenizer.code_ranges[tokenizer.modalities[0]][0]


class _Encoded:
    """A cohort as the network reads it, built from its flat arrays.

    Attributes:
        event_columns: (E,) the network column of each event's code, -1 if unknown.
        categorical, numerical: (N, ·) category indices (-1 missing), raw values.
        position: (V,) the index of each visit within its patient.
    """

    def __init__(self, cohort: Cohort, tokenizer: CodeTokenizer) -> None:
        self.cohort, names = cohort, tokenizer.modalities
        # One look-up per distinct code of the cohort, not one per event.
        pairs = zip(cohort.code_modality.tolist(), cohort.code_values.tolist())
        ids = np.array([tokenizer.code_id(names[m], c) for m, c in pairs], np.int64)
        columns = np.where(ids == tokenizer.unk_id, -1, ids - _code_offset(tokenizer))
        self.event_columns = columns[cohort.event_codes]
        schema, counts = cohort.schema, np.diff(cohort.visit_offsets)
        self.categorical = _stack(cohort, list(schema.categorical), np.int64)
        self.numerical = _stack(cohort, schema.numerical, np.float32)
        first = np.repeat(cohort.visit_offsets[:-1], counts)
        self.position = np.arange(cohort.n_visits) - first
        self.n_codes = tokenizer.vocab_size - _code_offset(tokenizer)
        self.n_modalities = len(names)

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
        # The standardisation is saved in ehrgen.json, not with the weights.
        self.register_buffer("mean", torch.zeros(n_numerical), persistent=False)
        self.register_buffer("std", torch.ones(n_numerical), persistent=False)
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


@dataclass
class _Fitted:
    tokenizer: CodeTokenizer
    schema: CohortSchema
    network: _Network
    population: dict[str, Any]
    info: dict[str, Any]


class LSTMMLP(FittedState):
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

    protocols: tuple[str, ...] = ("set",)

    def __init__(self, config: LSTMMLPConfig | None = None) -> None:
        self.config = config or LSTMMLPConfig()
        self._fitted: _Fitted | None = None

    @property
    def schema_(self) -> CohortSchema:
        """The training cohort's schema."""
        return self._check_fitted().schema

    # ---- training

    def fit(
        self,
        train: Cohort,
        val: Cohort | None = None,
        training: TrainingConfig | None = None,
        *,
        output_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        progress: bool = False,
    ) -> LSTMMLP:
        """Train with the shared Trainer; keep the best epoch on ``val`` if given.

        Args:
            train: the training cohort.
            val: a validation cohort of the same schema.
            training: optimisation settings; default the paper's: Adam (no weight
                decay), learning rate 1e-4.
            output_dir: checkpoints and ``metrics.jsonl`` (a temporary folder if None).
            resume_from: a ``checkpoints/step-N`` folder of an earlier run on the same
                cohort.
            progress: show a progress bar.

        Returns:
            self, fitted.
        """
        training = training or TrainingConfig(learning_rate=1e-4, weight_decay=0.0)
        if len(train) == 0:
            raise SchemaError("The training cohort is empty: LSTMMLP needs patients.")
        if resume_from is not None:
            tokenizer, schema, self.config, _ = _read_folder(Path(resume_from))
            _check_schema(train, schema, "The training cohort")
        else:
            tokenizer, schema = CodeTokenizer.fit(train), train.schema
        if val is not None:
            _check_schema(val, schema, "The validation cohort")
        data = _Encoded(train, tokenizer)
        with torch.random.fork_rng(devices=[]):  # seeded weights, global state kept
            torch.manual_seed(training.seed)
            network = _Network(self.config, tokenizer, schema)
        network.calibrate(data)
        population = Population.from_cohort(train).to_dict()
        fitted = _Fitted(tokenizer, schema, network, population, {})
        with contextlib.ExitStack() as stack:
            if output_dir is None:
                output_dir = stack.enter_context(tempfile.TemporaryDirectory())
            trainer = self._trainer(fitted, training, Path(output_dir), progress)
            loaders = _loaders(data, val, fitted.tokenizer, training)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(training.seed)  # dropout draws
                result = trainer.fit(network, *loaders, resume_from=resume_from)
        fitted.info = {"train_patients": len(train), "training": training.to_dict()}
        fitted.info.update((k, v) for k, v in vars(result).items() if k != "history")
        self._fitted = fitted
        network.eval()
        return self

    def _trainer(self, fitted: _Fitted, training, output_dir: Path, progress: bool):

        from ehrgen.training import Trainer

        def save_model(network: _Network, folder: Path) -> None:
            checkpoint = _Fitted(**{**vars(fitted), "network": network, "info": {}})
            _write_folder(checkpoint, self.config, folder)

        return Trainer(training, output_dir, save_model, load_weights, progress)

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
        if protocol == "chain":
            raise NotImplementedError(
                f"The 'chain' protocol is not supported by LSTMMLP ({MODEL_NAME}): a "
                f"multi-label model gives no order of codes. Use protocol='set'."
            )
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"The 'protocol' parameter of LSTMMLP.score_{task} must be one of "
                f"{list(PROTOCOLS)}. Got {protocol!r} instead."
            )
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
        _check_schema(cohort, fitted.schema, "The cohort")
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

    def generate(
        self,
        n: int,
        conditions: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
    ) -> Cohort:
        """``n`` synthetic patients from scratch (ids ``synthetic-N``).

        Args:
            n: how many patients.
            conditions: baseline features to impose, one mapping for all patients or
                one per patient; the rest are drawn from the training population.
            generation: uses ``max_visits``, ``max_codes_per_modality``,
                ``temperature`` (divides the logits), ``greedy`` (the codes above
                probability 0.5) and ``batch_size``.
            seed: makes the output reproducible.
        """
        fitted = self._check_fitted()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(
                f"The 'n' parameter of LSTMMLP.generate must be an int >= 1. Got {n!r}."
            )
        generation = generation or GenerationConfig()
        seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        population = Population.from_dict(fitted.population)
        statics = population.sample_static(
            per_patient(conditions, n, "LSTMMLP.generate"), rng
        )
        categorical, numerical = _static_arrays(statics, fitted.schema)
        histories: list[np.ndarray] = []
        network = fitted.network.eval()
        for a in range(0, n, generation.batch_size):
            part = slice(a, a + generation.batch_size)
            histories += network.sample(
                categorical[part], numerical[part], generation, generator
            )
        times = population.sample_times([len(h) for h in histories], rng)
        return _synthetic_cohort(fitted, statics, histories, times)

    # ---- persistence

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``tokenizer.json``, ``schema.json``,
        ``model.safetensors`` and, last, ``ehrgen.json`` (no pickle)."""
        fitted, path = self._check_fitted(), Path(path)
        check_model_folder_free(path, overwrite)
        _write_folder(fitted, self.config, path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LSTMMLP:
        """Load a folder written by :meth:`save_pretrained` (or a checkpoint)."""

        path = Path(path)
        tokenizer, schema, config, info = _read_folder(path)
        network = _Network(config, tokenizer, schema)
        load_weights(network, path)
        network.mean.copy_(torch.tensor(info["standardisation"]["mean"]))
        network.std.copy_(torch.tensor(info["standardisation"]["std"]))
        self = cls(config)
        training_info = info.get("training_info", {})
        population = info["population"]
        self._fitted = _Fitted(
            tokenizer, schema, network.eval(), population, training_info
        )
        return self

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"LSTMMLP({state}, hidden={self.config.hidden})"


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


def _static_arrays(statics, schema: CohortSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled baseline features as the (n, ·) arrays a cohort stores."""
    categorical = np.full((len(statics), len(schema.categorical)), -1, np.int64)
    numerical = np.full((len(statics), len(schema.numerical)), np.nan, np.float32)
    for i, static in enumerate(statics):
        for j, (name, categories) in enumerate(schema.categorical.items()):
            if name in static:
                categorical[i, j] = categories.index(static[name])
        for j, name in enumerate(schema.numerical):
            numerical[i, j] = float(static.get(name, np.nan))
    return torch.from_numpy(categorical), torch.from_numpy(numerical)


def _synthetic_cohort(fitted: _Fitted, statics, histories, times) -> Cohort:
    tokenizer = fitted.tokenizer
    names = [m for m in tokenizer.modalities for _ in tokenizer.codes[m]]
    values = [c for m in tokenizer.modalities for c in tokenizer.codes[m]]
    builder = CohortBuilder(fitted.schema, source=MODEL_NAME)
    width = len(str(len(histories) - 1))
    for p, (static, history) in enumerate(zip(statics, histories)):
        visits = []
        for t, row in enumerate(history):
            events: dict[str, list[str]] = {}
            for column in np.flatnonzero(row).tolist():
                events.setdefault(names[column], []).append(values[column])
            visits.append((None if times is None else times[p][t], events))
        builder.add(f"synthetic-{p:0{width}d}", static, visits)
    return builder.build(metadata={"source": MODEL_NAME})


def _check_schema(cohort: Cohort, schema: CohortSchema, what: str) -> None:
    if cohort.schema != schema:
        raise SchemaError(
            f"{what} must have the schema LSTMMLP was trained on, {schema}. Got "
            f"{cohort.schema} instead; use a cohort of the same modalities and "
            f"baseline features."
        )


def _write_folder(fitted: _Fitted, config: LSTMMLPConfig, path: Path) -> None:
    from safetensors.torch import save_model

    from ehrgen import __version__

    path.mkdir(parents=True, exist_ok=True)
    (path / "ehrgen.json").unlink(missing_ok=True)  # the completion marker goes last
    write_json(path / "config.json", config.to_dict())
    fitted.tokenizer.save(path / "tokenizer.json")
    write_json(path / "schema.json", fitted.schema.to_dict())
    with atomic_file(path / "model.safetensors", overwrite=True) as tmp:
        save_model(fitted.network, str(tmp))
    mean, std = fitted.network.mean.tolist(), fitted.network.std.tolist()
    info = {"format_version": FORMAT_VERSION, "model": MODEL_NAME}
    info.update(ehrgen_version=__version__, torch_version=torch.__version__)
    info["standardisation"] = {"mean": mean, "std": std}
    info.update(population=fitted.population, training_info=fitted.info)
    write_json(path / "ehrgen.json", info)


def _read_json(path: Path, build=dict) -> Any:
    """``build`` applied to a JSON file of a model folder; errors name the file."""
    try:
        return build(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise SchemaError(f"{path}: corrupt or invalid ({error!r}).") from None


def _check_info(info: dict[str, Any]) -> dict[str, Any]:
    """``ehrgen.json``'s content, checked: it must describe an LSTMMLP."""
    if info.get("model") != MODEL_NAME or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"expected model {MODEL_NAME!r} in format {FORMAT_VERSION}. Got "
            f"{info.get('model')!r} in format {info.get('format_version')!r}"
        )
    Population.from_dict(info["population"])
    for key in ("mean", "std"):
        np.asarray(info["standardisation"][key], dtype=np.float32)
    return info


def _read_folder(path: Path):
    """Tokenizer, schema, config and ``ehrgen.json`` of a model folder, checked."""
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise SchemaError(
                f"{path / name}: missing; an LSTMMLP model folder holds "
                f"{list(MODEL_FILES)} (written by save_pretrained)."
            )
    info = _read_json(path / "ehrgen.json", _check_info)
    if info.get("torch_version") != torch.__version__:
        saved = info.get("torch_version")
        logger.warning("%s: saved with torch %s.", path, saved)
    config = _read_json(path / "config.json", LSTMMLPConfig.from_dict)
    schema = _read_json(path / "schema.json", CohortSchema.from_dict)
    stats = [len(info["standardisation"][key]) for key in ("mean", "std")]
    if stats != [len(schema.numerical)] * 2:
        raise SchemaError(
            f"{path / 'ehrgen.json'}: the standardisation has {stats} means and "
            f"deviations for the {len(schema.numerical)} numerical features."
        )
    tokenizer = CodeTokenizer.load(path / "tokenizer.json")
    return tokenizer, schema, config, info
