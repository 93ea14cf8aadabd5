"""GPT-2 baseline: a causal language model over the serialised patients.

The paper's GPT-2 baseline (METHOD.md, Baselines) reads the same serialisation as
PromptEHR, left to right. Ours is :class:`transformers.GPT2LMHeadModel` with random
weights (nothing is downloaded). Baseline features become prefix tokens before
``<bos>``, one per feature::

    gender=F ethnicity=asian age:decile3 <bos> <v> <diagnosis> ... </v> ... <eos>

A categorical feature has one token per category plus "unknown"; a numerical one a
token per decile bin of the training cohort (the edges, aggregate quantiles, are saved
with the model) plus "missing". The loss covers the tokens from the first ``<v>`` to
``<eos>`` (never the prefix, padding or ``<unk>``) under PromptEHR's grammar masks
(:func:`allowed_tokens`, the row chosen per position by the block open there): inside
a block only its modality's codes and close token, elsewhere only structural tokens.
As PromptEHR does, each training epoch shuffles the codes within every block: a
modality is a set, so the distribution after ``<m>`` becomes that of any of its codes
(what the "set" protocol scores), not of the first one recorded. A patient longer than
``n_positions`` loses its oldest visits, never part of one (unless its newest visit
alone overflows: its beginning is kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import GPT2Config, GPT2LMHeadModel

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.data import Cohort, CohortSchema, Patient, Visit
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import _DONE, GenerationConfig, VisitSampler
from ehrgen.models.base import CodeScores
from ehrgen.models.folder import Fitted
from ehrgen.models.promptehr.modeling import allowed_tokens
from ehrgen.models.trained import TrainedGenerator, new_seed
from ehrgen.tokens.tokenizer import CodeTokenizer
from ehrgen.training import TrainingConfig

__all__ = ["GPT2Baseline", "GPT2BaselineConfig"]

logger = logging.getLogger(__name__)

IGNORE = -100  # cross_entropy's default ignore_index
FORMAT_VERSION = 1
_N_BINS = 10  # deciles
_FILES = ("config.json", "tokenizer.json", "schema.json", "model.safetensors")


@dataclass(frozen=True, kw_only=True)
class GPT2BaselineConfig(ConfigMixin):
    """Architecture of the GPT-2 baseline (fields keep GPT-2's names).

    Example:
        >>> GPT2BaselineConfig.paper().n_layer
        12
    """

    n_embd: int = 128
    n_layer: int = 3
    n_head: int = 4
    # Positions cover the demographic prefix too; longer patients lose old visits.
    n_positions: int = 1024
    # Residual, embedding and attention dropout alike.
    dropout: float = 0.1
    # Training: shuffle the codes of each block every epoch (see the module docstring).
    shuffle_codes: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive_ints(self, "n_embd", "n_layer", "n_head", "n_positions")
        divisor = f"a divisor of n_embd ({self.n_embd})"
        check(self.n_embd % self.n_head == 0, name, "n_head", divisor, self.n_head)
        check(0.0 <= self.dropout < 1.0, name, "dropout", "in [0, 1)", self.dropout)

    @classmethod
    def tiny(cls, **changes: Any) -> GPT2BaselineConfig:
        """About 30k parameters: for tests and docs; trains in seconds."""
        tiny = cls(n_embd=32, n_layer=2, n_head=2, n_positions=256, dropout=0.0)
        return tiny.replace(**changes)

    @classmethod
    def small(cls, **changes: Any) -> GPT2BaselineConfig:
        """About a million parameters: the CPU default."""
        return cls().replace(**changes)

    @classmethod
    def paper(cls, **changes: Any) -> GPT2BaselineConfig:
        """GPT-2 (124M) sizes, as in the paper: 12 layers, width 768, 12 heads."""
        return cls(n_embd=768, n_layer=12, n_head=12).replace(**changes)

    def gpt2_config(self, vocab_size: int, tok: CodeTokenizer) -> GPT2Config:
        """The :class:`transformers.GPT2Config` for a vocabulary of this size."""
        names = ("n_embd", "n_layer", "n_head", "n_positions")
        fields = {name: getattr(self, name) for name in names}
        dropouts = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"))
        return GPT2Config(
            vocab_size=vocab_size,
            bos_token_id=tok.bos_id,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
            **fields,
            **{name: self.dropout for name in dropouts},
        )


class _Prefix:
    """Baseline features -> prefix token ids, numbered after the tokenizer's.

    Args:
        schema: the features (categorical first, as ``schema.features``).
        edges: numerical feature -> its nine decile edges (empty: a single bin).
        offset: the first id after the tokenizer's.
    """

    def __init__(self, schema: CohortSchema, edges: Mapping[str, Any], offset: int):
        self.schema, self.edges = schema, {k: list(v) for k, v in edges.items()}
        self.start: dict[str, int] = {}
        size = offset
        for name, categories in schema.categorical.items():
            self.start[name], size = size, size + len(categories) + 1  # + unknown
        for name in schema.numerical:
            self.start[name], size = size, size + _N_BINS + 1  # + missing
        self.vocab_size = size  # the whole model's vocabulary

    @classmethod
    def fit(cls, cohort: Cohort, offset: int) -> _Prefix:
        levels = np.arange(1, _N_BINS) / _N_BINS
        edges = {}
        for name in cohort.schema.numerical:
            known = cohort.static[name][~np.isnan(cohort.static[name])]
            edges[name] = np.quantile(known, levels).tolist() if known.size else []
        return cls(cohort.schema, edges, offset)

    def to_dict(self) -> dict[str, Any]:
        """The model folder's state: the decile edges (aggregate quantiles)."""
        return {"decile_edges": self.edges}

    def ids(self, static: Mapping[str, Any]) -> list[int]:
        """One token per feature, in the schema's order."""
        out = []
        for name, categories in self.schema.categorical.items():
            value = static.get(name)  # missing or unknown: the last token
            known = value is not None and str(value) in categories
            index = categories.index(str(value)) if known else len(categories)
            out.append(self.start[name] + index)
        for name in self.schema.numerical:
            value = float(static.get(name, np.nan))
            index = np.searchsorted(self.edges[name], value, side="right")
            out.append(self.start[name] + int(_N_BINS if np.isnan(value) else index))
        return out


# --------------------------------------------------------------------------- sequences


def _fit_context(head, visits: Sequence[Sequence[int]], tail, limit: int):
    """``head`` + the newest whole visits that fit + ``tail``, at most ``limit`` ids,
    and where ``tail`` starts. When even the newest visit does not fit, its
    beginning is kept (the only cut inside a visit)."""
    budget, kept = limit - len(head) - len(tail), []
    for visit in reversed(visits):
        if len(visit) > budget:
            kept += [visit[:budget]] if not kept and budget > 0 else []
            break
        kept.append(visit)
        budget -= len(visit)
    ids = [*head, *(t for visit in reversed(kept) for t in visit)]
    return [*ids, *tail][:limit], len(ids)


def _structure(tok: CodeTokenizer, vocab_size: int) -> np.ndarray:
    """Token id -> m+1 for modality m's open token, 0 for the other structural tokens,
    -1 for the rest (codes, ``<unk>``, prefix)."""
    lookup = np.full(vocab_size, -1, dtype=np.int64)
    structural = [tok.bos_id, tok.eos_id, tok.visit_open_id, tok.visit_close_id]
    lookup[[*structural, *tok.close_ids.values()]] = 0
    lookup[[tok.open_ids[m] for m in tok.modalities]] = (
        np.arange(len(tok.modalities)) + 1
    )
    return lookup


def _grammar_rows(ids: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """(T,) the :func:`allowed_tokens` row for the token after each position: m+1
    while modality m's block is open, else 0 (the last structural token decides)."""
    events = lookup[ids]
    last = np.maximum.accumulate(np.where(events >= 0, np.arange(len(ids)), -1))
    return np.where(last >= 0, events[np.maximum(last, 0)], 0)


def _shuffle_codes(ids: np.ndarray, lookup, first: int, rng) -> np.ndarray:
    """``ids`` with the codes of each block in random order (blocks stay put)."""
    events = lookup[ids]
    codes = np.flatnonzero((events < 0) & (np.arange(len(ids)) > first))
    block = np.cumsum(events > 0)[codes]  # which block each code is in
    out = ids.copy()
    out[codes] = ids[codes[np.argsort(block + rng.random(len(codes)))]]
    return out


@dataclass
class _Output:
    """What the training module returns to the shared trainer."""

    loss_sum: torch.Tensor
    n_tokens: torch.Tensor


class _LossModule(nn.Module):
    """The language model with PromptEHR's grammar masks on its logits (training)."""

    def __init__(self, lm: GPT2LMHeadModel, tok: CodeTokenizer) -> None:
        super().__init__()
        self.lm = lm
        allowed = torch.zeros(len(tok.modalities) + 1, lm.config.vocab_size, dtype=bool)
        allowed[:, : tok.vocab_size] = allowed_tokens(tok)  # prefix ids: never targets
        self.register_buffer("allowed", allowed, persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> _Output:
        out = self.lm(input_ids=batch["input_ids"], attention_mask=batch["mask"])
        allowed = self.allowed[batch["rows"]]  # (B, T, V)
        logits = out.logits.masked_fill(~allowed, torch.finfo(out.logits.dtype).min)
        labels = batch["labels"]  # (B, T)
        nll = nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), reduction="sum"
        )
        return _Output(nll, (labels != IGNORE).sum())


def _collate(examples, first_label: int, pad: int, unk: int) -> dict[str, Any]:
    """A right-padded batch of (ids, grammar rows); position i predicts token i+1,
    from ``<bos>`` (at ``first_label``) on."""
    ids = pad_sequence([torch.from_numpy(i) for i, _ in examples], True, pad)
    rows = pad_sequence([torch.from_numpy(r) for _, r in examples], True, 0)
    mask = (ids != pad).long()  # <pad> only ever pads
    labels = torch.full_like(ids, IGNORE)
    labels[:, first_label:-1] = ids[:, first_label + 1 :]
    labels[(labels == pad) | (labels == unk)] = IGNORE  # padding; codes unseen in fit
    return {"input_ids": ids, "mask": mask, "labels": labels, "rows": rows}


# --------------------------------------------------------------------------- sampling


class _CausalSampler(VisitSampler):
    """:class:`VisitSampler` over a decoder-only model: a row's source is its whole
    context (prefix, ``<bos>``, history), followed by what the base class puts after
    the decoder's ``<bos>`` in ``prefix``; the grammar logic is the base class's."""

    def _run(self, sources, categorical, numerical, prefix, state) -> list[list[int]]:
        rows = [torch.cat([torch.as_tensor(s), p[1:]]) for s, p in zip(sources, prefix)]
        # Left padding: every row's next token goes in the same column.
        ids = pad_sequence(rows, True, self.tok.pad_id, "left").to(self.device)
        mask = (ids != self.tok.pad_id).long()
        emitted: list[list[int]] = [[] for _ in rows]
        use_cache, cache, step = self.config.use_cache, None, ids
        for _ in range(self._max_steps()):
            positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -step.shape[1] :]
            out = self.model(
                step, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=use_cache,
            )  # fmt: skip
            # Prefix tokens are never sampled: the grammar covers the tokenizer's ids.
            logits = out.logits[:, -1, : self.tok.vocab_size].float().cpu()
            token = self._choose(logits, state)
            for row in torch.nonzero(state.phase != _DONE).flatten().tolist():
                emitted[row].append(int(token[row]))
            state.advance(token, self)
            if bool((state.phase == _DONE).all()):
                break
            new = token.unsqueeze(1).to(self.device)
            ids, mask = torch.cat([ids, new], 1), torch.cat([mask, mask[:, -1:]], 1)
            cache, step = (out.cache, new) if use_cache else (None, ids)
        return emitted


