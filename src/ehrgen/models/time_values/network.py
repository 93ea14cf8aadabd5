"""The networks of the time-and-value model: a visit's context -> its gap or its
labs' bins (one network for each, so that each stops training at its own best
epoch: a few thousand noisy gaps overfit long before the lab results do).

A visit is read as five vectors of width ``dim``: the mean embedding of its own codes,
of the previous visit's codes and of every earlier visit's codes, its index within
the patient plus the bin of the gap before the previous visit, and the patient's
baseline features (the PromptEHR featurizer, summed over features). An MLP turns them
into the visit's state; a linear head gives the logits of the gap before the visit.
Each lab event of the visit gets logits over its value bins plus one class "no
value", from the visit's state and the lab's own embedding. The lab's earlier
results are left out on purpose: trained on real histories, a network leans on them
(a stage-5 kidney patient's creatinine was high at the last visit) and not on the
codes, and then at generation it continues its own earlier draws and drifts.

Code sums come from prefix sums over a batch's flat event embeddings, so a visit's
history costs two lookups whatever its length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ehrgen.models.promptehr.featurizer import PromptFeaturizer

__all__ = ["TimeValueNet"]


class TimeValueNet(nn.Module):
    """See the module docstring.

    Args:
        n_codes: codes the model reads (id 0 is "any other code").
        cardinalities, n_numerical: the baseline features (as PromptFeaturizer's).
        n_gap_bins: gap classes, read (the previous gap) and predicted (0: the
            model has no gaps).
        n_value_codes: labs with a value model (0: none, a network for gaps).
        n_value_bins: value classes per lab, "no value" excluded.
        max_index: visit indices from this one on share an embedding.
        dim, hidden: the widths.
        dropout: on the trunk's inputs and hidden layer.
    """

    def __init__(
        self,
        n_codes: int,
        cardinalities: Sequence[int],
        n_numerical: int,
        n_gap_bins: int,
        n_value_codes: int,
        n_value_bins: int,
        max_index: int = 10,
        dim: int = 32,
        hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.max_index, self.n_gap_bins = max_index, n_gap_bins
        self.n_value_bins = n_value_bins
        self.codes = nn.Embedding(n_codes + 1, dim)
        self.index = nn.Embedding(max_index + 1, dim)
        self.previous_gap = nn.Embedding(n_gap_bins + 1, dim)  # last row: none
        self.static = PromptFeaturizer(cardinalities, n_numerical, dim, dim)
        self.trunk = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(5 * dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.gap_head = nn.Linear(hidden, max(n_gap_bins, 1))
        self.value_code = nn.Embedding(max(n_value_codes, 1), dim)
        self.value_head = nn.Sequential(
            nn.Linear(hidden + dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_value_bins + 1),
        )

    def code_prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """(E+1, dim) prefix sums of the embeddings of a flat event array (E,)."""
        embedded = self.codes(codes)
        zero = embedded.new_zeros(1, embedded.shape[1])
        return torch.cat([zero, embedded.cumsum(0)], 0)

    def visit_states(
        self,
        prefix: torch.Tensor,
        ranges: torch.Tensor,
        index: torch.Tensor,
        previous_gap: torch.Tensor,
        categorical: torch.Tensor,
        numerical: torch.Tensor,
    ) -> torch.Tensor:
        """(N, hidden) states of N visits.

        Args:
            prefix: :meth:`code_prefix` of the events the ranges index.
            ranges: (N, 3, 2) ``[start, stop)`` into those events of the visit's own
                codes, the previous visit's codes and all earlier visits' codes.
            index: (N,) visit index within the patient.
            previous_gap: (N,) bin of the gap before the previous visit
                (``n_gap_bins``: none).
            categorical, numerical: (N, ·) the patient's baseline features.
        """
        sums = prefix[ranges[..., 1]] - prefix[ranges[..., 0]]  # (N, 3, dim)
        counts = (ranges[..., 1] - ranges[..., 0]).clamp(min=1).unsqueeze(-1)
        means = (sums / counts).flatten(1)
        position = self.index(index.clamp(max=self.max_index))
        position = position + self.previous_gap(previous_gap)
        static = self.static(categorical, numerical).sum(1)
        return self.trunk(torch.cat([means, position, static], 1))

    def gap_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(N, n_gap_bins) logits of the gap before each visit."""
        return self.gap_head(states)

    def value_logits(self, states: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """(L, n_value_bins + 1) logits of L lab events: ``states`` (L, hidden) of
        their visits, ``lab`` (L,) their value-model index."""
        return self.value_head(torch.cat([states, self.value_code(lab)], 1))
