"""BART's layers run with explicit attention masks, positions and key/value caches.

:class:`transformers.BartEncoder` builds its own bidirectional mask and numbers the
positions of a row 0, 1, 2, ...; the one-pass objective (:mod:`.one_pass`) needs a mask
by visit block, positions that restart for each target visit in a packed decoder row,
and an encoder whose past visits stay cached while new ones are appended. This module
runs the very modules of a :class:`transformers.BartModel` (same parameters, same
arithmetic as BART's own forward when given BART's masks) through
:func:`torch.nn.functional.scaled_dot_product_attention` with boolean masks
(``True``: may attend).

Caches are plain per-layer ``(keys, values)`` pairs of shape (B, H, L, d_head), with a
(B, L) bool mask of the cached positions that hold a token (rows of a batch grow by
different lengths, so a cache may hold padding holes).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "KeyValues",
    "concat",
    "cross_keys_values",
    "decoder_layer_step",
    "decoder_layers",
    "embed",
    "encoder_layers",
    "project",
]

KeyValues = tuple[torch.Tensor, torch.Tensor]  # (B, H, L, d_head) each
_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding's reserved first rows


def embed(
    stack: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, training: bool
) -> torch.Tensor:
    """Add the stack's learned positions (B, L) to token embeddings (B, L, D), then
    its embedding layer norm and dropout, as BART's encoder and decoder do."""
    hidden = embeds + stack.embed_positions.weight[positions + _POSITION_OFFSET]
    hidden = stack.layernorm_embedding(hidden)
    return F.dropout(hidden, p=stack.dropout, training=training)


def project(attention: nn.Module, states: torch.Tensor) -> KeyValues:
    """The keys and values of ``states`` (B, L, D) for one attention module."""
    return _heads(attention.k_proj(states), attention), _heads(
        attention.v_proj(states), attention
    )


def _heads(x: torch.Tensor, attention: nn.Module) -> torch.Tensor:
    batch, length, width = x.shape
    heads = attention.num_heads
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Lq, Lk) bool -> (B, 1, Lq, Lk) 0 / -inf, made once for every layer (the
    attention kernels would otherwise convert a bool mask at each call)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, float("-inf")).unsqueeze(1)


def _attend(
    attention: nn.Module,
    hidden: torch.Tensor,
    keys_values: KeyValues,
    mask: torch.Tensor,
    training: bool,
) -> torch.Tensor:
    """Attention of ``hidden`` (B, Lq, D) over ``keys_values`` under ``mask``
    (B, 1, Lq, Lk) additive (see :func:`additive`)."""
    query = _heads(attention.q_proj(hidden), attention)
    out = F.scaled_dot_product_attention(
        query,
        *keys_values,
        attn_mask=mask,
        dropout_p=attention.dropout if training else 0.0,
    )  # (B, H, Lq, d_head)
    batch, heads, length, size = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, heads * size))


def concat(past: KeyValues | None, new: KeyValues) -> KeyValues:
    """Cached keys and values with new ones appended (along positions)."""
    if past is None:
        return new
    return torch.cat([past[0], new[0]], 2), torch.cat([past[1], new[1]], 2)


def _feed_forward(layer: nn.Module, hidden: torch.Tensor, training: bool):
    residual = hidden
    hidden = layer.activation_fn(layer.fc1(hidden))
    hidden = F.dropout(hidden, p=layer.activation_dropout, training=training)
    hidden = F.dropout(layer.fc2(hidden), p=layer.dropout, training=training)
    return layer.final_layer_norm(residual + hidden)