# --------------------------------------------------------------------------- the model


class GPT2Baseline(TrainedGenerator):
    """GPT-2 over serialised patients, demographics as prefix tokens (see the module
    docstring); a :class:`~ehrgen.models.base.Generator`. Its fitted state holds the
    prefix (:class:`_Prefix`) as the model's own state.

    Args:
        config: the architecture (default :meth:`GPT2BaselineConfig.small`).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> model = GPT2Baseline(GPT2BaselineConfig.tiny()).fit(
        ...     demo_cohort(16, seed=0), training=TrainingConfig(epochs=1)
        ... )
        >>> len(model.generate(2, conditions={"gender": "F"}, seed=0))
        2
    """

    name = "gpt2"
    config_class = GPT2BaselineConfig
    summary = (
        "The paper's GPT-2 baseline: a causal language model over the serialised "
        "patients, with the demographics as prefix tokens."
    )
    protocols: tuple[str, ...] = ("chain", "set")

    def __init__(self, config: GPT2BaselineConfig | None = None) -> None:
        self.config = config or GPT2BaselineConfig.small()
        self._fitted = None

    def fit(
        self,
        train: Cohort,
        val: Cohort | None = None,
        training: TrainingConfig | None = None,
        *,
        output_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        progress: bool = False,
    ) -> GPT2Baseline:
        """Train on ``train`` with the shared :class:`~ehrgen.training.Trainer`.

        Args:
            train: the training cohort.
            val: a validation cohort (same schema): the best epoch is kept.
            training: optimisation settings (the paper: lr 1e-5, weight decay 1e-4).
            output_dir: checkpoints and metrics (a temporary folder when None).
            resume_from: a ``checkpoints/step-N`` folder of an earlier run on the
                same cohort (vocabulary, decile edges and weights come from it).
            progress: show a progress bar.

        Returns:
            self, fitted.
        """
        return self._fit(
            train,
            val,
            training or TrainingConfig(),
            output_dir=output_dir,
            resume_from=resume_from,
            progress=progress,
        )

    def _new_network(self, tokenizer, schema, train, state):
        prefix = (
            state if state is not None else _Prefix.fit(train, tokenizer.vocab_size)
        )
        return self._empty_network(tokenizer, schema, prefix), prefix

    def _empty_network(self, tokenizer, schema, state) -> GPT2LMHeadModel:
        return GPT2LMHeadModel(self.config.gpt2_config(state.vocab_size, tokenizer))

    @classmethod
    def _state_from_dict(cls, data, tokenizer, schema) -> _Prefix:
        edges = data["decile_edges"]
        if set(edges) != set(schema.numerical):
            raise ValueError(
                f"decile edges for {sorted(edges)}; the schema's numerical features "
                f"are {list(schema.numerical)}"
            )
        return _Prefix(schema, edges, tokenizer.vocab_size)

    def _training_module(self, fitted: Fitted) -> _LossModule:
        return _LossModule(fitted.network, fitted.tokenizer)

    def _network_of(self, module: Any) -> GPT2LMHeadModel:
        return module.lm if isinstance(module, _LossModule) else module

    def _loaders(self, fitted, train, val, training):
        return _loaders(fitted, train, val, training, self.config)

    def _architecture(self) -> str:
        c = self.config
        return f"{c.n_layer} layers, width {c.n_embd}, {c.n_head} heads"

    # ---- scoring

    def score_longitudinal(
        self, cohort: Cohort, protocol: str = "set", batch_size: int = 64
    ) -> CodeScores:
        """Each true in-vocabulary code of every visit t >= 1 (0-based), given the
        prefix and visits 0..t-1.

        *chain*: the context is the prefix, visits 0..t-1, ``<v>``, the blocks of visit
        t before the modality (schema order) and its open token; its codes follow in
        recorded order, all teacher forced. *set*: the prefix, visits 0..t-1, ``<v>``
        and the open token; every code is scored under that one distribution. Either
        way the softmax covers the modality's codes only. Codes unseen in training
        are skipped and counted; one forward pass per context, batched.
        """
        return self._score(cohort, protocol, "longitudinal", batch_size)

    def score_cross_modal(
        self, cohort: Cohort, protocol: str = "set", batch_size: int = 64
    ) -> CodeScores:
        """Each true in-vocabulary code of every visit t >= 0, given visits 0..t-1
        and visit t's other modalities.

        A causal model cannot see what follows the target, so the context is the
        prefix, visits 0..t-1, ``<v>``, *all* of visit t's other blocks (schema order)
        and the target's open token, then *chain* or *set* as in
        :meth:`score_longitudinal`. Unless the target is the visit's last block this
        order never occurs in training: a weakness of the baseline, kept on purpose.
        """
        return self._score(cohort, protocol, "cross_modal", batch_size)

    def _score(self, cohort: Cohort, protocol: str, task: str, batch_size: int):
        fitted = self._check_fitted()
        expected = f"one of {list(self.protocols)}"
        ok = protocol in self.protocols
        check(ok, "GPT2Baseline", "protocol", expected, protocol)
        _check_cohort(cohort, fitted.state.schema, "scored")
        queries: list = []
        rows: list[tuple[int, int, int, str]] = []
        n_oov, limit = 0, self.config.n_positions
        for p, patient in enumerate(cohort):
            n_oov += _Slots(fitted, patient, limit).add(
                p, task, protocol, queries, rows
            )
        log_probs = _run_queries(fitted, queries, len(rows), batch_size)
        return CodeScores.from_rows(
            [(*row, lp) for row, lp in zip(rows, log_probs.tolist())],
            fitted.tokenizer.modalities, protocol, task, model="gpt2",
            n_out_of_vocabulary=n_oov,
        )  # fmt: skip

    # ---- generation

    def generate(
        self,
        n: int,
        conditions: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        generation: GenerationConfig | None = None,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Cohort:
        """``n`` synthetic patients from scratch (ids in the reserved synthetic
        range, see :data:`ehrgen.models.trained.SYNTHETIC_ID_BASE`); ``progress`` is
        called with the number of patients finished after each batch.

        Baseline features come from ``conditions`` (one mapping for all, or one per
        patient) and the training population for the rest; visits are sampled one at
        a time under the visit grammar, the model choosing ``<eos>`` after the first
        (capped by ``max_visits``); visit times come from the population.
        """
        fitted = self._check_fitted()
        generation = generation or GenerationConfig()
        seed = new_seed(seed)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        statics = self._statics(n, conditions, rng, "GPT2Baseline.generate")
        sampler = _CausalSampler(
            fitted.network, fitted.tokenizer, generation, generator
        )
        # The context leaves room for the longest visit the sampler may write.
        limit = self.config.n_positions - sampler._max_steps()
        if limit <= len(fitted.schema.features) + 1:
            raise ConfigError(
                f"n_positions ({self.config.n_positions}) leaves no room for a history "
                f"before a visit of up to {sampler._max_steps()} tokens; lower "
                f"GenerationConfig.max_codes_per_modality or use a larger n_positions."
            )
        histories: list[list[list[int]]] = []
        for start in range(0, n, generation.batch_size):
            chunk = statics[start : start + generation.batch_size]
            histories += _sample(fitted, sampler, chunk, generation.max_visits, limit)
            if progress:
                progress(len(chunk))
        tok = fitted.tokenizer
        visits = [[tok.decode(t).visits[0] for t in h] for h in histories]
        return self._synthetic_cohort(statics, visits, rng)


# --------------------------------------------------------------------------- helpers


def _encode(fitted: Fitted, patient: Patient, limit: int) -> np.ndarray:
    """prefix ``<bos>`` visits ``<eos>``, cut to ``limit`` from the oldest visit."""
    tok = fitted.tokenizer
    head = [*fitted.state.ids(patient.static), tok.bos_id]
    visits = [tok.encode_visit(v) for v in patient.visits]
    return np.array(_fit_context(head, visits, [tok.eos_id], limit)[0], dtype=np.int64)


def _loaders(fitted: Fitted, train, val, training: TrainingConfig, config):
    """``train_loader(epoch)`` and the validation loader. Each epoch's order and code
    shuffling follow from (seed, epoch), so a resumed run sees the same data."""
    from torch.utils.data import DataLoader

    from ehrgen.tokens.batching import length_grouped_order

    tok, first = fitted.tokenizer, len(fitted.state.schema.features)  # <bos> index
    lookup, limit = _structure(tok, fitted.state.vocab_size), config.n_positions
    data = [_encode(fitted, patient, limit) for patient in train]
    rows = [_grammar_rows(ids, lookup) for ids in data]  # shuffling keeps them
    lengths = np.array([len(ids) for ids in data])

    def collate(batch):
        return _collate(batch, first, tok.pad_id, tok.unk_id)

    def train_loader(epoch: int) -> DataLoader:
        rng = np.random.default_rng([training.seed, epoch])
        order = length_grouped_order(lengths, training.batch_size, rng)
        if config.shuffle_codes:
            ids = [_shuffle_codes(data[i], lookup, first, rng) for i in order]
        else:
            ids = [data[i] for i in order]
        examples = [(x, rows[i]) for x, i in zip(ids, order)]
        return DataLoader(
            examples, training.batch_size, collate_fn=collate,
            num_workers=training.num_workers,
        )  # fmt: skip

    if val is None:
        return train_loader, None
    val_data = [_encode(fitted, patient, limit) for patient in val]
    val_data = [(ids, _grammar_rows(ids, lookup)) for ids in val_data]
    return train_loader, DataLoader(val_data, training.batch_size, collate_fn=collate)


class _Slots:
    """The scoring contexts of one patient (see ``score_longitudinal`` and
    ``score_cross_modal``)."""

    def __init__(self, fitted: Fitted, patient: Patient, limit: int) -> None:
        self.tok, self.patient, self.limit = fitted.tokenizer, patient, limit
        self.head = [*fitted.state.ids(patient.static), self.tok.bos_id]
        self.visits = [self.tok.encode_visit(v) for v in patient.visits]

    def add(self, p: int, task: str, protocol: str, queries: list, rows: list) -> int:
        """Append ``(ids, [(position, modality, token id, row index)])`` per context to
        ``queries`` and ``(patient, visit, modality, code)`` to ``rows``; return the
        number of out-of-vocabulary codes."""
        n_oov, chain, tok = 0, protocol == "chain", self.tok
        for t in range(1 if task == "longitudinal" else 0, len(self.visits)):
            blocks = self._blocks(self.patient.visits[t])
            for k, block in blocks.items():
                if task == "cross_modal":  # all other blocks, whatever their order
                    before = [j for i, b in blocks.items() if i != k for j in b]
                else:  # chain: the blocks before this one; set: none
                    earlier = [b for i, b in blocks.items() if i < k and chain]
                    before = [j for b in earlier for j in b]
                tail = [tok.visit_open_id, *before, *block[: -1 if chain else 1]]
                ids, start = _fit_context(self.head, self.visits[:t], tail, self.limit)
                at = start + 1 + len(before)  # the open token: it predicts code 0
                codes = self.patient.visits[t].codes(tok.modalities[k])
                items = []
                for j, (code, token) in enumerate(zip(codes, block[1:-1])):
                    position = at + j if chain else at
                    if token == tok.unk_id:
                        n_oov += 1
                    elif position < len(ids):  # else a visit longer than the window
                        items.append((position, k, token, len(rows)))
                        rows.append((p, t, k, code))
                if items:
                    queries.append((ids, items))
        return n_oov

    def _blocks(self, visit: Visit) -> dict[int, list[int]]:
        """Modality index -> ``<m> codes </m>``, for the modalities of the visit."""
        tok = self.tok
        return {
            k: [tok.open_ids[m], *(tok.code_id(m, c) for c in codes), tok.close_ids[m]]
            for k, m in enumerate(tok.modalities)
            if (codes := visit.codes(m))
        }


@torch.no_grad()
def _run_queries(fitted: Fitted, queries, n_rows: int, batch_size: int) -> np.ndarray:
    """(n_rows,) the log-probability of every query item, by row index."""
    lm, tok = fitted.network.eval(), fitted.tokenizer
    device = next(lm.parameters()).device
    out = np.full(n_rows, np.nan)
    order = sorted(range(len(queries)), key=lambda i: len(queries[i][0]))  # less pad
    for start in range(0, len(order), batch_size):
        batch = [queries[i] for i in order[start : start + batch_size]]
        ids = pad_sequence([torch.tensor(q) for q, _ in batch], True, tok.pad_id)
        mask = (ids != tok.pad_id).long()
        hidden = lm.transformer(
            input_ids=ids.to(device), attention_mask=mask.to(device)
        )
        # (N, 5): batch row, position, modality, token, row index.
        items = [[b, *item] for b, (_, its) in enumerate(batch) for item in its]
        items = torch.tensor(items)
        states = hidden.last_hidden_state[items[:, 0], items[:, 1]]  # (N, D)
        logits = lm.lm_head(states).float().cpu()  # only the positions read: (N, V)
        for k, m in enumerate(tok.modalities):
            sel, (lo, hi) = items[:, 2] == k, tok.code_ranges[m]
            log_p = logits[sel, lo:hi].log_softmax(-1)  # renormalised over m's codes
            picked = log_p.gather(1, items[sel, 3:4] - lo)[:, 0]
            out[items[sel, 4].numpy()] = picked.numpy()
    return out


def _sample(fitted: Fitted, sampler, statics, max_visits: int, limit: int):
    """Visits (token lists) of a batch of patients, sampled one visit at a time."""
    tok = fitted.tokenizer
    heads = [[*fitted.state.ids(s), tok.bos_id] for s in statics]
    histories: list[list[list[int]]] = [[] for _ in statics]
    active = list(range(len(statics)))
    empty = torch.zeros(len(statics), 0)  # the features live in the prefix tokens
    for _ in range(max_visits):
        if not active:
            break
        sources = [_fit_context(heads[i], histories[i], [], limit)[0] for i in active]
        allow_end = np.array([len(histories[i]) > 0 for i in active])
        out = sampler.visits(sources, empty[active], empty[active], allow_end)
        for i, tokens in zip(active, out):
            if tokens is not None:
                histories[i].append(tokens)
        active = [i for i, tokens in zip(active, out) if tokens is not None]
    return histories


def _check_cohort(cohort: Cohort, schema: CohortSchema, role: str) -> None:
    if len(cohort) == 0 or cohort.schema != schema:
        raise SchemaError(
            f"The {role} cohort must hold patients with schema {schema}. Got "
            f"{len(cohort)} patients with {cohort.schema}."
        )
