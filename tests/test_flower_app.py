"""Fed-HeLLo on Flower: strategy (malicious replies) and Flower's simulation runtime.

What runs where:
- test_malicious_*: the Flower strategy and the Server loop with crafted Flower
  Messages (a fake Grid, no processes).
- test_simulation_runtime_equals_in_process: Flower's simulation runtime
  (``flwr.simulation.run_simulation``: the real ServerApp and ClientApp exchanging
  Messages through the simulation SuperLink, ClientApps in Ray actors).
- loopback deployments (SuperLink and SuperNodes as processes): tests/test_flower_deploy.py.
Every test keeps FLWR_HOME, RAY_TMPDIR and TMPDIR inside its tmp_path and stops
every process it started.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

from fedhello.config import build_config, load_config  # noqa: E402
from fedhello.run.experiment import prepare, run_experiment  # noqa: E402
from fedhello.flower.strategy import FedHelloStrategy, FlowerRunner  # noqa: E402
from fedhello.run.rundir import RunDir  # noqa: E402
from conftest import screen_and_aggregate  # noqa: E402
from helpers import merged, small_raw, torch_threads  # noqa: E402


def tiny_raw(model, **kw) -> dict:
    raw = small_raw(model, seed=1, device="cpu", model={"max_length": 24}, data={"val_fraction": 0.2},
                    partition={"name": "iid"}, clients={"num_clients": 3}, train={"lr": 0.01},
                    eval={"every": 1, "batch_size": 64})
    return merged(raw, kw, replace=True)


@pytest.fixture
def flower_env(tmp_path, monkeypatch):
    import shutil
    import tempfile

    for key in ("FLWR_HOME", "TMPDIR"):
        d = tmp_path / key.lower()
        d.mkdir()
        monkeypatch.setenv(key, str(d))
    # Ray's unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep
    ray_tmp = tempfile.mkdtemp(prefix="fhray", dir="/tmp" if os.path.isdir("/tmp") else None)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    yield tmp_path
    shutil.rmtree(ray_tmp, ignore_errors=True)


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def ckpt_state(path) -> dict:
    return torch.load(path / "checkpoint.pt", weights_only=True)["global_state"]


# -- malicious replies (no processes) --------------------------------------------------

class FakeGrid:
    """A Grid whose nodes answer with crafted replies (node id = 100 + client id)."""

    def __init__(self, answer):
        self.answer = answer  # (client id, instruction message) -> reply Message or None

    def get_node_ids(self):
        return [100, 101, 102, 103, 104, 105, 106]

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            r = self.answer(m.metadata.dst_node_id - 100, m)
            if r is not None:
                out.append(r)
        return out


def reply(msg: Message, tensors: dict, n: int = 10) -> Message:
    content = RecordDict({"arrays": ArrayRecord(tensors),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
    return Message(content=content, reply_to=msg)


@pytest.fixture(scope="module")
def tiny_exp(tiny_bert):
    # crafted replies carry the head: the federated head protocol
    return prepare(build_config(tiny_raw(tiny_bert, clients={
        "num_clients": 7, "per_round": 7, "fractions": [1.0], "budgets": [1]},
        head={"train": "federated", "init": "random"})))


def crafted(exp):
    """Client 0 honest; 1 extra layer; 2 NaN; 3 wrong shape; 4 wrong dtype; 5 error reply; 6 silent."""
    lm = exp.layermap

    def answer(cid, msg):
        layers = [int(x) for x in msg.content.config_records["config"]["layers"]]
        g = msg.content.array_records["arrays"].to_torch_state_dict()
        mine = {n: g[n] + 1.0 for n in lm.names_for(layers, include_head=True)}
        other = next(i for i in range(lm.num_layers) if i not in layers)
        name = lm.layers[layers[0]][0]
        if cid == 1:
            mine[lm.layers[other][0]] = g[lm.layers[other][0]] + 5.0
        elif cid == 2:
            mine[name] = mine[name].clone()
            mine[name][0, 0] = float("nan")
        elif cid == 3:
            mine[name] = torch.zeros(mine[name].shape[0] + 1, mine[name].shape[1])
        elif cid == 4:
            mine[name] = mine[name].double()
        elif cid == 5:
            return Message(Error(code=0, reason="client raised"), reply_to=msg)
        elif cid == 6:
            return None
        return reply(msg, mine)

    return answer


def test_malicious_replies_rejected_on_the_flower_path(tiny_exp, task_identity):
    from fedhello.federation.client import FitTask

    exp = tiny_exp
    g = exp.global_state()
    strat = FedHelloStrategy(exp.layermap, "{}", {c: 100 + c for c in range(7)})
    tasks = [FitTask(client_id=c, round=0, layers=[c % exp.layermap.num_layers], lr=0.1, seed=c) for c in range(7)]
    strat.plan(tasks)
    grid = FakeGrid(crafted(exp))
    msgs = list(strat.configure_train(1, g))
    # each node gets the whole global adapter and only its own layer list
    assert [m.metadata.dst_node_id for m in msgs] == [100 + c for c in range(7)]
    assert set(msgs[0].content.array_records["arrays"].to_torch_state_dict()) == set(g)
    assert [list(m.content.config_records["config"]["layers"]) for m in msgs] == [t.layers for t in tasks]
    results = strat.collect(grid.send_and_receive(msgs))
    new, failed, accepted = screen_and_aggregate(tasks, results, g, exp.layermap)
    failed = {f["id"]: f["reason"] for f in failed}
    assert sorted(failed) == [1, 2, 3, 4, 5, 6]
    assert "outside its allocation" in failed[1] and "non-finite" in failed[2]
    assert "shape" in failed[3] and "dtype" in failed[4]
    assert "client raised" in failed[5] and "no reply" in failed[6]
    assert accepted == 1
    honest = set(exp.layermap.names_for(tasks[0].layers, include_head=True))
    for name in g:  # only client 0's tensors moved (by exactly +1); nothing of the others
        expect = g[name] + 1.0 if name in honest else g[name]
        assert torch.equal(new[name], expect), name


def test_malicious_replies_recorded_by_the_server_loop(tiny_exp, task_identity):
    """The ServerApp's path: FlowerRunner -> Server.run_round validates, records, never aggregates."""
    from fedhello.federation.server import Server

    exp = tiny_exp
    strat = FedHelloStrategy(exp.layermap, "{}", {c: 100 + c for c in range(7)})
    runner = FlowerRunner(FakeGrid(crafted(exp)), strat, timeout=1.0)
    server = Server.for_experiment(exp, runner)
    g = server.state.global_state
    rec = server.run_round(0).to_dict()
    assert [c["id"] for c in rec["clients"]] == [0]
    assert sorted(f["id"] for f in rec["failed_clients"]) == [1, 2, 3, 4, 5, 6]
    layers0 = rec["clients"][0]["layers"]
    honest = set(exp.layermap.names_for(layers0, include_head=True))
    new = server.state.global_state
    for name in g:
        assert torch.equal(new[name], g[name] + 1.0 if name in honest else g[name]), name
    # nodes that raised or stayed silent are skipped once in the next round's sampling;
    # nodes whose replies were rejected answered, so they still count as up
    assert runner.available() == {0, 1, 2, 3, 4}
    assert runner.available() == {0, 1, 2, 3, 4, 5, 6}


