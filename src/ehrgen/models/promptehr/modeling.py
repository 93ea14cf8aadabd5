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


@dataclass
class PromptBartOutput:
    """What :meth:`PromptBart.forward` returns.

    Attributes:
        loss_sum: summed negative log-likelihood of the label tokens (nats).
        n_tokens: number of label tokens scored.
        logits: (B, T, V) restricted logits (disallowed tokens at the dtype's minimum).
    """

    loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    logits: torch.Tensor


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

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        categorical: torch.Tensor,
        numerical: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder over [prompts; tokens]; return states and their mask."""
        tokens = self.embed(input_ids)  # (B, S, D)
        prompts = self.encoder_prompts(*self._used(categorical, numerical))
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], 1)  # (B, P+S, D)
        mask = torch.cat(
            [attention_mask.new_ones(prompts.shape[:2]), attention_mask], 1
        )
        states = self.bart.encoder(inputs_embeds=embeds, attention_mask=mask)
        return states.last_hidden_state, mask  # (B, P+S, D), (B, P+S)

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
        """Teacher-forced loss of a collated batch (see ``tasks.collate``)."""
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