def encoder_layers(
    encoder: nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    past: list[KeyValues] | None = None,
    training: bool = False,
) -> tuple[torch.Tensor, list[KeyValues]]:
    """Run every encoder layer over new positions ``hidden`` (B, L, D).

    Args:
        encoder: a ``BartEncoder``.
        mask: (B, L, L_past + L) which cached and new positions each new one sees.
        past: per layer, the keys and values of the cached positions (None: none).

    Returns:
        The new positions' states and, per layer, the keys and values of the new
        positions only (append them to the cache).
    """
    new: list[KeyValues] = []
    mask = additive(mask, hidden.dtype)
    for index, layer in enumerate(encoder.layers):
        attention = layer.self_attn
        own = project(attention, hidden)
        new.append(own)
        keys_values = concat(past[index] if past else None, own)
        out = _attend(attention, hidden, keys_values, mask, training)
        out = F.dropout(out, p=layer.dropout, training=training)
        hidden = layer.self_attn_layer_norm(hidden + out)
        hidden = _feed_forward(layer, hidden, training)
    return hidden, new


def decoder_layers(
    decoder: nn.Module,
    hidden: torch.Tensor,
    self_mask: torch.Tensor,
    cross: list[KeyValues],
    cross_mask: torch.Tensor,
    past: list[KeyValues] | None = None,
    training: bool = False,
) -> tuple[torch.Tensor, list[KeyValues]]:
    """Run every decoder layer over new positions ``hidden`` (B, L, D).

    Args:
        decoder: a ``BartDecoder``.
        self_mask: (B, L, L_past + L) which cached and new decoder positions each new
            one sees.
        cross: per layer, the keys and values of the encoder states (see
            :func:`cross_keys_values`).
        cross_mask: (B, L, S) which encoder positions each new position sees.
        past: per layer, the cached decoder keys and values (None: none).

    Returns:
        The new positions' states and, per layer, their own keys and values.
    """
    new: list[KeyValues] = []
    self_mask = additive(self_mask, hidden.dtype)
    cross_mask = additive(cross_mask, hidden.dtype)
    for index, layer in enumerate(decoder.layers):
        own = project(layer.self_attn, hidden)
        new.append(own)
        keys_values = concat(past[index] if past else None, own)
        out = _attend(layer.self_attn, hidden, keys_values, self_mask, training)
        out = F.dropout(out, p=layer.dropout, training=training)
        hidden = layer.self_attn_layer_norm(hidden + out)
        out = _attend(layer.encoder_attn, hidden, cross[index], cross_mask, training)
        out = F.dropout(out, p=layer.dropout, training=training)
        hidden = layer.encoder_attn_layer_norm(hidden + out)
        hidden = _feed_forward(layer, hidden, training)
    return hidden, new


def _attend_strided(
    attention: nn.Module, hidden: torch.Tensor, keys_values: KeyValues, mask
) -> torch.Tensor:
    """:func:`_attend` at inference by two batched matrix products, which read a
    slice of a preallocated cache in place where the fused kernels would copy it."""
    query = _heads(attention.q_proj(hidden), attention) * attention.scaling
    keys, values = keys_values
    weights = torch.softmax(query @ keys.transpose(-1, -2) + mask, -1)
    out = weights @ values  # (B, H, Lq, d_head)
    batch, heads, length, size = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, heads * size))


def decoder_layer_step(
    layer: nn.Module,
    hidden: torch.Tensor,
    self_keys_values: KeyValues,
    self_mask: torch.Tensor,
    cross: KeyValues,
    cross_mask: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer at inference over keys and values already in place (the
    new positions' own included, possibly slices of a larger cache); masks additive
    (see :func:`additive`)."""
    out = _attend_strided(layer.self_attn, hidden, self_keys_values, self_mask)
    hidden = layer.self_attn_layer_norm(hidden + out)
    out = _attend_strided(layer.encoder_attn, hidden, cross, cross_mask)
    hidden = layer.encoder_attn_layer_norm(hidden + out)
    return _feed_forward(layer, hidden, False)


def cross_keys_values(decoder: nn.Module, states: torch.Tensor) -> list[KeyValues]:
    """Per decoder layer, the cross-attention keys and values of encoder ``states``."""
    return [project(layer.encoder_attn, states) for layer in decoder.layers]
