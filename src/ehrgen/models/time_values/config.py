"""Settings of the time-and-value model (:mod:`ehrgen.models.time_values.model`)."""

from __future__ import annotations

from dataclasses import dataclass

from ehrgen._config import ConfigMixin, check, check_positive_ints

__all__ = ["TimeValueConfig"]


@dataclass(frozen=True)
class TimeValueConfig(ConfigMixin):
    """Settings of the time-and-value model.

    Attributes:
        times: learn the gaps between visits (when the cohort has real times).
        values: learn lab results (when the cohort has values).
        n_bins: equal quantile bins per quantity (10: deciles).
        tails: add bins for each tail (edges at the 2nd, 5th, 95th and 98th
            percentiles; see :func:`~ehrgen.models.time_values.bins.bin_levels`).
        min_values: a lab needs this many training results to get a value model.
        max_codes: the most frequent codes the model reads (others share one id).
        epochs, batch_patients, learning_rate, weight_decay: the optimisation.
        patience: held-out evaluations without progress before a network stops
            (each network, gaps and values, stops at its own best epoch).
        dropout: on the network's trunk. Gaps are noisy (a few thousand of them
            in a small cohort) and overfit within a few epochs without it.
        dim, hidden: the network's widths.
        seed: the weights' and the batches' seed.
    """

    times: bool = True
    values: bool = True
    n_bins: int = 10
    tails: bool = True
    min_values: int = 20
    max_codes: int = 4096
    epochs: int = 100
    patience: int = 10
    batch_patients: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    dropout: float = 0.5
    dim: int = 16
    hidden: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive_ints(
            self, "n_bins", "min_values", "max_codes", "epochs", "patience",
            "batch_patients", "dim", "hidden",
        )  # fmt: skip
        check(self.n_bins >= 2, name, "n_bins", ">= 2", self.n_bins)
        check(
            self.learning_rate > 0, name, "learning_rate", "positive",
            self.learning_rate,
        )  # fmt: skip
        check(self.weight_decay >= 0, name, "weight_decay", ">= 0", self.weight_decay)
        check(0 <= self.dropout < 1, name, "dropout", "in [0, 1)", self.dropout)
