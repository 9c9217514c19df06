"""Preview an allocation strategy without a model or data (``fedhello allocate``).

Clients get their groups and are sampled exactly as the engine does
(:mod:`fedhello.allocation.clients`); the strategy allocates layers round by
round. FIM strategies take fixed per-layer scores (``--scores``) as a constant
score provider. :func:`render_distribution` draws the collective distribution
(how often each layer was trained over all rounds) as horizontal bars, the
output-side layer at the top and layer 0 (input side) at the bottom.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError

from fedhello.allocation.base import build_strategy
from fedhello.allocation.clients import allocation_rng, assign_groups, client_slots, sample_clients
from fedhello.allocation.resources import Capacity, LayerCosts, Limits, ResourceModel, predicted_cost
from fedhello.config import check_budgets, check_fractions, format_validation_error
from fedhello.errors import ConfigError
from fedhello.strategy_options import strategy_section

SCORES_REQUIRED = "--scores is required for fim-hla/fedhello beyond warmup"


def _strategy_config(name: str, pattern: str | None, options: dict[str, Any]):
    fields = {"name": name, **{k: v for k, v in options.items() if v is not None}}
    if pattern is not None:
        fields["pattern"] = pattern
    try:
        return strategy_section()(**fields)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="strategy")) from None


def preview(
    strategy: str,
    pattern: str | None,
    layers: int,
    budgets: Sequence[int],
    fractions: Sequence[float] | None,
    clients: int,
    per_round: int,
    rounds: int,
    seed: int,
    scores: Sequence[float] | None = None,
    lora_r: int = 16,
    costs: LayerCosts | None = None,
    limits: Sequence[Any] | None = None,
    steps: int | Sequence[int] = 1,
    **options: Any,
) -> dict[str, Any]:
    """Allocations of ``rounds`` rounds as a JSON-able dict.

    ``options`` are further ``strategy`` section fields by key (``fim_every``, ``warmup_rounds``,
    ``ranks``, ...: any key of the ``strategy`` section, as ``fedhello allocate`` passes
    every flag generated from it); ``lora_r``
    is the global LoRA rank, from which rank strategies (hetlora, flexlora) derive
    each client's rank (then in its record as ``rank``). Returns
    ``{"layers": L, "strategy": name, "budgets": [...], "rounds": [{"round": t,
    "clients": [{"id", "group", "budget", "layers"}], "info": {...}}]}`` where
    ``info`` (the strategy's round info, e.g. fim_scores) is present only when
    non-empty.

    ``costs`` (a cost profile) adds each client's predicted cost (``predicted``:
    ``memory_bytes``, ``time_s``, ``upload_bytes``); ``limits`` (one
    :class:`~fedhello.allocation.resources.Limits` per group, needs ``costs``) restricts
    every client to the layer sets that fit, as a run does; ``steps`` is the local
    optimizer steps per round (one number, or one per client) that time limits multiply.
    """
    L, budgets = int(layers), [int(b) for b in budgets]
    fractions = _check_population(L, budgets, fractions, clients, per_round, rounds)
    strat = _preview_strategy(strategy, pattern, options, L, budgets, rounds)
    if int(lora_r) < 1:
        raise ConfigError("--lora-r must be at least 1")

    provider = _score_provider(scores, L)
    groups = assign_groups(clients, fractions, seed)
    resources = _resource_model(costs, limits, steps, groups, L, len(budgets))
    slots = _slots(strat, groups, budgets, resources)
    eligible = [s.id for s in slots if strat.eligible(s)]
    if not eligible:
        raise ConfigError(f"strategy {strategy}: no client is eligible")

    out_rounds = []
    for t in range(rounds):
        chosen = [slots[i] for i in sample_clients(eligible, per_round, seed, t)]
        plan = strat.allocate(t, chosen, allocation_rng(seed, t), provider)
        if resources is not None:
            resources.check_plan(strat, plan.allocations)
        out_rounds.append(_round_record(t, chosen, plan, strat, int(lora_r), resources))
    return {"layers": L, "strategy": strategy, "pattern": strat.cfg.pattern, "budgets": budgets, "rounds": out_rounds}


def _check_population(L: int, budgets: list[int], fractions, clients: int, per_round: int, rounds: int) -> list[float]:
    """The previewed run's layers, groups, clients and rounds checked; the group shares (equal by default)."""
    if L < 1:
        raise ConfigError("--layers must be at least 1")
    check_budgets(budgets, L, key="--budgets", layers=f"--layers {L}")
    if fractions is None:
        fractions = [1.0 / len(budgets)] * len(budgets)
    fractions = [float(f) for f in fractions]
    check_fractions(fractions, len(budgets), key="--fractions", groups_key="--budgets")
    if clients < 1 or per_round < 1 or per_round > clients:
        raise ConfigError(f"need 1 <= --per-round ({per_round}) <= --clients ({clients})")
    if rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    return fractions


