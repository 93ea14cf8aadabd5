"""Tests of length-grouped batching."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrgen.data.demo import demo_cohort
from ehrgen.models.promptehr.tasks import ExampleDataset, TaskConfig, example_slots
from ehrgen.tokens.batching import (
    budgeted_batches,
    length_grouped_order,
    source_lengths,
)
from ehrgen.tokens.encoded import TokenizedCohort
from ehrgen.tokens.tokenizer import CodeTokenizer


def test_length_grouped_batches_are_a_permutation_with_less_padding():
    """Check that source lengths are those of the examples, and that length grouping
    visits every slot once and cuts padding."""
    cohort = demo_cohort(300, seed=0)
    data = TokenizedCohort.from_cohort(cohort, CodeTokenizer.fit(cohort))
    config = TaskConfig()
    slots = example_slots(data, 0, 0, config)
    lengths = source_lengths(data, slots, config.max_source_length)
    dataset = ExampleDataset(data, slots, config, 0, 0, corrupt=False)
    for i in (0, 7, len(slots) - 1):
        assert lengths[i] == len(dataset[i].source)
    order = length_grouped_order(lengths, 16, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(slots)))

    def padding(permutation):
        batches = [lengths[permutation[i : i + 16]] for i in range(0, len(slots), 16)]
        return sum(int(b.max()) * len(b) - int(b.sum()) for b in batches)

    random_order = np.random.default_rng(0).permutation(len(slots))
    assert padding(order) < 0.3 * padding(random_order)


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(1, 12), min_size=1, max_size=200),
    budget=st.integers(1, 40),
    seed=st.integers(0, 3),
)
def test_budgeted_batches_hold_every_item_once_and_about_the_budget(
    costs, budget, seed
):
    """Check that budgeted batches are a partition of the items, that each batch
    stops at the first item that reaches the budget, and that at most one batch per
    chunk falls short of it."""
    costs = np.array(costs)
    lengths = np.random.default_rng(seed).integers(1, 100, len(costs))
    batches = budgeted_batches(lengths, costs, budget, np.random.default_rng(seed), 2)
    items = np.concatenate(batches)
    assert sorted(items.tolist()) == list(range(len(costs)))
    totals = [int(costs[b].sum()) for b in batches]
    assert all(t - int(costs[b[-1]]) < budget for t, b in zip(totals, batches))
    chunk = max(1, round(budget / costs.mean())) * 2
    n_chunks = -(-len(costs) // chunk)
    assert sum(t < budget for t in totals) <= n_chunks
