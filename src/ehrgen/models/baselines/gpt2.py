"""GPT-2 baseline: a causal language model over the serialised patients.

The paper's GPT-2 baseline (METHOD.md, Baselines) reads the same serialisation as
PromptEHR, left to right. Ours is :class:`transformers.GPT2LMHeadModel` with random
weights (nothing is downloaded). Baseline features become prefix tokens before
``<bos>``, one per feature::

    gender=F ethnicity=asian age:decile3 <bos> <v> <diagnosis> ... </v> ... <eos>

A categorical feature has one token per category plus "unknown"; a numerical one a
token per decile bin of the training cohort (the edges, aggregate quantiles, are saved
with the model) plus "missing". The loss covers the tokens from the first ``<v>`` to
``<eos>`` (never the prefix, padding or ``<unk>``) under the grammar's training masks
(:meth:`VisitGrammar.table`, the row chosen per position by the block open there):
inside a block only its modality's codes and close token, elsewhere only structural
tokens. As PromptEHR does, each training epoch reorders every visit: the codes within
each block are shuffled (``shuffle_codes``): a modality is a set, so the distribution
after ``<m>`` becomes that of any of its codes (what the "set" protocol scores), not of
the first one recorded; and in half the visits
(:data:`~ehrgen.models.baselines.gpt2_sequences.PERMUTE_BLOCKS`) the blocks come in a
random order, so that every modality is seen right after ``<v>``: chain scoring of
modality m then reads ``<v> <m> c1 ... cj`` after the history, a context seen in
training that holds none of the visit's other modalities. A patient longer than
``n_positions`` loses its oldest visits, never part of one (unless its newest visit
alone overflows: its beginning is kept, in its recorded order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import GPT2Config, GPT2LMHeadModel

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.data import Cohort, CohortSchema
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.generation import VisitSampler
from ehrgen.models.base import CodeScores
from ehrgen.models.baselines.gpt2_sequences import (
    _encode,
    _fit_context,
    _reorder_visits,
    _run_queries,
    _Slots,
)
from ehrgen.models.folder import Fitted
from ehrgen.models.trained import TrainedGenerator
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.grammar import VisitGrammar
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
        categorical = []
        for categories in self.schema.categorical.values():
            value = static.get(self.schema.features[len(categorical)])
            known = value is not None and str(value) in categories
            categorical.append(categories.index(str(value)) if known else -1)
        numerical = [float(static.get(name, np.nan)) for name in self.schema.numerical]
        return self.encoded_ids(np.array(categorical), np.array(numerical))

    def encoded_ids(self, categorical: np.ndarray, numerical: np.ndarray) -> list[int]:
        """:meth:`ids` of one patient of an encoded cohort: category indices (out of
        range when missing or unknown: the last token), raw numbers (NaN: missing)."""
        out = []
        for j, (name, categories) in enumerate(self.schema.categorical.items()):
            index = int(categorical[j])
            out.append(
                self.start[name]
                + (index if 0 <= index < len(categories) else len(categories))
            )
        for j, name in enumerate(self.schema.numerical):
            value = float(numerical[j])
            index = np.searchsorted(self.edges[name], value, side="right")
            out.append(self.start[name] + int(_N_BINS if np.isnan(value) else index))
        return out


@dataclass
class _Output:
    """What the training module returns to the shared trainer."""

    loss_sum: torch.Tensor
    n_tokens: torch.Tensor


class _LossModule(nn.Module):
    """The language model with the grammar's training masks on its logits."""

    def __init__(self, lm: GPT2LMHeadModel, tok: CodeTokenizer) -> None:
        super().__init__()
        self.lm = lm
        # (M+1, V): prefix ids, after the tokenizer's, are never targets.
        allowed = VisitGrammar(tok).table(width=lm.config.vocab_size)
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


@dataclass
class _CausalDecoding:
    """A batch being decoded: every row's tokens so far, left padded, and the cache."""

    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) 0 on the left padding
    use_cache: bool
    cache: Any = None


