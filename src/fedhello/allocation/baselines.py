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
    # the unconstrained reference: trains every layer whatever the budgets or the limits
    limits_policy = "ignore"

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
            m = self.floor(c)  # 0 without limits: the same draws as the unrestricted FedRA
            out[c.id] = sorted(m + int(x) for x in rng.choice(self.num_layers - m, size=c.budget, replace=False))
        return RoundPlan(out)


@register
class Depth(Strategy):
    """Depth from the output (LEGEND, arXiv:2412.20004): each client trains the deepest block it can afford.

    A client of count k trains layers ``L-k .. L-1``, the same every round. With count budgets
    k is its budget; under declared limits, the largest k whose top-k block fits its limits
    (capped by its budget). The top-k block reaches the fewest layers, so it is the cheapest
    set of k layers in memory and time.
    """

    name = "depth"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: the top ``budget`` layers."""
        return RoundPlan({c.id: list(range(self.num_layers - c.budget, self.num_layers)) for c in clients})
