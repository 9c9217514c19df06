"""The Fed-HeLLo ServerApp: the project's round loop over a Flower Grid.

``main`` prepares the experiment (:func:`~fedhello.run.experiment.prepare`:
model for server-side evaluation, data, partitions, groups), asks every node who
it is (``hello``), then runs :func:`~fedhello.run.experiment.run_experiment`
with a :class:`~fedhello.flower.strategy.FlowerRunner`: the same Server loop,
allocation, validation, layer-wise aggregation, evaluation and run directory
(config.yaml, metrics.jsonl, summary.json, checkpoint.pt) as ``fedhello run``.
This module never imports the client app.

Run config (``[tool.flwr.app.config]``, override with ``flwr run --run-config``):

- ``config``: experiment YAML ("" = the built-in demo config)
- ``overrides``: ``key=value`` overrides like ``--set``, separated by ``;``
- ``out``: run directory (resolved against the SuperLink's working directory:
  give an absolute path); ``overwrite``: replace a different run there
- ``round-timeout``: seconds to wait for the replies of a round (a node that
  has not answered by then counts as failed this round)
- ``min-nodes``: nodes that must have connected before round 1 (0: all clients);
  ``wait-nodes-s``: how long to wait for them
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

# The run config's keys and defaults, once: deploy-local writes them into the app it
# submits (fedhello.flower.deploy.app_pyproject); pyproject.toml's [tool.flwr.app.config]
# states the same (tests/test_flower_app.py checks both).
DEFAULTS = {
    "config": "",
    "overrides": "",
    "out": "runs/flower",
    "overwrite": False,
    "round-timeout": 600.0,
    "min-nodes": 0,
    "wait-nodes-s": 120.0,
}

_log = logging.getLogger("flwr")


def load_experiment(run_config: dict):
    """The experiment config of a run config: its ``config`` YAML, or the built-in demo config.

    ``overrides`` holds ``key=value`` items separated by ``;``, applied as ``--set``
    does.
    """
    from importlib import resources

    import yaml

    from fedhello.config import build_config, load_config

    overrides = [s.strip() for s in str(run_config.get("overrides", "")).split(";") if s.strip()]
    path = str(run_config.get("config", "") or "")
    if path:
        return load_config(path, overrides)
    raw = yaml.safe_load(resources.files("fedhello.resources").joinpath("demo.yaml").read_text())
    return build_config(raw, overrides)


def run_on_grid(grid: Grid, run_config: dict) -> dict:
    """The whole run on ``grid``; returns the summary."""
    from fedhello.flower.strategy import FedHelloStrategy, FlowerRunner, hello
    from fedhello.report.hooks import RunReporter
    from fedhello.run.experiment import run_experiment
    from fedhello.run.limits import apply_node_limits
    from fedhello.run.rundir import RunDir

    rc = dict(DEFAULTS, **dict(run_config))
    cfg = load_experiment(rc)
    out = Path(str(rc["out"])).expanduser().resolve()
    timeout = float(rc["round-timeout"])
    min_nodes = int(rc["min-nodes"]) or cfg.clients.num_clients
    info: dict = {}

    def log(msg: str) -> None:
        _log.info("fedhello: %s", msg)

    def make_runner(exp):
        limits: dict[int, dict[str, float]] = {}
        node_of, declared = hello(grid, cfg.clients.num_clients, cfg.clients.budgets,
                                  float(rc["wait-nodes-s"]), min_nodes, log, limits)
        for cid, g in declared.items():
            exp.groups[cid] = g  # a node's own budget decides its group
        # a node's declared limits replace its group's (fedhello.run.limits)
        apply_node_limits(exp, limits, {cid: f"node {node_of[cid]} (client {cid})" for cid in limits})
        if limits:
            info.update(node_limits={str(c): v for c, v in sorted(limits.items())})
        info.update(nodes={str(c): n for c, n in sorted(node_of.items())}, declared_groups=declared)
        log(f"{len(node_of)} nodes: " + ", ".join(f"client {c} = node {n}" for c, n in sorted(node_of.items())))
        experiment_json = json.dumps(cfg.to_dict(), sort_keys=True)  # sent to the nodes in every message
        strategy = FedHelloStrategy(exp.layermap, experiment_json, node_of, ttl=timeout + 60.0)
        return FlowerRunner(grid, strategy, timeout, log)

    log(f"{cfg.strategy.name}: {cfg.rounds} rounds, {cfg.clients.num_clients} clients -> {out}")
    summary = run_experiment(
        cfg, out, overwrite=bool(rc["overwrite"]), runner_factory=make_runner, reporter=RunReporter,
        on_round=lambda r: log(
            f"round {r['round']}/{cfg.rounds - 1}: {len(r['clients'])} updates, {len(r['failed_clients'])} failed, "
            f"test acc {r['test_accuracy']}, {r['round_time_s']:.1f}s"
        ),
    )
    RunDir(out).write_json("flower.json", dict(info, runtime="flower", round_timeout_s=timeout))
    return summary


def make_app(defaults: dict | None = None) -> ServerApp:
    """A ServerApp whose run config falls back to ``defaults`` (used by tests and ``run_simulation``)."""
    server_app = ServerApp()
    base = dict(defaults or {})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_on_grid(grid, dict(base, **dict(context.run_config)))

    return server_app


app = make_app()
