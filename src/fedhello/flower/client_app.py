"""The Fed-HeLLo ClientApp: one node = one client (partition) of the experiment.

Node config (``--node-config`` of ``flower-supernode``; set by Flower itself in
simulation):

- ``partition-id=I num-partitions=N``: which client this node is (N must equal
  ``clients.num_clients``).
- ``data-path=DIR`` (optional): where this node finds the dataset (overrides
  ``data.path`` of the experiment config). The node partitions it exactly as the
  in-process engine does (same config, same seed) and trains on partition I.
- ``budget=B`` (optional): the node's own layer budget (one of
  ``clients.budgets``); otherwise its resource group is the one the in-process
  engine gives client I.
- ``memory-mb=M``, ``time-s=T``, ``upload-mb=U`` (optional, any subset): the node's
  declared resource limits (as ``clients.limits`` declares them for a group). They
  replace its group's limits; the server allocates only layer sets whose predicted
  cost fits them (:mod:`fedhello.run.limits`).

Handlers: ``@app.train()`` and the named queries ``@app.query("hello")``,
``@app.query("fisher")`` and ``@app.query("class_stats")`` (what each message
carries: :mod:`fedhello.flower`). The experiment config comes from the server in
every message. The frozen backbone, the tokenized data and the partition are
built once per process and cached at module level (keyed by config, partition
and data path); the ClientApp reuses :func:`fedhello.run.experiment.prepare`
and :class:`~fedhello.federation.client.LocalTrainer`, so a node's update is the
one the in-process engine computes for that client.

Flower's deployment runtime starts a fresh ClientApp process for every message, so
that cache would last one message. A SuperNode started from a deployment kit
therefore has a node worker beside it (:mod:`fedhello.flower.node_worker`, socket in
``FEDHELLO_NODE_WORKER``): a long-lived process that keeps them loaded across
rounds; the ClientApp hands it each message's work (:func:`compute`, the same
code) and never imports torch itself. Without a worker the ClientApp computes here.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

app = ClientApp()

_CACHE: dict[tuple, object] = {}


def _node(context: Context) -> tuple[int, int, str | None, int]:
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise ValueError("node config needs partition-id=I num-partitions=N")
    data_path = nc.get("data-path")
    return int(nc["partition-id"]), int(nc["num-partitions"]), (str(data_path) if data_path else None), int(
        nc.get("budget", 0) or 0
    )


LIMIT_KEYS = ("memory-mb", "time-s", "upload-mb")  # node config keys of declared limits


def node_limits(context: Context) -> dict[str, float | str]:
    """The node's declared limits, as given (the server checks them)."""
    nc = context.node_config
    return {k: (nc[k] if isinstance(nc[k], (int, float)) else str(nc[k])) for k in LIMIT_KEYS if k in nc}


def _client(experiment_json: str, pid: int, data_path: str | None):
    """(experiment, trainer) for this node, built once per process."""
    key = (experiment_json, pid, data_path)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    from fedhello.config import build_config
    from fedhello.run.experiment import prepare

    raw = json.loads(experiment_json)
    if data_path:
        raw.setdefault("data", {})["path"] = data_path
    cfg = build_config(raw)
    if not 0 <= pid < cfg.clients.num_clients:
        raise ValueError(f"partition-id={pid} is not in [0, {cfg.clients.num_clients})")
    exp = prepare(cfg)
    trainer = exp.trainer()
    _CACHE.clear()  # one experiment per process
    _CACHE[key] = (exp, trainer)
    return exp, trainer


