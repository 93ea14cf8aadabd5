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

__all__ = ["budgeted_batches", "length_grouped_order", "source_lengths"]


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


def budgeted_batches(
    lengths: np.ndarray,
    costs: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    batches_per_chunk: int = 32,
) -> list[np.ndarray]:
    """Length-grouped batches of items whose ``costs`` add up to about ``budget``
    (each batch holds at least one item and stops once it reaches the budget).

    Items that each hold several training targets (a patient's visits) batched by
    count would make a step's size follow their lengths; batched by targets, every
    step carries about ``budget`` of them, as a batch of single targets would.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> batches = budgeted_batches(np.arange(6), np.array([1, 1, 4, 1, 1, 5]),
        ...                            4, rng)
        >>> sorted(int(i) for b in batches for i in b)
        [0, 1, 2, 3, 4, 5]
    """
    costs = np.asarray(costs)
    order = rng.permutation(len(lengths))
    mean_cost = max(float(costs.mean()), 1e-9) if len(costs) else 1.0
    chunk = max(1, round(budget / mean_cost)) * batches_per_chunk
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        total, first = 0, 0
        for i, item in enumerate(part):
            total += costs[item]
            if total >= budget:
                batches.append(part[first : i + 1])
                total, first = 0, i + 1
        if first < len(part):
            batches.append(part[first:])
    return [batches[i] for i in rng.permutation(len(batches))]
