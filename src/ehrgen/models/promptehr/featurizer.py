"""Conditional prompt embeddings: baseline features as vectors the transformer reads.

METHOD.md's featurizer, one prompt vector per feature:

* categorical feature i with value c: ``e_i = (onehot(c) W0_i + b_i) W1_cat``, i.e. a
  row of an embedding table plus a per-feature bias, projected to ``d_model``; each
  feature has one extra row for an unknown or missing value;
* numerical feature j with standardised value z: ``e_j = (z w_j + b_j) W1_num``; a
  missing value uses a learned vector in place of ``z w_j + b_j``.

Standardisation statistics are buffers, saved with the model. A cohort with no
baseline feature gives a prompt of length zero. The encoder and the decoder each get
their own featurizer (METHOD.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PromptFeaturizer"]


class PromptFeaturizer(nn.Module):
    """Baseline features -> ``(B, n_features, d_model)`` prompt vectors.

    Args:
        cardinalities: number of categories of each categorical feature.
        n_numerical: number of numerical features.
        hidden_dim: d0, the width between W0 and W1.
        d_model: the transformer width.

    Example:
        >>> f = PromptFeaturizer([2, 3], 1, hidden_dim=8, d_model=16)
        >>> f(torch.tensor([[0, 3]]), torch.tensor([[float("nan")]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_numerical: int,
        hidden_dim: int,
        d_model: int,
    ) -> None:
        super().__init__()
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.n_numerical = int(n_numerical)
        # Each categorical feature owns a block of rows: its categories, then "unknown".
        sizes = torch.tensor([c + 1 for c in self.cardinalities], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0) - sizes
        self.register_buffer("category_offsets", offsets, persistent=False)
        # Unit-scale W0 rows and default-scale W1: a product of two small matrices
        # would start near zero and learn slowly, and a prompt that small is
        # swamped by the position embedding added before BART's layer norm.
        self.category_weight = nn.Embedding(max(int(sizes.sum()), 1), hidden_dim)
        self.category_bias = nn.Parameter(
            torch.zeros(len(self.cardinalities), hidden_dim)
        )
        self.categorical_projection = nn.Linear(hidden_dim, d_model, bias=False)
        self.numerical_weight = nn.Parameter(torch.randn(n_numerical, hidden_dim))
        self.numerical_bias = nn.Parameter(torch.zeros(n_numerical, hidden_dim))
        self.numerical_missing = nn.Parameter(torch.randn(n_numerical, hidden_dim))
        self.numerical_projection = nn.Linear(hidden_dim, d_model, bias=False)
        self.register_buffer("numerical_mean", torch.zeros(n_numerical))
        self.register_buffer("numerical_std", torch.ones(n_numerical))

    @property
    def n_prompts(self) -> int:
        """Prompt vectors per patient: one per feature."""
        return len(self.cardinalities) + self.n_numerical

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training cohort's mean and standard deviation of each numerical
        feature (a zero deviation is replaced by one)."""
        self.numerical_mean.copy_(torch.nan_to_num(mean, nan=0.0))
        self.numerical_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(
        self, categorical: torch.Tensor, numerical: torch.Tensor
    ) -> torch.Tensor:
        """Prompts for a batch.

        Args:
            categorical: (B, n_categorical) category indices; the value equal to a
                feature's cardinality (or any out-of-range value) means unknown.
            numerical: (B, n_numerical) raw values, NaN when missing.

        Returns:
            (B, n_categorical + n_numerical, d_model)
        """
        parts = []
        if self.cardinalities:
            limits = torch.tensor(self.cardinalities, device=categorical.device)
            known = (categorical >= 0) & (categorical < limits)
            index = torch.where(known, categorical, limits)  # (B, n_cat)
            hidden = (
                self.category_weight(index + self.category_offsets) + self.category_bias
            )
            parts.append(self.categorical_projection(hidden))  # (B, n_cat, D)
        if self.n_numerical:
            missing = torch.isnan(numerical)
            z = (torch.nan_to_num(numerical) - self.numerical_mean) / self.numerical_std
            hidden = z.unsqueeze(-1) * self.numerical_weight + self.numerical_bias
            hidden = torch.where(missing.unsqueeze(-1), self.numerical_missing, hidden)
            parts.append(self.numerical_projection(hidden))  # (B, n_num, D)
        if not parts:
            batch = categorical.shape[0]
            width = self.categorical_projection.out_features
            return torch.zeros(batch, 0, width, device=categorical.device)
        return torch.cat(parts, dim=1)