def _preview_strategy(name: str, pattern: str | None, options: dict[str, Any], L: int, budgets: list[int], rounds: int):
    """The strategy with its options, under the rules ``fedhello run`` applies: a preview of a
    run that would be refused is refused."""
    strat = build_strategy(_strategy_config(name, pattern, options), L, budgets)
    try:
        strat.cfg.check_rounds(rounds, _flag_key, "--rounds")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return strat


def _slots(strat, groups: Sequence[int], budgets: list[int], resources: ResourceModel | None) -> list:
    """Every client's slot: its group and budget, and under limits what it can afford."""
    slots = client_slots(groups, budgets)
    if resources is None:
        return slots
    resources.check_clients(strat, slots)
    return [resources.slot(s) for s in slots]


def _flag_key(option: str) -> str:
    """How an error names a strategy option here: its flag, its config key and its default."""
    default = strategy_section().model_fields[option].default
    return f"--{option.replace('_', '-')} (strategy.{option}, default {default})"


def _score_provider(scores: Sequence[float] | None, L: int):
    """The constant score provider of ``--scores`` (without them: one that refuses to score)."""
    if scores is not None:
        fixed = np.asarray([float(s) for s in scores], dtype=float)
        if fixed.size != L:
            raise ConfigError(f"--scores has {fixed.size} values but --layers is {L}")

        def provider() -> np.ndarray:
            return fixed.copy()

    else:

        def provider() -> np.ndarray:
            raise ConfigError(SCORES_REQUIRED)

    return provider


def _resource_model(costs, limits, steps, groups: Sequence[int], L: int, num_groups: int) -> ResourceModel | None:
    """The clients' capacities under ``limits`` priced by ``costs`` (None without a profile)."""
    if limits is not None and costs is None:
        raise ConfigError("--limits needs --profile (a cost profile that prices layer sets)")
    if costs is None:
        return None
    if costs.num_layers != L:
        raise ConfigError(f"--profile prices {costs.num_layers} layers but --layers is {L}")
    if limits is not None and len(limits) != num_groups:
        raise ConfigError(f"--limits has {len(limits)} mappings but --budgets has {num_groups} groups")
    per_client = [int(steps)] * len(groups) if isinstance(steps, int) else [int(x) for x in steps]
    caps = {i: Capacity(limits[g] if limits is not None else Limits(), per_client[i]) for i, g in enumerate(groups)}
    return ResourceModel(costs, caps, {i: f"--limits[{g}]" for i, g in enumerate(groups)})


def _round_record(t: int, chosen, plan, strat, lora_r: int, resources: ResourceModel | None) -> dict[str, Any]:
    """One round of the preview: its clients with their layers (and rank, predicted cost, limits)."""
    rec: dict[str, Any] = {
        "round": t,
        "clients": [
            {"id": c.id, "group": c.group, "budget": c.budget, "layers": [int(x) for x in plan.allocations[c.id]]}
            for c in chosen
        ],
    }
    if strat.uses_ranks:
        for c, item in zip(chosen, rec["clients"]):
            item["rank"] = strat.client_rank(c, lora_r)
    if resources is not None:
        for c, item in zip(chosen, rec["clients"]):
            p = predicted_cost(resources.costs, resources.capacities[c.id], item["layers"])
            item["predicted"] = {"memory_bytes": p["memory"], "time_s": p["time"], "upload_bytes": p["upload"]}
            if resources.limited(c.id):
                item["limits"] = resources.capacities[c.id].limits.declared()
    if plan.info:
        rec["info"] = plan.info
    return rec