def test_rank_tasks_send_truncated_adapter_and_reject_full_rank_replies(tiny_exp, task_identity):
    """hetlora/flexlora on Flower: a rank-r node is sent r components and may only send r back."""
    from fedhello.allocation import build_strategy
    from fedhello.federation.client import FitTask
    from fedhello.model.rank import truncate_rank

    exp = tiny_exp
    g = exp.global_state()
    lm = exp.layermap
    every = list(range(lm.num_layers))
    cfg = exp.cfg.model_copy(update={"strategy": exp.cfg.strategy.model_copy(update={"name": "hetlora"})})
    rule = build_strategy(cfg.strategy, lm.num_layers, cfg.clients.budgets).aggregation
    strat = FedHelloStrategy(lm, "{}", {c: 100 + c for c in range(2)})
    tasks = [FitTask(client_id=c, round=0, layers=every, lr=0.1, seed=c, rank=2) for c in range(2)]
    strat.plan(tasks)

    def answer(cid, msg):
        sent = msg.content.array_records["arrays"].to_torch_state_dict()
        if cid == 0:  # honest: its rank-2 tensors, each + 1
            return reply(msg, {n: t + 1.0 for n, t in sent.items()})
        return reply(msg, {n: g[n] + 1.0 for n in sent})  # full-rank tensors: above its rank

    grid = FakeGrid(answer)
    msgs = list(strat.configure_train(1, g))
    assert [m.content.config_records["config"]["rank"] for m in msgs] == [2, 2]
    down = msgs[0].content.array_records["arrays"].to_torch_state_dict()
    expect = truncate_rank(g, 2)
    assert set(down) == set(g)
    a_name = next(n for n in g if ".lora_A." in n)
    assert down[a_name].shape[0] == 2 < g[a_name].shape[0]
    assert all(torch.equal(down[n], expect[n]) for n in g)
    replies = grid.send_and_receive(msgs)
    results = strat.collect(replies)
    assert [type(r).__name__ for r in results] == ["ClientUpdate", "ClientUpdate"]
    new, failed, accepted = screen_and_aggregate(tasks, results, g, lm, rule=rule)
    failed = {f["id"]: f["reason"] for f in failed}
    assert list(failed) == [1] and "shape" in failed[1]
    assert accepted == 1
    # hetlora's rule with one update: its rank-2 components, zero-padded back to full rank
    for n, t in g.items():
        assert new[n].shape == t.shape, n
    assert torch.equal(new[a_name][:2], expect[a_name] + 1.0)
    assert not new[a_name][2:].any()


