"""Rank-heterogeneity baselines: HetLoRA (arXiv:2401.06432) and FlexLoRA (arXiv:2402.11505).

Every client trains every LoRA layer; what varies with the resource group is
the LoRA rank: ``strategy.ranks`` (one per group; ``RankOptions`` in
:mod:`fedhello.strategy_options`) or, when null,
``round(lora.r * budget / L)`` (at least 1), e.g. 8/12/16 for budgets 6/9/12 of
12 layers and r=16. The global adapter keeps rank ``r_max = lora.r``; a client
of rank r_g is sent its first r_g components, trains them and uploads them
(:mod:`fedhello.model.rank`), and the rule that the strategy's ``aggregation``
names merges the rank-heterogeneous updates
(:mod:`fedhello.federation.rank_aggregation`).

LoRA scaling: all clients use PEFT's ``alpha / r_max``. A client holding the
first r_g components of the global adapter then applies exactly those
components' part of the global update ``(alpha/r_max) B A``, so what is sent
down, trained and aggregated lives in one coordinate system. (A standalone
rank-r_g LoRA with PEFT defaults would scale by ``alpha / r_g``; the padded
client is equivalent to that with ``alpha_g = alpha * r_g / r_max``, which the
tests check.) HetLoRA's optional local rank self-pruning (a regulariser on the
tail components and a per-client rank that shrinks over rounds) is left out:
the baseline compared here is HetLoRA's zero-padded, norm-weighted aggregation
of fixed per-group ranks, so ranks stay fixed per group.
In simulation the shared model keeps rank r_max, so the local compute and
optimizer memory measured are those of r_max; uploaded and downloaded bytes
are those of rank r_g.
"""

from __future__ import annotations

from typing import Sequence

from fedhello.allocation.base import ClientSlot, RoundPlan, Strategy, register
from fedhello.config import check_ranks


def group_ranks(max_rank: int, budgets: Sequence[int], num_layers: int, ranks: Sequence[int] | None = None) -> list[int]:
    """LoRA rank of each resource group: ``ranks`` if given, else round(max_rank * b / L), at least 1."""
    if ranks is not None:
        ranks = [int(r) for r in ranks]
        check_ranks(ranks, len(budgets), max_rank)
        return ranks
    # round half up, exactly: (2*r*b + L) // (2*L)
    return [max(1, (2 * int(max_rank) * int(b) + int(num_layers)) // (2 * int(num_layers))) for b in budgets]


class _RankStrategy(Strategy):
    """All layers for every client; the rank follows the resource group."""

    uses_ranks = True
    # every layer is trained: under limits, refused where the full set does not fit
    limits_policy = "all"

    def __init__(self, cfg, num_layers, budgets):
        super().__init__(cfg, num_layers, budgets)
        if self.cfg.ranks is not None:
            check_ranks(self.cfg.ranks, len(self.budgets))

    def allocate(self, round, clients, rng, scores=None):
        every = list(range(self.num_layers))
        return RoundPlan({c.id: list(every) for c in clients})

    def client_rank(self, client: ClientSlot, max_rank: int) -> int | None:
        return group_ranks(max_rank, self.budgets, self.num_layers, self.cfg.ranks)[client.group]

    def trained_layers(self, budget: int) -> int:
        return self.num_layers


@register
class HetLoRA(_RankStrategy):
    """HetLoRA (arXiv:2401.06432): rank r_g per group, zero-padded aggregation weighted by ||B_k A_k||_F."""

    name = "hetlora"
    aggregation = "hetlora"


@register
class FlexLoRA(_RankStrategy):
    """FlexLoRA (arXiv:2402.11505): average of full-size B@A, sent down as a truncated SVD at each rank."""

    name = "flexlora"
    aggregation = "flexlora"
