"""PromptBart: a BART encoder-decoder over code tokens, conditioned by prompt vectors.

The network is :class:`transformers.BartModel`, built from our config with random
weights (nothing is downloaded, no Hugging Face code is copied). We feed it
``inputs_embeds`` and ``decoder_inputs_embeds``: the prompt vectors of each side's
featurizer, then the token embeddings. The output layer is the token embedding matrix
(tied) plus a bias; the prompt positions of the decoder are dropped before it.

Logits are restricted by the grammar of a visit (:meth:`VisitGrammar.table`): at a
position where a modality's block is open, only that modality's codes and its close
token may come next (the reference implementation keeps one output head per modality
for the same reason); at the other positions, only the structural tokens (``<v>``,
``</v>``, ``<eos>`` and every modality's open token, so blocks may come in any order).
The loss is the negative log-likelihood under these restricted distributions, over
label positions only (never prompts, padding or ``<unk>``).

Two objectives share these parameters (``PromptEHRConfig.objective``): ``"paper"`` runs
BART's own bidirectional encoder over one history per example; ``"one-pass"`` runs the
same layers with a visit-block-causal encoder (:mod:`.blockwise`, :mod:`.one_pass`),
both on packed patients in training and on single histories when scoring or decoding
without the cache (:mod:`.streaming` decodes with it), so both paths agree.

:class:`PromptBart` is also the sampler's :class:`~ehrgen.generation.Decoder`: the
encoder runs once per visit, then the decoder one token per step (with its key/value
cache when asked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BartConfig, BartModel

from ehrgen.models.promptehr.config import PromptEHRConfig
from ehrgen.models.promptehr.featurizer import PromptFeaturizer
from ehrgen.tokens.grammar import VisitGrammar
from ehrgen.tokens.tokenizer import CodeTokenizer

__all__ = ["PromptBart", "PromptBartOutput"]

IGNORE = -100
MAX_VISIT_COUNT = 63  # visits in a context beyond this share one count embedding


@dataclass
class PromptBartOutput:
    """What :meth:`PromptBart.forward` returns.

    Attributes:
        loss_sum: summed negative log-likelihood of the label tokens (nats).
        n_tokens: number of label tokens scored.
        logits: (B, T, V) restricted logits (disallowed tokens at the dtype's minimum);
            for packed patients, (N, V) at the N label positions only.
        token_nll: packed patients only: (R, T) each label's negative log-likelihood
            (0 elsewhere), for per-target losses.
        loss_denominator: packed patients only: what the trainer divides the loss
            by (the batch's expected label tokens, ``one_pass.collate_patients``).
    """

    loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    logits: torch.Tensor
    token_nll: torch.Tensor | None = None
    loss_denominator: torch.Tensor | None = None


class PromptBart(nn.Module):
    """The PromptEHR network.

    Args:
        config: the architecture.
        tokenizer: gives the vocabulary size, special ids and the grammar masks.
        cardinalities: categories of each categorical baseline feature.
        n_numerical: number of numerical baseline features.
    """

    def __init__(
        self,
        config: PromptEHRConfig,
        tokenizer: CodeTokenizer,
        cardinalities: Sequence[int],
        n_numerical: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.pad_id, self.bos_id = tokenizer.pad_id, tokenizer.bos_id
        self.unk_id = tokenizer.unk_id
        bart_config = BartConfig(
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            decoder_start_token_id=tokenizer.bos_id,
            forced_eos_token_id=None,
            **config.bart_kwargs(),
        )
        self.bart = BartModel(bart_config)
        if not config.use_prompts:
            cardinalities, n_numerical = (), 0
        featurizer = {
            "cardinalities": cardinalities,
            "n_numerical": n_numerical,
            "hidden_dim": config.prompt_hidden_dim,
            "d_model": config.d_model,
        }
        self.encoder_prompts = PromptFeaturizer(**featurizer)
        self.decoder_prompts = PromptFeaturizer(**featurizer)
        self.objective = config.objective
        if self.objective == "one-pass":
            # Attention averages, so it cannot count: the decoder is told how many
            # visits its context holds (the paper's encoder shows it through the
            # position of its trailing <eos>), which the end of a patient hangs on.
            self.visit_count = nn.Embedding(MAX_VISIT_COUNT + 1, config.d_model)
            nn.init.normal_(self.visit_count.weight, std=config.init_std)
        self.visit_open_id, self.eos_id = tokenizer.visit_open_id, tokenizer.eos_id
        self.final_logits_bias = nn.Parameter(torch.zeros(tokenizer.vocab_size))
        allowed = VisitGrammar(tokenizer).table()  # (M+1, V), by label modality + 1
        self.register_buffer("allowed", allowed, persistent=False)

    @property
    def n_prompts(self) -> int:
        """Prompt vectors prepended on each side."""
        return self.encoder_prompts.n_prompts

    def _used(self, categorical: torch.Tensor, numerical: torch.Tensor):
        """The feature columns the prompts read (none without prompts)."""
        featurizer = self.encoder_prompts
        return (
            categorical[:, : len(featurizer.cardinalities)],
            numerical[:, : featurizer.n_numerical],
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings, (B, T) -> (B, T, D)."""
        return self.bart.shared(ids)

    def embed_target(self, ids: torch.Tensor, visits: torch.Tensor) -> torch.Tensor:
        """One-pass decoder inputs: token embeddings plus that of the number of
        visits in the context, (B, T) and (B, T) or (B, 1) -> (B, T, D)."""
        count = self.visit_count(visits.clamp(0, MAX_VISIT_COUNT))
        return self.embed(ids) + count

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        categorical: torch.Tensor,
        numerical: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder over [prompts; tokens]; return states and their mask.

        The mask is (B, P+S), 0 where a position is not seen (padding; the one-pass
        objective's trailing ``<eos>``); under the one-pass objective a seen position
        holds its visit level + 1 (1 for the prompts and ``<bos>``).
        """
        if self.objective == "one-pass":
            return self._encode_blockwise(
                input_ids, attention_mask, categorical, numerical
            )
        tokens = self.embed(input_ids)  # (B, S, D)
        prompts = self.encoder_prompts(*self._used(categorical, numerical))
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], 1)  # (B, P+S, D)
        mask = torch.cat(
            [attention_mask.new_ones(prompts.shape[:2]), attention_mask], 1
        )
        states = self.bart.encoder(inputs_embeds=embeds, attention_mask=mask)
        return states.last_hidden_state, mask  # (B, P+S, D), (B, P+S)

    def _encode_blockwise(self, input_ids, attention_mask, categorical, numerical):
        from ehrgen.models.promptehr import blockwise
        from ehrgen.models.promptehr.one_pass import PAD_GROUP, sees

        prompts = self.encoder_prompts(*self._used(categorical, numerical))
        tokens = self.embed(input_ids)
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], 1)  # (B, P+S, D)
        batch, n_prompts = prompts.shape[:2]
        zeros = input_ids.new_zeros(batch, n_prompts)
        level = torch.cat([zeros, (input_ids == self.visit_open_id).cumsum(1)], 1)
        valid = (attention_mask > 0) & (input_ids != self.eos_id)
        valid = torch.cat([zeros == 0, valid], 1)
        group = torch.where(valid, 0, PAD_GROUP)
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        encoder = self.bart.encoder
        hidden = blockwise.embed(
            encoder, embeds, positions.expand(batch, -1), self.training
        )
        states, _ = blockwise.encoder_layers(
            encoder, hidden, sees(level, group, level, group), training=self.training
        )
        return states, torch.where(valid, level + 1, 0)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None,
        encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor,
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        cache=None,
        use_cache: bool = False,
    ):
        """Run the decoder; prompts are prepended on the first call (empty cache).

        Returns the hidden states of the token positions only, (B, T, D), and the
        cache.
        """
        if self.objective == "one-pass":
            return self._decode_blockwise(
                decoder_input_ids,
                decoder_attention_mask,
                encoder_states,
                encoder_mask,
                categorical,
                numerical,
                cache,
                use_cache,
            )
        embeds = self.embed(decoder_input_ids)  # (B, T, D)
        first_call = cache is None or cache.get_seq_length() == 0
        n_prompts = self.n_prompts if first_call else 0
        if n_prompts:
            prompts = self.decoder_prompts(*self._used(categorical, numerical))
            prompts = prompts.to(embeds.dtype)
            embeds = torch.cat([prompts, embeds], 1)  # (B, P+T, D)
            if decoder_attention_mask is not None:
                ones = decoder_attention_mask.new_ones(prompts.shape[:2])
                decoder_attention_mask = torch.cat([ones, decoder_attention_mask], 1)
        out = self.bart.decoder(
            inputs_embeds=embeds,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=encoder_mask,
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state[:, n_prompts:], out.cache

    def _decode_blockwise(
        self,
        ids,
        ids_mask,
        states,
        encoder_mask,
        categorical,
        numerical,
        cache,
        use_cache,
    ):
        """The one-pass decoder over single targets: causal self-attention, every
        seen encoder position for the tokens, level 0 only for the prompts (as in
        the packed pass). ``cache``: None or ``{"self", "cross", "length"}``."""
        from ehrgen.models.promptehr import blockwise

        past = 0 if cache is None else cache["length"]
        count = cache["count"] if cache is not None else encoder_mask.amax(1) - 1
        embeds = self.embed_target(ids, count[:, None])
        n_prompts = self.n_prompts if past == 0 else 0
        batch = embeds.shape[0]
        if n_prompts:
            prompts = self.decoder_prompts(*self._used(categorical, numerical))
            embeds = torch.cat([prompts.to(embeds.dtype), embeds], 1)
        length, device = embeds.shape[1], embeds.device
        index = torch.arange(past, past + length, device=device)
        decoder = self.bart.decoder
        hidden = blockwise.embed(
            decoder, embeds, index.expand(batch, -1), self.training
        )
        total = past + length
        self_mask = torch.arange(total, device=device)[None, :] <= index[:, None]
        self_mask = self_mask.expand(batch, length, total)
        if ids_mask is not None and past == 0:
            keys = torch.cat([ids_mask.new_ones(batch, n_prompts), ids_mask], 1) > 0
            self_mask = self_mask & keys[:, None, :]
        cross = (
            cache["cross"]
            if cache is not None
            else blockwise.cross_keys_values(decoder, states)
        )
        is_prompt = (index < self.n_prompts)[None, :, None]
        seen = (encoder_mask > 0)[:, None, :]
        cross_mask = seen & (~is_prompt | (encoder_mask <= 1)[:, None, :])
        hidden, new = blockwise.decoder_layers(
            decoder,
            hidden,
            self_mask,
            cross,
            cross_mask,
            past=None if cache is None else cache["self"],
            training=self.training,
        )
        if not use_cache:
            return hidden[:, n_prompts:], None
        if cache is not None:
            new = [blockwise.concat(a, b) for a, b in zip(cache["self"], new)]
        cache = {"self": new, "cross": cross, "length": total, "count": count}
        return hidden[:, n_prompts:], cache

    def logits(
        self, hidden: torch.Tensor, label_modality: torch.Tensor
    ) -> torch.Tensor:
        """Restricted logits: (B, T, D), (B, T) modality index or -1 -> (B, T, V)."""
        logits = hidden @ self.bart.shared.weight.T + self.final_logits_bias
        allowed = self.allowed[(label_modality + 1).clamp(min=0)]  # (B, T, V)
        return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)

    def unrestricted_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) float32 logits over the whole vocabulary."""
        weight = self.bart.shared.weight.float()
        return hidden.float() @ weight.T + self.final_logits_bias.float()

    # ---- the sampler's Decoder interface (ehrgen.generation)

    def start(
        self,
        sources: Sequence[np.ndarray],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        prefix: torch.Tensor,
        *,
        use_cache: bool,
    ) -> _Decoding:
        """Encode each row's source once; the decoder will read ``<bos>`` + prefix.

        Args:
            sources: encoder token ids per row (``<bos>`` history ``<eos>``).
            categorical, numerical: (B, ·) baseline features.
            prefix: (B, L) tokens given after the decoder's ``<bos>``.
            use_cache: decode step by step with the key/value cache.
        """
        device = self.bart.shared.weight.device
        input_ids, mask = _pad_right(sources, self.pad_id)
        categorical, numerical = categorical.to(device), numerical.to(device)
        states, enc_mask = self.encode(
            input_ids.to(device), mask.to(device), categorical, numerical
        )
        bos = torch.full((len(sources), 1), self.bos_id, dtype=torch.long)
        history = torch.cat([bos, prefix.long()], 1).to(device)
        return _Decoding(states, enc_mask, categorical, numerical, history, use_cache)

    def next_logits(
        self, state: _Decoding, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, V) float32 CPU logits of the next token, after ``tokens`` (B,) were
        written (None on the first call: after the prefix)."""
        step = state.history
        if tokens is not None:
            step = tokens.long().unsqueeze(1).to(state.history.device)
            state.history = torch.cat([state.history, step], 1)
        if not state.use_cache:
            step, state.cache = state.history, None
        hidden, cache = self.decode(
            step,
            None,
            state.encoder_states,
            state.encoder_mask,
            state.categorical,
            state.numerical,
            cache=state.cache,
            use_cache=state.use_cache,
        )
        state.cache = cache if state.use_cache else None
        return self.unrestricted_logits(hidden[:, -1]).cpu()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> PromptBartOutput:
        """Teacher-forced loss of a collated batch: examples (``tasks.collate``) or
        packed patients (``one_pass.collate_patients``)."""
        if "encoder_ids" in batch:
            return self._forward_packed(batch)
        states, mask = self.encode(
            batch["input_ids"],
            batch["attention_mask"],
            batch["categorical"],
            batch["numerical"],
        )
        hidden, _ = self.decode(
            batch["decoder_input_ids"],
            batch["decoder_attention_mask"],
            states,
            mask,
            batch["categorical"],
            batch["numerical"],
        )
        logits = self.logits(hidden, batch["label_modality"])
        labels = batch["labels"].masked_fill(batch["labels"] == self.unk_id, IGNORE)
        nll = nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return PromptBartOutput(
            loss_sum=nll, n_tokens=(labels != IGNORE).sum(), logits=logits
        )

    def _forward_packed(self, batch: Mapping[str, torch.Tensor]) -> PromptBartOutput:
        """Every target of each row in one encoder and one decoder pass (the
        one-pass objective; masks in :mod:`.one_pass`)."""
        from ehrgen.models.promptehr import blockwise
        from ehrgen.models.promptehr.one_pass import sees

        categorical, numerical = self._used(batch["categorical"], batch["numerical"])
        n_prompts = self.n_prompts

        def with_prompts(prompts, ids, positions, *columns, visits=None):
            tokens = (
                self.embed(ids) if visits is None else self.embed_target(ids, visits)
            )
            rows = tokens.shape[0]
            zeros = ids.new_zeros(rows, n_prompts)
            prompt_positions = torch.arange(n_prompts, device=ids.device)
            return (
                torch.cat([prompts.to(tokens.dtype), tokens], 1),
                torch.cat(
                    [prompt_positions.expand(rows, -1), positions + n_prompts], 1
                ),
                *(torch.cat([zeros, c], 1) for c in columns),
            )

        embeds, positions, level, group = with_prompts(
            self.encoder_prompts(categorical, numerical),
            batch["encoder_ids"],
            batch["encoder_positions"],
            batch["encoder_level"],
            batch["encoder_group"],
        )
        encoder = self.bart.encoder
        hidden = blockwise.embed(encoder, embeds, positions, self.training)
        states, _ = blockwise.encoder_layers(
            encoder, hidden, sees(level, group, level, group), training=self.training
        )
        embeds, positions, segment, query_level, query_group = with_prompts(
            self.decoder_prompts(categorical, numerical),
            batch["decoder_ids"],
            batch["decoder_positions"],
            batch["decoder_segment"],
            batch["decoder_level"],
            batch["decoder_group"],
            # A cloze segment's context holds visits < t and the cloze copy of t.
            visits=batch["decoder_level"] + (batch["decoder_group"] > 0).long(),
        )
        decoder = self.bart.decoder
        hidden = blockwise.embed(decoder, embeds, positions, self.training)
        index = torch.arange(hidden.shape[1], device=hidden.device)
        same = (segment[:, None, :] == segment[:, :, None]) | (segment[:, None, :] == 0)
        self_mask = same & (index[None, None, :] <= index[None, :, None])
        cross_mask = sees(query_level, query_group, level, group)
        hidden, _ = blockwise.decoder_layers(
            decoder,
            hidden,
            self_mask,
            blockwise.cross_keys_values(decoder, states),
            cross_mask,
            training=self.training,
        )
        labels = batch["labels"]
        labels = labels.masked_fill(labels == self.unk_id, IGNORE)
        scored = labels != IGNORE  # (R, T): only these positions reach the output layer
        logits = self.logits(
            hidden[:, n_prompts:][scored], batch["label_modality"][scored]
        )  # (N, V)
        nll = nn.functional.cross_entropy(
            logits.float(), labels[scored], reduction="none"
        )
        token_nll = torch.zeros(labels.shape, dtype=nll.dtype, device=nll.device)
        token_nll[scored] = nll
        return PromptBartOutput(
            loss_sum=nll.sum(),
            n_tokens=scored.sum(),
            logits=logits,
            token_nll=token_nll,
            loss_denominator=batch.get("loss_denominator"),
        )


@dataclass
class _Decoding:
    """A batch being decoded: the encoder's output, the tokens read, the cache."""

    encoder_states: torch.Tensor  # (B, P+S, D)
    encoder_mask: torch.Tensor  # (B, P+S)
    categorical: torch.Tensor
    numerical: torch.Tensor
    history: torch.Tensor  # (B, T) <bos>, prefix, then every token written
    use_cache: bool
    cache: Any = None


def _pad_right(
    rows: Sequence[np.ndarray], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids right-padded with ``pad``, and the (B, L) 0/1 mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(np.asarray(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
