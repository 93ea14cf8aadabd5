"""Length-grouped batches: less padding, the same randomness.

Histories vary from two tokens to hundreds, so random batches are mostly padding and a
CPU spends most of its time on it. Like the ``group_by_length`` option of Hugging
Face's trainer, we shuffle the slots, cut them into chunks of many batches, sort each
chunk by source length, form batches inside it and shuffle the batches. Every slot
is still seen once per epoch, in an order fixed by the seed.
"""

from __future__ import annotations

import numpy as np

from ehrgen.tokens.encoded import TokenizedCohort

__all__ = ["length_grouped_order", "source_lengths"]


def source_lengths(data: TokenizedCohort, slots: np.ndarray, cap: int) -> np.ndarray:
    """Approximate encoder length of each ``(patient, t, task, modality)`` slot,
    before corruption: the visits before t, plus visit t where ``task`` is not 0
    (a cross-modal slot, whose source holds the rest of visit t)."""
    n_events = np.diff(data.event_offsets)
    n_blocks = np.diff(data.visit_block_offsets)
    visit_len = 2 + n_events + 2 * n_blocks  # <v> ... </v>, open/close per block
    before = np.concatenate([[0], np.cumsum(visit_len)])
    first = data.visit_offsets[slots[:, 0]]
    t = slots[:, 1]
    history = before[first + t] - before[first]
    current = np.where(
        slots[:, 2] != 0,
        visit_len[np.minimum(first + t, len(visit_len) - 1)],
        0,
    )
    return np.minimum(2 + history + current, cap)


def length_grouped_order(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    batches_per_chunk: int = 32,
) -> np.ndarray:
    """A permutation of the slots whose consecutive ``batch_size`` runs have similar
    lengths (see the module docstring).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> order = length_grouped_order(np.array([5, 1, 9, 2]), 2, rng)
        >>> sorted(order.tolist())
        [0, 1, 2, 3]
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * batches_per_chunk
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    # The last, possibly short, batch stays last so that every other batch is full.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    shuffled = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate(shuffled + short) if batches else order