def compute(op: str, header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """The work of one message on numpy arrays: ``op`` is ``train``, ``fisher`` or ``class_stats``.

    ``header``: ``experiment`` (the resolved config as JSON), ``partition-id``,
    ``data-path`` (or None) and, for ``train``, the task (``round``, ``layers``, ``lr``,
    ``seed``, ``rank``); ``arrays``: the global adapter. Returns (reply arrays, reply
    metrics). The one code path of the ClientApp and of the node worker
    (:mod:`fedhello.flower.node_worker`), so both compute the same update.
    """
    import torch

    pid, data_path = int(header["partition-id"]), header.get("data-path")
    exp, trainer = _client(str(header["experiment"]), pid, data_path)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    if op == "train":
        from fedhello.federation.client import FitTask

        task = FitTask(client_id=pid, round=int(header["round"]), layers=[int(x) for x in header["layers"]],
                       lr=float(header["lr"]), seed=int(header["seed"]),
                       rank=int(header["rank"]) if header.get("rank") is not None else None)
        t0 = time.perf_counter()
        upd = trainer.fit(task, state, exp.partitions[pid])
        return ({k: t.detach().cpu().numpy() for k, t in upd.tensors.items()},
                {"num-examples": int(upd.num_samples), "train-loss": float(upd.train_loss),
                 "train-time-s": float(time.perf_counter() - t0),
                 "train-cpu-time-s": float(upd.train_cpu_time_s),
                 "train-memory-bytes": int(upd.train_memory_bytes),
                 "train-batches": int(upd.train_batches), "train-tokens": int(upd.train_tokens),
                 "train-max-batch-tokens": int(upd.train_max_batch_tokens)})
    if op == "fisher":
        scores, n = exp.client_fisher(pid, state)  # the subsample the in-process runner scores too
        return {"scores": np.asarray(scores, dtype=np.float64)}, {"num-examples": int(n)}
    if op == "class_stats":
        sums, counts, norm_sum = exp.class_stats(state, exp.partitions[pid])
        return ({"sums": np.asarray(sums, dtype=np.float64), "counts": np.asarray(counts, dtype=np.float64)},
                {"norm-sum": float(norm_sum)})
    raise ValueError(f"unknown operation {op!r}")


def _run(op: str, msg: Message, context: Context, **task) -> Message:
    """Compute ``op`` for ``msg`` (in the node worker when one serves this node, else here); the reply."""
    from fedhello.flower.node_worker import call_worker

    pid, _, data_path, _ = _node(context)
    header = dict(task, experiment=str(msg.content.config_records["config"]["experiment"]),
                  **{"partition-id": pid, "data-path": data_path})
    arrays = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    got = call_worker(op, header, arrays)
    out, metrics = got if got is not None else compute(op, header, arrays)
    return Message(content=RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
                                       "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's round (``@app.train()``): train the task's layers, reply with the update.

    Refuses a task for another client than this node's partition. The reply
    carries only the trained tensors and the metrics ``num-examples``,
    ``train-loss``, ``train-time-s``, ``train-cpu-time-s``, ``train-memory-bytes`` and the shape of
    what it trained: ``train-batches``, ``train-tokens``, ``train-max-batch-tokens``.
    """
    pid, _, _, _ = _node(context)
    c = msg.content.config_records["config"]
    if int(c["client-id"]) != pid:
        raise ValueError(f"task for client {c['client-id']} sent to partition {pid}")
    return _run("train", msg, context, round=int(c["round"]), layers=[int(x) for x in c["layers"]],
                lr=float(c["lr"]), seed=int(c["seed"]), rank=int(c["rank"]) if "rank" in c else None)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Which client this node is (``message_type="query.hello"``)."""
    pid, nparts, _, budget = _node(context)
    out = ConfigRecord({"partition-id": pid, "num-partitions": nparts, "budget": budget, **node_limits(context)})
    return Message(content=RecordDict({"config": out}), reply_to=msg)


@app.query("fisher")
def fisher(msg: Message, context: Context) -> Message:
    """Per-layer Fisher scores of the global adapter on this client's data (``query.fisher``)."""
    return _run("fisher", msg, context)


@app.query("class_stats")
def class_stats(msg: Message, context: Context) -> Message:
    """The class-means head's statistics round, before round 1 (``query.class_stats``)."""
    return _run("class_stats", msg, context)
