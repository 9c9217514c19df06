"""Baselines that only change who trains what: FedIT (arXiv:2305.05644) and FedRA (arXiv:2311.11227).

Both run on the same engine, data and budgets as the HLA strategies; they differ
only in each round's layer allocation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedhello.allocation.base import ClientSlot, RoundPlan, ScoreProvider, Strategy, register


@register
class FedIT(Strategy):
    """FedIT (arXiv:2305.05644): homogeneous LoRA-FedAvg, every client trains every layer (ignores budgets)."""

    name = "fedit"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: every client gets every layer."""
        every = list(range(self.num_layers))
        return RoundPlan({c.id: list(every) for c in clients})

    def trained_layers(self, budget: int) -> int:
        """L: every client trains every layer, whatever its budget."""
        return self.num_layers


@register
class FedRA(Strategy):
    """FedRA (arXiv:2311.11227): each round each client gets ``b`` layers uniformly at random."""

    name = "fedra"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: ``budget`` distinct layers per client, drawn uniformly."""
        out = {}
        for c in clients:
            out[c.id] = sorted(int(x) for x in rng.choice(self.num_layers, size=c.budget, replace=False))
        return RoundPlan(out)