class _CausalDecoder:
    """The GPT-2 network as the sampler's :class:`~ehrgen.generation.Decoder`: a
    row's source is its whole context (demographic prefix, ``<bos>``, history) and the
    sampler's prefix follows it; rows are left padded so that every row's next token
    goes in the same column, and positions skip the padding."""

    def __init__(self, lm: GPT2LMHeadModel, pad_id: int) -> None:
        self.lm, self.pad_id = lm, pad_id

    def start(self, sources, categorical, numerical, prefix, *, use_cache: bool):
        """Read the contexts (the features live in their prefix tokens)."""
        rows = [torch.cat([torch.as_tensor(s).long(), p.long()])
                for s, p in zip(sources, prefix)]  # fmt: skip
        device = next(self.lm.parameters()).device
        ids = pad_sequence(rows, True, self.pad_id, "left").to(device)
        return _CausalDecoding(ids, (ids != self.pad_id).long(), use_cache)

    def next_logits(self, state: _CausalDecoding, tokens) -> torch.Tensor:
        """(B, V) logits of the next token, prefix tokens included (never allowed)."""
        step = state.ids
        if tokens is not None:
            step = tokens.long().unsqueeze(1).to(state.ids.device)
            state.ids = torch.cat([state.ids, step], 1)
            state.mask = torch.cat([state.mask, state.mask[:, -1:]], 1)
        if not state.use_cache:
            step, state.cache = state.ids, None
        positions = (state.mask.cumsum(1) - 1).clamp(min=0)[:, -step.shape[1] :]
        out = self.lm(
            step, attention_mask=state.mask, position_ids=positions,
            cache=state.cache, use_cache=state.use_cache,
        )  # fmt: skip
        state.cache = out.cache if state.use_cache else None
        return out.logits[:, -1].float().cpu()


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

        *chain*: the context is the prefix, visits 0..t-1, ``<v>`` and the
        modality's open token; its codes follow in recorded order, teacher forced, so
        code j is scored given the history and codes 1..j-1 of its own modality, never
        the visit's other modalities (training permutes blocks, so ``<v> <m>`` is a
        context seen there). *set*: the same context up to the open token; every code
        is scored under that one distribution. Either way the softmax covers the
        modality's codes only. Codes unseen in training are skipped and counted; one
        forward pass per context, batched.
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
        :meth:`score_longitudinal`. Training permutes the blocks of half the visits,
        so this order occurs there, though rarely for one target among many blocks.
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
        data = TokenizedCohort.from_cohort(cohort, fitted.tokenizer)
        for p in range(len(data)):
            slots = _Slots(fitted, data, p, limit)
            n_oov += slots.add(p, task, protocol, queries, rows)
        log_probs = _run_queries(fitted, queries, len(rows), batch_size)
        return CodeScores.from_rows(
            [(*row, lp) for row, lp in zip(rows, log_probs.tolist())],
            fitted.tokenizer.modalities, protocol, task, model="gpt2",
            n_out_of_vocabulary=n_oov,
        )  # fmt: skip

    # ---- generation

    def _patient_sampler(self, fitted, generation, generator):
        """Visits sampled one at a time under the visit grammar, the model choosing
        ``<eos>`` after the first (capped by ``max_visits``)."""
        tok = fitted.tokenizer
        decoder = _CausalDecoder(fitted.network, tok.pad_id)
        sampler = VisitSampler(decoder, tok, generation, generator)
        # The context leaves room for the longest visit the sampler may write.
        limit = self.config.n_positions - sampler.max_steps()
        if limit <= len(fitted.schema.features) + 1:
            raise ConfigError(
                f"n_positions ({self.config.n_positions}) leaves no room for a history "
                f"before a visit of up to {sampler.max_steps()} tokens; lower "
                f"GenerationConfig.max_codes_per_modality or use a larger n_positions."
            )

        def sample(statics):
            histories = _sample(fitted, sampler, statics, generation.max_visits, limit)
            return [[tok.decode(t).visits[0] for t in h] for h in histories]

        return sample


# --------------------------------------------------------------------------- helpers


def _loaders(fitted: Fitted, train, val, training: TrainingConfig, config):
    """``train_loader(epoch)`` and the validation loader. Each epoch's order and
    reordering of visits (see the module docstring) follow from (seed, epoch), so a
    resumed run sees the same data; validation keeps the recorded order."""
    from torch.utils.data import DataLoader

    from ehrgen.tokens.batching import length_grouped_order

    tok, first = fitted.tokenizer, len(fitted.state.schema.features)  # <bos> index
    grammar, limit = VisitGrammar(tok), config.n_positions
    data = _encode(fitted, TokenizedCohort.from_cohort(train, tok), limit)
    lengths = np.array([len(ids) for ids in data])

    def collate(batch):
        return _collate(batch, first, tok.pad_id, tok.unk_id)

    def train_loader(epoch: int) -> DataLoader:
        rng = np.random.default_rng([training.seed, epoch])
        order = length_grouped_order(lengths, training.batch_size, rng)
        shuffle = config.shuffle_codes
        ids = [_reorder_visits(data[i], grammar, rng, shuffle) for i in order]
        examples = [(x, grammar.rows(x)) for x in ids]  # rows follow the new order
        return DataLoader(
            examples, training.batch_size, collate_fn=collate,
            num_workers=training.num_workers,
        )  # fmt: skip

    if val is None:
        return train_loader, None
    val_data = _encode(fitted, TokenizedCohort.from_cohort(val, tok), limit)
    val_data = [(ids, grammar.rows(ids)) for ids in val_data]
    return train_loader, DataLoader(val_data, training.batch_size, collate_fn=collate)


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
