"""HALO (Theodorou et al., Nat. Commun. 2023): a hierarchical autoregressive model of
visits, then of the codes within each visit.

Reproduced: a *visit-level* causal transformer reads one vector per visit, the sum of
the embeddings of its codes (all modalities) plus a learned position, after a prefix
vector for the baseline features; its state after visits 1..t-1 conditions visit t.
Within visit t a *code-level* autoregressive model draws the codes one by one, so
that every code's probability is conditioned on the earlier visits and on the codes
already drawn in the visit; the product of these probabilities is the exact
likelihood of a patient. After each visit the model decides whether the patient ends.

Decided here (``docs/models.md``, HALO):

* **The code-level model is a small causal transformer over the visit's tokens**
  (``<v> <m> codes </m> ... </v>``, the tokenizer's serialisation), whose first
  position is the visit-level state and whose every input also carries it. HALO's
  code uses a masked "autoregressive multi-label" head instead: one Bernoulli per
  code of the whole vocabulary in a fixed code order. We chose the decoder because
  (1) the evaluation's *chain* protocol scores a modality's codes in their recorded
  order under a categorical distribution over that modality's codes, which a
  next-token decoder gives directly and a fixed-order Bernoulli chain does not;
  (2) its cost grows with the codes of a visit, not with the square of the
  vocabulary (each of HALO's masked layers holds V x V weights, 49M at 7k codes);
  (3) generation goes through the shared grammar-constrained sampler
  (:class:`~ehrgen.generation.VisitSampler`): well-formed visits, ``top_k`` /
  ``top_p``, the per-modality cap and a key/value cache come with it.
* **Order within a visit.** As in the GPT-2 baseline, each training epoch shuffles
  the codes of every block and permutes the blocks of half the visits
  (:func:`~ehrgen.models.baselines.gpt2_sequences._reorder_visits`): a modality is a
  set, so each step learns the distribution of any remaining code, and every modality
  is seen right after ``<v>``. Scoring then uses the same contexts as GPT-2:
  *longitudinal* modality m reads ``<v> <m>`` after the visit state; *cross-modal*
  reads ``<v>``, all of visit t's other blocks in the schema's order, then ``<m>``
  (the target modality last).
* **End of patient.** Before each visit the code-level model's first position
  chooses between ``<v>`` (another visit) and ``<eos>``: after the last visit an
  extra step whose only target is ``<eos>``. The first visit always comes.
* **Positions.** Histories and visits are never cut: visits past
  ``n_visit_positions`` (and tokens past ``n_code_positions`` within a visit) share
  the last learned position. HALO's code truncates histories at 48 visits instead.
* **Baseline features** become one prefix token each (a category, or a decile bin
  of a number, as in the GPT-2 baseline), whose embeddings are summed into the prefix
  vector; HALO's code has no demographics beyond its label vector.
* **Output layer** tied to the token embeddings, plus a bias started at each code's
  log training frequency (so that training spends its steps on structure).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen.data import Cohort
from ehrgen.models.base import CodeScores
from ehrgen.models.baselines.gpt2 import _Prefix
from ehrgen.models.baselines.halo_sequences import (
    IGNORE,
    _CodeDecoder,
    _loaders,
    _sample,
    _score,
)
from ehrgen.models.folder import Fitted
from ehrgen.models.trained import TrainedGenerator, check_schema
from ehrgen.tokens.grammar import VisitGrammar
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["HALO", "HALOConfig"]

logger = logging.getLogger(__name__)

MODEL_NAME = "halo"


@dataclass(frozen=True, kw_only=True)
class HALOConfig(ConfigMixin):
    """Sizes of HALO; :meth:`paper` has the published ones.

    Example:
        >>> HALOConfig.paper().n_embd, HALOConfig.tiny().n_layer
        (768, 1)
    """

    # Width of both levels (HALO's n_embd).
    n_embd: int = 128
    # Visit-level transformer layers (HALO's n_layer).
    n_layer: int = 3
    n_head: int = 4
    # Code-level decoder layers (HALO's code-level head has no layers to copy).
    n_code_layer: int = 2
    # Learned visit positions (HALO's n_positions); later visits share the last one.
    n_visit_positions: int = 56
    # Learned positions within a visit; later tokens share the last one.
    n_code_positions: int = 128
    # Residual, embedding and attention dropout alike.
    dropout: float = 0.1
    # Training: shuffle the codes of each block every epoch (see the module docstring).
    shuffle_codes: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive_ints(
            self,
            "n_embd",
            "n_layer",
            "n_head",
            "n_code_layer",
            "n_visit_positions",
            "n_code_positions",
        )
        divisor = f"a divisor of n_embd ({self.n_embd})"
        check(self.n_embd % self.n_head == 0, name, "n_head", divisor, self.n_head)
        check(0.0 <= self.dropout < 1.0, name, "dropout", "in [0, 1)", self.dropout)

    @classmethod
    def tiny(cls, **changes: Any) -> HALOConfig:
        """About ten thousand parameters on the demo cohort: for tests and docs;
        trains in seconds."""
        tiny = cls(
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_code_layer=1,
            n_visit_positions=16,
            n_code_positions=32,
            dropout=0.0,
        )
        return tiny.replace(**changes)

    @classmethod
    def small(cls, **changes: Any) -> HALOConfig:
        """About a million parameters: the CPU default."""
        return cls().replace(**changes)

    @classmethod
    def paper(cls, **changes: Any) -> HALOConfig:
        """HALO's published sizes: width 768, 12 visit-level layers, 12 heads, 56
        visit positions; a 2-layer code-level decoder of the same width."""
        paper = cls(n_embd=768, n_layer=12, n_head=12, n_code_layer=2)
        return paper.replace(**changes)


# --------------------------------------------------------------------------- network


class _Block(nn.Module):
    """A pre-LayerNorm transformer block whose causal attention can extend a
    key/value cache (nanoGPT's block, plus the cache)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past=None):
        """(B, T, D) new positions after ``past`` = (keys, values), each (B, H, P,
        D/H), or None -> (B, T, D) and the cache extended to P + T positions."""
        batch, steps, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(width, 2)
        shape = (batch, steps, self.heads, width // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        before = k.shape[2] - steps  # P: cached positions, all visible
        mask = None
        if before and steps > 1:  # new positions see the cache and their own past
            mask = torch.ones(steps, before + steps, dtype=torch.bool, device=x.device)
            mask = mask.tril(before)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=before == 0 and steps > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
        y = y.transpose(1, 2).reshape(batch, steps, width)  # (B, T, D)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln_2(x))), (k, v)


class _Stack(nn.Module):
    """Blocks and a final LayerNorm; the cache is one (keys, values) per block."""

    def __init__(self, layers: int, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            _Block(width, heads, dropout) for _ in range(layers)
        )
        self.ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, past=None):
        cache = []
        for i, block in enumerate(self.blocks):
            x, layer = block(x, None if past is None else past[i])
            cache.append(layer)
        return self.ln(x), cache


@dataclass
class _Output:
    """What the network returns to the shared trainer."""

    loss_sum: torch.Tensor
    n_tokens: torch.Tensor


class _Network(nn.Module):
    """Both levels: the visit-level transformer and the code-level decoder.

    Args:
        config: the sizes.
        tokenizer: the code vocabulary (the decoder's tokens).
        n_static: the number of prefix tokens of the baseline features.
    """

    def __init__(
        self, config: HALOConfig, tokenizer: CodeTokenizer, n_static: int
    ) -> None:
        super().__init__()
        width, self.config = config.n_embd, config
        sizes = (config.n_head, config.dropout)
        self.wte = nn.Embedding(tokenizer.vocab_size, width)
        self.bias = nn.Parameter(torch.zeros(tokenizer.vocab_size))
        self.static = nn.Embedding(max(n_static, 1), width)
        self.visit_position = nn.Embedding(config.n_visit_positions, width)
        self.visits = _Stack(config.n_layer, width, *sizes)
        self.context = nn.Linear(width, width)
        self.code_position = nn.Embedding(config.n_code_positions, width)
        self.codes = _Stack(config.n_code_layer, width, *sizes)
        self.drop = nn.Dropout(config.dropout)
        self.apply(_init)
        is_code = torch.as_tensor(tokenizer.token_modality >= 0)
        self.register_buffer("is_code", is_code, persistent=False)  # (V,)
        # (M+1, V): the grammar's training masks (see VisitGrammar.table).
        allowed = VisitGrammar(tokenizer).table()
        self.register_buffer("allowed", allowed, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.bias.device

    # ---- the visit level

    def static_vector(self, prefix: torch.Tensor) -> torch.Tensor:
        """(B, F) prefix token ids -> (B, D), the sum of their embeddings."""
        return self.static(prefix).sum(1)

    def visit_vectors(self, codes: torch.Tensor, counts: torch.Tensor):
        """(N,) code ids of consecutive visits with (n,) codes each -> (n, D), the
        sum of each visit's code embeddings."""
        if len(counts) == 0:
            return self.wte.weight.new_zeros(0, self.wte.embedding_dim)
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(codes, self.wte.weight, offsets, mode="sum")

    def history(self, inputs: torch.Tensor, past=None):
        """(B, T, D) visit-level inputs (the prefix vector, then visit vectors) after
        ``past`` -> (B, T, D) states (state t has read inputs 0..t) and the cache."""
        before = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(before, before + inputs.shape[1], device=self.device)
        positions = positions.clamp(max=self.config.n_visit_positions - 1)
        return self.visits(self.drop(inputs + self.visit_position(positions)), past)

    # ---- the code level

    def code_hidden(self, context: torch.Tensor, tokens: torch.Tensor, past=None):
        """(S, D) visit states, (S, L) tokens after ``past`` -> (S, L, D) hidden
        states and the cache. Position 0 of a sequence is the visit state alone:
        its token (any id) is ignored."""
        before = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(before, before + tokens.shape[1], device=self.device)
        embedded = self.wte(tokens) * (positions > 0).unsqueeze(-1)  # (S, L, D)
        positions = positions.clamp(max=self.config.n_code_positions - 1)
        x = embedded + self.code_position(positions) + self.context(context)[:, None]
        return self.codes(self.drop(x), past)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) next-token logits (tied to the token embeddings)."""
        return hidden @ self.wte.weight.T + self.bias

    def forward(self, batch: Mapping[str, torch.Tensor]) -> _Output:
        """Summed negative log-likelihood of every visit's tokens and of each
        patient's end, under the grammar's training masks."""
        prefix = self.static_vector(batch["prefix"])  # (B, D)
        steps = int(batch["n_visits"].max()) + 1
        inputs = prefix.new_zeros(len(prefix), steps, prefix.shape[1])  # (B, T+1, D)
        inputs[:, 0] = prefix
        vectors = self.visit_vectors(batch["codes"], batch["code_counts"])
        inputs[batch["visit_patient"], batch["visit_position"]] = vectors
        states, _ = self.history(inputs)  # (B, T+1, D)
        context = states[batch["slot_patient"], batch["slot_index"]]  # (S, D)
        hidden, _ = self.code_hidden(context, batch["tokens"])  # (S, L, D)
        logits = self.logits(hidden)
        lowest = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~self.allowed[batch["rows"]], lowest)
        targets = batch["targets"]  # (S, L)
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), reduction="sum"
        )
        return _Output(nll, (targets != IGNORE).sum())

    @torch.no_grad()
    def calibrate(self, tokenizer: CodeTokenizer) -> None:
        """Start each code's output bias at its log training frequency."""
        for m in tokenizer.modalities:
            start, stop = tokenizer.code_ranges[m]
            counts = torch.tensor(tokenizer.counts[m], dtype=torch.float32)
            if stop > start and counts.sum() > 0:
                self.bias[start:stop] = torch.log((counts + 1) / (counts + 1).sum())


def _init(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- the model


class HALO(TrainedGenerator):
    """HALO: visits through a causal transformer, codes through a decoder within each
    visit (see the module docstring); a :class:`~ehrgen.models.base.Generator` of
    the *chain* and *set* protocols. Its fitted state holds the baseline features'
    prefix (:class:`~ehrgen.models.baselines.gpt2._Prefix`).

    Args:
        config: the sizes (default :meth:`HALOConfig.small`).

    Example:
        >>> from ehrgen.data.demo import demo_cohort
        >>> from ehrgen.training import TrainingConfig
        >>> cohort = demo_cohort(16, seed=0)
        >>> model = HALO(HALOConfig.tiny()).fit(
        ...     cohort, training=TrainingConfig(epochs=1)
        ... )
        >>> bool((model.score_longitudinal(cohort, "chain").log_prob <= 0).all())
        True
        >>> len(model.generate(2, conditions={"gender": "F"}, seed=0))
        2
    """

    name = MODEL_NAME
    config_class = HALOConfig
    summary = (
        "HALO (Theodorou et al. 2023): a causal transformer over visits (each the sum "
        "of its code embeddings, the demographics as a prefix) and, within each "
        "visit, an autoregressive decoder over its codes."
    )
    protocols: tuple[str, ...] = ("chain", "set")

    def __init__(self, config: HALOConfig | None = None) -> None:
        self.config = config or HALOConfig.small()
        self._fitted = None

    # ---- hooks of the shared layer (ehrgen.models.trained)

    def _new_network(self, tokenizer, schema, train, state):
        prefix = state if state is not None else _Prefix.fit(train, 0)
        network = self._empty_network(tokenizer, schema, prefix)
        network.calibrate(tokenizer)
        return network, prefix

    def _empty_network(self, tokenizer, schema, state) -> _Network:
        return _Network(self.config, tokenizer, state.vocab_size)

    @classmethod
    def _state_from_dict(cls, data, tokenizer, schema) -> _Prefix:
        edges = data.get("decile_edges")
        if not isinstance(edges, Mapping) or set(edges) != set(schema.numerical):
            raise ValueError(
                f"HALO needs decile edges for the numerical features "
                f"{list(schema.numerical)}; got {edges!r}"
            )
        return _Prefix(schema, edges, 0)

    def _loaders(self, fitted, train, val, training):
        return _loaders(fitted, train, val, training, self.config.shuffle_codes)

    def _architecture(self) -> str:
        c = self.config
        return (
            f"visit transformer {c.n_layer} layers, code decoder {c.n_code_layer} "
            f"layers, width {c.n_embd}, {c.n_head} heads"
        )

    # ---- scoring

    def score_longitudinal(
        self, cohort: Cohort, protocol: str = "set", batch_size: int = 64
    ) -> CodeScores:
        """Each true in-vocabulary code of every visit t >= 1 (0-based), given the
        baseline features and visits 0..t-1.

        The code-level decoder reads the visit state after visits 0..t-1, then
        ``<v> <m>``. *chain*: modality m's codes follow in their recorded order,
        teacher forced, each scored given the ones before it; *set*: every code is
        scored under the distribution after ``<m>``. Either way the softmax covers
        m's codes only; codes unseen in training are skipped and counted.
        """
        return self._score(cohort, protocol, "longitudinal", batch_size)

    def score_cross_modal(
        self, cohort: Cohort, protocol: str = "set", batch_size: int = 64
    ) -> CodeScores:
        """Each true in-vocabulary code of every visit t >= 0, given visits 0..t-1
        and visit t's other modalities: the decoder reads ``<v>``, visit t's other
        blocks in the schema's order, then ``<m>`` (the target modality last), and
        scores as :meth:`score_longitudinal` does."""
        return self._score(cohort, protocol, "cross_modal", batch_size)

    def _score(self, cohort, protocol: str, task: str, batch_size: int):
        fitted = self._check_fitted()
        self._check_protocol(protocol, task)
        check_schema(cohort, fitted.schema, "HALO")
        return _score(fitted, cohort, protocol, task, batch_size)

    # ---- generation

    def _patient_sampler(self, fitted: Fitted, generation, generator):
        """Visits sampled one at a time (the model choosing ``<eos>`` after the
        first, capped by ``max_visits``) under the visit grammar; ``generation``
        gives ``temperature``, ``top_k``, ``top_p``, ``greedy``,
        ``max_codes_per_modality``, ``batch_size`` and ``use_cache`` (both
        levels)."""
        from ehrgen.generation import VisitSampler

        network, tok = fitted.network.eval(), fitted.tokenizer
        sampler = VisitSampler(_CodeDecoder(network), tok, generation, generator)

        def sample(statics):
            prefix = torch.tensor(
                [fitted.state.ids(s) for s in statics], dtype=torch.long
            ).reshape(len(statics), -1)
            histories = _sample(
                network, sampler, prefix, generation.max_visits, generation.use_cache
            )
            return [[tok.decode(t).visits[0] for t in h] for h in histories]

        return sample