def test_run_config_defaults_are_stated_once():
    """pyproject.toml's [tool.flwr.app.config] and the app that deploy-local submits both
    state server_app.DEFAULTS (value and type), and the submitted app is this project's app."""
    import tomllib
    from pathlib import Path

    from fedhello.flower.deploy import app_pyproject
    from fedhello.flower.server_app import DEFAULTS

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]

    def typed(d):
        return {k: (type(v), v) for k, v in d.items()}

    assert typed(project["app"]["config"]) == typed(DEFAULTS)
    assert tomllib.loads(app_pyproject())["tool"]["flwr"] == project


# -- Flower simulation runtime -------------------------------------------------------------

@pytest.mark.flower
def test_simulation_runtime_equals_in_process(flower_env, tiny_bert):
    from flwr.simulation import run_simulation

    from fedhello.flower import client_app
    from fedhello.flower.server_app import make_app

    tmp = flower_env
    cfg_path = tmp / "cfg.yaml"
    # Fed-HeLLo with Fisher scores from the clients (a query message per sampled node each round)
    cfg_path.write_text(yaml.safe_dump(tiny_raw(tiny_bert, strategy={
        "name": "fedhello", "warmup_rounds": 0, "fim_source": "clients", "fim_every": 1, "fim_samples": 10})))
    cfg = load_config(cfg_path)
    with torch_threads(1):  # Ray actors run 1 thread: same kernels, same float sums
        run_experiment(cfg, tmp / "inproc")
    run_simulation(
        make_app({"config": str(cfg_path), "out": str(tmp / "flower"), "round-timeout": 300.0}),
        client_app.app, num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False}},
    )
    a, b = RunDir(tmp / "inproc"), RunDir(tmp / "flower")
    assert (tmp / "flower" / "summary.json").exists()
    assert b.read_config_dict() == a.read_config_dict()
    assert max_diff(ckpt_state(tmp / "inproc"), ckpt_state(tmp / "flower")) <= 1e-6
    ra, rb = a.read_metrics(), b.read_metrics()
    assert [[(c["id"], c["layers"], c["num_samples"]) for c in r["clients"]] for r in ra] == \
           [[(c["id"], c["layers"], c["num_samples"]) for c in r["clients"]] for r in rb]
    # the shape of what each client trained crosses the Flower path (ClientApp metrics -> records)
    shape = ("train_batches", "train_tokens", "train_max_batch_tokens")
    assert [[tuple(c[k] for k in shape) for c in r["clients"]] for r in ra] == \
           [[tuple(c[k] for k in shape) for c in r["clients"]] for r in rb]
    assert all(c["train_tokens"] > 0 for r in rb for c in r["clients"])
    assert all(r["failed_clients"] == [] for r in rb)
    # the default head protocol: the class-means statistics round went through Flower queries
    assert cfg.head.init == "class-means"
    assert rb[0]["head_init"]["clients"] == 3 and rb[0]["head_init"]["failed_clients"] == []
    assert rb[0]["head_init"]["upload_bytes"] == ra[0]["head_init"]["upload_bytes"] > 0
    for x, y in zip(ra, rb):  # Fisher scores from the ClientApps = those computed in-process
        assert y.get("fim_scores") is not None
        np.testing.assert_allclose(y["fim_scores"], x["fim_scores"], rtol=1e-6)
    assert json.loads((tmp / "flower" / "flower.json").read_text())["runtime"] == "flower"
    assert json.loads((tmp / "flower" / "clients.json").read_text()) == \
           json.loads((tmp / "inproc" / "clients.json").read_text())


# The loopback deployment tests (deploy-local, the deployment kit, refusals and faults) are in
# tests/test_flower_deploy.py.