def layer_counts(preview_dict: dict[str, Any]) -> np.ndarray:
    """How many times each layer was trained, over all rounds and clients."""
    counts = np.zeros(int(preview_dict["layers"]), dtype=np.int64)
    for r in preview_dict["rounds"]:
        for c in r["clients"]:
            counts[list(c["layers"])] += 1
    return counts


def render_distribution(preview_dict: dict[str, Any], width: int = 40) -> str:
    """Horizontal bars per layer (top: layer L-1, bottom: layer 0), scaled to the busiest layer."""
    counts = layer_counts(preview_dict)
    L = counts.size
    total = int(counts.sum())
    top = int(counts.max()) if L else 0
    rounds = len(preview_dict["rounds"])
    client_rounds = sum(len(r["clients"]) for r in preview_dict["rounds"])
    lines = [
        f"collective distribution: times each layer was trained "
        f"({rounds} round{'s' if rounds != 1 else ''}, {client_rounds} client-rounds, {total} layer-trainings)"
    ]
    lw = len(str(max(L - 1, 0)))
    cw = len(str(top))
    for layer in range(L - 1, -1, -1):
        n = int(counts[layer])
        bar = "#" * (int(round(width * n / top)) if top else 0)
        share = 100.0 * n / total if total else 0.0
        lines.append(f"layer {layer:>{lw}} | {bar:<{width}} {n:>{cw}} ({share:4.1f}%)")
    lines.append(f"{'':>{6 + lw}}   (layer 0 = input side, layer {L - 1} = output side)")
    ranks = sorted({(c["group"], c["rank"]) for r in preview_dict["rounds"] for c in r["clients"] if "rank" in c})
    if ranks:
        lines.append("LoRA rank per resource group: " + ", ".join(f"group {g}: {rk}" for g, rk in ranks))
    lines.extend(render_costs(preview_dict))
    return "\n".join(lines)


def render_costs(preview_dict: dict[str, Any]) -> list[str]:
    """Per resource group: the largest predicted memory, time and upload of its clients, beside its limits."""
    by_group: dict[int, list[dict]] = {}
    for r in preview_dict["rounds"]:
        for c in r["clients"]:
            if "predicted" in c:
                by_group.setdefault(c["group"], []).append(c)
    if not by_group:
        return []
    lines = ["predicted cost per client (largest in the group; limit in brackets):"]
    for g in sorted(by_group):
        cs = by_group[g]
        lim = cs[0].get("limits", {})

        def part(key: str, limkey: str, scale: float, unit: str) -> str:
            v = max(c["predicted"][key] for c in cs) / scale
            bound = f" (limit {lim[limkey] / scale:.4g})" if limkey in lim else ""
            return f"{v:.4g} {unit}{bound}"

        lines.append(
            f"  group {g}: memory {part('memory_bytes', 'memory_limit_bytes', 1e6, 'MB')}, "
            f"time {part('time_s', 'time_limit_s', 1.0, 's')}, "
            f"upload {part('upload_bytes', 'upload_limit_bytes', 1e6, 'MB')}"
        )
    return lines


def render_rounds(preview_dict: dict[str, Any]) -> str:
    """Every previewed round as text: each client's group, budget (and rank) and layers."""
    lines = []
    for r in preview_dict["rounds"]:
        lines.append(f"round {r['round']}:")
        for c in r["clients"]:
            layers = " ".join(str(x) for x in c["layers"])
            rank = f", rank {c['rank']:>2}" if "rank" in c else ""
            cost = ""
            if "predicted" in c:
                p = c["predicted"]
                cost = (f"  [{p['memory_bytes'] / 1e6:.1f} MB, {p['time_s']:.3g} s, "
                        f"{p['upload_bytes'] / 1e6:.3f} MB up]")
            lines.append(f"  client {c['id']:>3} (group {c['group']}, budget {c['budget']:>2}{rank}): {layers}{cost}")
        info = r.get("info", {})
        if "fim_tiers" in info:
            lines.append(f"  fim tiers: {info['fim_tiers']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
