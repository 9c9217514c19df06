"""Declared resource limits in a run: the cost profile, each client's capacity, the checks before training.

``clients.limits`` (one mapping per resource group) and ``clients.cost_profile`` (a
profile.json of ``fedhello profile``) become a
:class:`~fedhello.allocation.resources.ResourceModel` on the prepared experiment:

- the profile is read from ``clients.cost_profile`` when given; otherwise, when some
  group declares a limit, the costs are measured at the start of the run
  (``fedhello.run.profile.measure_costs``) and saved as profile.json in the run directory;
- each client's capacity is its group's limits and its local optimizer steps per round
  (partition size, ``train.batch_size``, ``train.epochs``, ``train.max_steps``);
- every refusal (a limit that fits no layer set, a strategy that cannot run within the
  limits) is raised here, inside :func:`~fedhello.run.experiment.prepare`, before the run
  directory is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedhello.allocation import build_strategy
from fedhello.allocation.clients import client_slots
from fedhello.allocation.resources import (
    Capacity, LayerCosts, Limits, ResourceModel, group_capacities, local_steps,
)
from fedhello.errors import ConfigError

PROFILE = "profile.json"


def limits_declared(cfg) -> bool:
    """Whether some resource group declares a limit."""
    return any(
        g is not None and any(v is not None for v in (g.memory_mb, g.time_s, g.upload_mb))
        for g in (cfg.clients.limits or [])
    )


def load_costs(path: str | Path, num_layers: int, key: str = "clients.cost_profile") -> LayerCosts:
    """A profile.json (untrusted: parsed and checked) for a model of ``num_layers`` LoRA layers."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: no such file: {p}")
    costs = LayerCosts.load(p)
    if costs.num_layers != num_layers:
        raise ConfigError(f"{key}: {p} prices {costs.num_layers} layers, the model has {num_layers}")
    return costs


def measure(exp) -> LayerCosts:
    """The costs of this experiment's model, batch size and max_length, measured now."""
    try:
        from fedhello.run.profile import measure_costs
    except ImportError:  # pragma: no cover - until the profiler lands on this branch
        raise ConfigError(
            "clients.limits: this build cannot measure costs at the start of a run; "
            "give clients.cost_profile (a profile.json of 'fedhello profile')"
        ) from None
    return measure_costs(exp)


def resource_model(cfg, costs: LayerCosts, groups, sample_counts) -> ResourceModel:
    """The simulated clients' capacities under ``clients.limits`` priced by ``costs``."""
    caps, where = group_capacities(cfg.clients.limits, groups, sample_counts, cfg.train.batch_size,
                                   cfg.train.epochs, cfg.train.max_steps)
    return ResourceModel(costs, caps, where)


def check_limits(cfg, num_layers: int, groups, sample_counts, costs: LayerCosts | None = None) -> ResourceModel:
    """The run's ResourceModel (costs from ``clients.cost_profile`` unless given), after every refusal
    of limits that cannot work (``fedhello validate`` runs this too when a profile is given)."""
    if costs is None:
        costs = load_costs(cfg.clients.cost_profile, num_layers)
    rm = resource_model(cfg, costs, groups, sample_counts)
    strategy = build_strategy(cfg.strategy, num_layers, cfg.clients.budgets)
    rm.check_clients(strategy, client_slots(groups, cfg.clients.budgets))
    return rm


def attach_resources(exp) -> None:
    """Set ``exp.costs`` and ``exp.resources`` from the config, and refuse limits that cannot work."""
    cfg = exp.cfg
    L = exp.layermap.num_layers
    if cfg.clients.cost_profile is not None:
        costs = load_costs(cfg.clients.cost_profile, L)
    elif limits_declared(cfg):
        costs = measure(exp)
    else:
        return
    exp.costs = costs
    exp.resources = check_limits(cfg, L, exp.groups, [len(p) for p in exp.partitions], costs)


def apply_node_limits(exp, limits: dict[int, dict[str, float]], where: dict[int, str]) -> None:
    """Flower: nodes' declared limits (client id -> ``{memory_mb, time_s, upload_mb}``) replace their
    groups' limits (called after nodes' declared budgets set their groups, also without limits). Costs come from ``clients.cost_profile``, or are measured now when the config had
    none; raises ConfigError (naming the node) when a node's limits fit no layer set."""
    cfg = exp.cfg
    L = exp.layermap.num_layers
    if exp.costs is None:
        if not limits:
            return
        exp.costs = load_costs(cfg.clients.cost_profile, L) if cfg.clients.cost_profile else measure(exp)
    # rebuilt: a node's declared budget may have moved it to another group
    rm = exp.resources = resource_model(cfg, exp.costs, exp.groups, [len(p) for p in exp.partitions])
    for cid, lim in limits.items():
        steps = local_steps(len(exp.partitions[cid]), cfg.train.batch_size, cfg.train.epochs, cfg.train.max_steps)
        rm.capacities[cid] = Capacity(Limits.from_mb(**lim), steps)
        rm.where[cid] = where.get(cid, f"client {cid}")
    strategy = build_strategy(cfg.strategy, L, cfg.clients.budgets)
    rm.check_clients(strategy, client_slots(exp.groups, cfg.clients.budgets))


def resume_costs(exp, saved: Path) -> None:
    """On resume of a run that measured its costs at the start: use the costs it saved (profile.json),
    not a new measurement, so the allocations go on as they began."""
    if exp.costs is None or exp.cfg.clients.cost_profile is not None or not Path(saved).is_file():
        return
    exp.costs = load_costs(saved, exp.layermap.num_layers, key=str(saved))
    exp.resources = resource_model(exp.cfg, exp.costs, exp.groups, [len(p) for p in exp.partitions])


def profile_record(costs: LayerCosts) -> dict[str, Any]:
    """What a run saves as profile.json (LayerCosts.load reads it back)."""
    return {"costs": costs.to_json()}
