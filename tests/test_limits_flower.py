"""A Flower node's declared limits (node config memory-mb, time-s, upload-mb) reach the allocation.

The real ServerApp path (``run_on_grid``: hello -> limits -> Server loop) over a fake Grid whose
nodes answer hello with their node config and train messages with honest updates (no processes).
"""

from __future__ import annotations

import json

import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402

from fedhello.allocation.resources import LayerCosts, LinearCost  # noqa: E402
from fedhello.errors import FedHelloError  # noqa: E402

COSTS3 = LayerCosts(
    memory=LinearCost(10e6, (10e6,) * 3, (1e6,) * 3),
    step_time=LinearCost(0.01, (0.01,) * 3, (0.001,) * 3),
    upload=(0.05e6,) * 3,
)


class NodeGrid:
    """Nodes 100+i for clients i, each with a node config; train replies are honest no-op updates."""

    def __init__(self, node_configs, reply_metrics=None):
        self.node_configs = node_configs
        self.reply_metrics = reply_metrics or {}  # client -> extra reply metrics (batch shape)
        self.sent: list[tuple[int, list[int]]] = []

    def get_node_ids(self):
        return [100 + i for i in range(len(self.node_configs))]

    def send_and_receive(self, messages, *, timeout=None):
        from fedhello.flower import client_app

        out = []
        for m in messages:
            cid = m.metadata.dst_node_id - 100
            ctx = Context(run_id=1, node_id=m.metadata.dst_node_id, node_config=self.node_configs[cid],
                          state=RecordDict(), run_config={})
            if m.metadata.message_type == "query.hello":
                out.append(client_app.hello(m, ctx))
                continue
            layers = [int(x) for x in m.content.config_records["config"]["layers"]]
            self.sent.append((cid, layers))
            g = m.content.array_records["arrays"].to_torch_state_dict()
            # the LoRA tensors of the sent layers (BERT names: ...layer.<i>....lora_A/B...)
            mine = {n: g[n] for n in g if "lora_" in n and any(f".layer.{l}." in n for l in layers)}
            content = RecordDict({"arrays": ArrayRecord(mine),
                                  "metrics": MetricRecord({"num-examples": 1, "train-loss": 1.0,
                                                           **self.reply_metrics.get(cid, {})})})
            out.append(Message(content=content, reply_to=m))
        return out


def setup(tiny_bert, tmp_path, node_limits, costs=COSTS3, reply_metrics=None):
    import yaml

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"costs": costs.to_json()}))
    raw = {
        "seed": 1, "rounds": 2, "device": "cpu",
        "model": {"name": str(tiny_bert), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 60, "val_fraction": 0.2},
        "partition": {"name": "iid"},
        "clients": {"num_clients": 3, "per_round": 3, "fractions": [1.0], "budgets": [3],
                    "cost_profile": str(profile)},
        "head": {"train": "frozen", "init": "random"},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 8, "lr": 0.01, "max_steps": 1},
        "eval": {"every": 2, "batch_size": 64},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    nodes = [{"partition-id": i, "num-partitions": 3, **node_limits.get(i, {})} for i in range(3)]
    return tmp_path / "cfg.yaml", NodeGrid(nodes, reply_metrics)


def test_node_memory_limit_reaches_the_allocation(tiny_bert, tmp_path, task_identity):
    from fedhello.flower.server_app import run_on_grid
    from fedhello.run.rundir import RunDir

    # node of client 0 affords one layer, and only from layer 1 up ([1]: 31 MB, [0]: 41 MB, [1, 2]: 32 MB)
    cfg, grid = setup(tiny_bert, tmp_path, {0: {"memory-mb": 31.0}})
    run_on_grid(grid, {"config": str(cfg), "out": str(tmp_path / "run"), "wait-nodes-s": 5.0})
    sent0 = [layers for cid, layers in grid.sent if cid == 0]
    others = [layers for cid, layers in grid.sent if cid != 0]
    assert len(sent0) == 2 and all(len(l) == 1 and l[0] >= 1 for l in sent0)
    assert others and all(l == [0, 1, 2] for l in others)
    recs = RunDir(tmp_path / "run").read_metrics()
    c0 = [c for r in recs for c in r["clients"] if c["id"] == 0]
    assert all(c["memory_limit_bytes"] == 31e6 and c["predicted_memory_bytes"] <= 31e6 for c in c0)
    assert json.loads((tmp_path / "run" / "flower.json").read_text())["node_limits"] == {"0": {"memory_mb": 31.0}}


@pytest.mark.parametrize("limit,message", [
    ({"memory-mb": 20.0}, "node 100 (client 0): memory_mb 20 MB fits no layer set: the cheapest set, [2], needs 21 MB"),
    ({"time-s": -1.0}, "node 100: node config time-s=-1.0 is not a positive finite number"),
    ({"upload-mb": "lots"}, "node 100: node config upload-mb='lots' is not a positive finite number"),
])
def test_bad_node_limits_are_refused_naming_the_node(tiny_bert, tmp_path, task_identity, limit, message):
    from fedhello.flower.server_app import run_on_grid

    cfg, grid = setup(tiny_bert, tmp_path, {0: limit})
    with pytest.raises(FedHelloError) as err:
        run_on_grid(grid, {"config": str(cfg), "out": str(tmp_path / "run"), "wait-nodes-s": 5.0})
    assert str(err.value) == message
    assert grid.sent == []


def test_batch_shape_travels_with_the_reply_and_tampered_shapes_are_refused(tiny_bert, tmp_path, task_identity):
    from dataclasses import replace

    from fedhello.allocation.resources import BatchShape, predict_for_shape
    from fedhello.flower.server_app import run_on_grid
    from fedhello.run.rundir import RunDir

    costs = replace(COSTS3, meta={"tokens_per_batch": 192, "memory_state_base": 0.0, "memory_state": [1e6] * 3,
                                  "time_source": "process CPU time"})
    shape = {"train-batches": 2, "train-tokens": 300, "train-max-batch-tokens": 160}
    cfg, grid = setup(tiny_bert, tmp_path, {}, costs, reply_metrics={
        0: shape, 1: dict(shape, **{"train-tokens": -5}), 2: dict(shape, **{"train-max-batch-tokens": float("inf")})})
    run_on_grid(grid, {"config": str(cfg), "out": str(tmp_path / "run"), "wait-nodes-s": 5.0})
    recs = RunDir(tmp_path / "run").read_metrics()
    for r in recs:
        (c,) = r["clients"]  # only the honest node's reply is aggregated
        assert c["id"] == 0 and (c["train_batches"], c["train_tokens"], c["train_max_batch_tokens"]) == (2, 300, 160)
        mem, sec = predict_for_shape(costs, c["layers"], BatchShape(2, 300, 160))
        assert (c["predicted_memory_bytes"], c["predicted_time_s"]) == (mem, sec)
        assert c["bound_memory_bytes"] == costs.memory_bytes(c["layers"]) > mem  # a 160-token batch < 192
        assert c["predicted_time_clock"] == "cpu"
        failed = {f["id"]: f["reason"] for f in r["failed_clients"]}
        assert failed == {1: "client 1: train_tokens must be an integer >= 0, got -5",
                          2: "client 2: train_max_batch_tokens must be an integer >= 0, got inf"}
