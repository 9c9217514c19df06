"""What each resource group trains: the cost figures a run reports (clients.json, summary.json).

:func:`counts_under_limits`: the count of LoRA layers a group's clients may train under their
declared limits; :func:`trainable_params_per_group`: the parameters a client of each group trains.
"""

from __future__ import annotations

from fedhello.allocation import ClientSlot, build_strategy
from fedhello.model.rank import is_lora_a
from fedhello.run.preparation import Experiment


def counts_under_limits(exp: Experiment) -> list[int]:
    """Per group of ``exp``, the count of LoRA layers its clients may train: ``clients.budgets``
    and, under declared limits, the largest count a client of the group affords within them
    (:meth:`~fedhello.allocation.resources.ResourceModel.slot`)."""
    budgets = list(exp.cfg.clients.budgets)
    if exp.resources is None:
        return budgets
    return [max((exp.resources.slot(ClientSlot(cid, g, b)).budget
                 for cid, grp in enumerate(exp.groups) if grp == g), default=b)
            for g, b in enumerate(budgets)]


def trainable_params_per_group(exp: Experiment) -> list[int]:
    """Trainable LoRA (+ head, unless frozen) parameters of a client of each group of ``exp``.

    As many LoRA layers as the strategy trains for the group's count (its budget, under
    limits :func:`counts_under_limits`), at the group's LoRA rank (rank strategies),
    without the A matrices under FFA; 0 for a group the strategy never samples
    (Exclusive's weak groups).
    """
    cfg = exp.cfg
    strat = build_strategy(cfg.strategy, exp.layermap.num_layers, cfg.clients.budgets)
    params = dict(exp.model.named_parameters())
    # the head counts where clients train it (head.train local or federated), not when frozen
    head = sum(params[n].numel() for n in exp.layermap.head) if cfg.head.train != "frozen" else 0
    out = []
    for g, b in enumerate(counts_under_limits(exp)):
        if not strat.eligible(ClientSlot(-1, g, b)):
            out.append(0)
            continue
        rank = strat.client_rank(ClientSlot(-1, g, b), cfg.lora.r) or cfg.lora.r
        per_layer = [
            sum(params[n].numel() * rank // cfg.lora.r for n in names if not (cfg.lora.ffa and is_lora_a(n)))
            for names in exp.layermap.layers
        ]
        # every LoRA layer has the same size in the supported families
        out.append(head + sum(sorted(per_layer)[: strat.trained_layers(b)]))
    return out
