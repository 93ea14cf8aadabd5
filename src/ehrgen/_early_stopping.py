"""Early stopping for the small networks trained outside the shared Trainer (the
utility suite's predictors, the model of visit gaps and lab values)."""

from __future__ import annotations

import copy
import math
from typing import Any

__all__ = ["BestWeights"]


class BestWeights:
    """A network's weights at its best held-out score so far (lower is better),
    and when to stop: after ``patience`` scores without progress.

    Example:
        >>> from torch import nn
        >>> net, keeper = nn.Linear(1, 1), BestWeights(patience=2)
        >>> [keeper.update(net, score) for score in (3.0, 2.0, 2.5, 2.1)]
        [False, False, False, True]
        >>> keeper.best
        2.0
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.waited = 0
        self._state: dict[str, Any] | None = None

    def update(self, network: Any, score: float) -> bool:
        """Record the network's score after an epoch; True when training should
        stop."""
        if score < self.best:
            self.best, self.waited = score, 0
            self._state = copy.deepcopy(network.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, network: Any) -> None:
        """Load the best weights seen (none seen: leave the network as it is) and
        put the network in evaluation mode."""
        if self._state is not None:
            network.load_state_dict(self._state)
        network.eval()
