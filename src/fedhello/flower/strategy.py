"""Fed-HeLLo's messages to and from Flower nodes, and the ClientRunner that sends them.

Why this shape (one round logic for every runtime): the round loop lives in
:class:`fedhello.federation.server.Server` (sample -> allocate -> fit ->
validate -> aggregate layer-wise -> evaluate -> record). On Flower only the
*fit* step changes, so the ServerApp runs that very loop over
:class:`FlowerRunner`, a ``ClientRunner`` whose ``fit`` asks
:class:`FedHelloStrategy` to build one message per sampled node
(``configure_train``), sends them through the ``Grid`` and turns the replies
back into ``ClientUpdate`` / ``ClientFailure`` (``collect``). Validation and
layer-wise aggregation then happen in the Server exactly as in-process, so
allocation, aggregation, evaluation and the run directory are the same code.

:class:`FedHelloStrategy` is therefore not a Flower ``Strategy``
(``flwr.serverapp.strategy.Strategy``): that class's ``start`` is a round loop
of its own (configure_train -> send -> aggregate_train -> evaluate), and a
second round loop is what this design avoids. The method names follow
Flower's for the same roles. Screening replies and aggregating them is the
Server's alone (:func:`fedhello.federation.aggregation.screen_round`), for
Flower and in-process runs alike.

Downlink: each node gets the *whole* global adapter (all LoRA layers + head),
not only its layers. A client's forward pass goes through every LoRA layer,
trained by it or not, so sending only its layers would leave the others at
whatever stale values the node last saw and its update would no longer be
the in-process one. The adapter is small (MiniLM r=16: ~0.6 MB), so a per-node
cache is not worth its failure modes (nodes restarting, missed rounds).
Uplink: only the trained tensors (allocated layers + head); anything else is
rejected.

Node identity: the SuperLink's ``src_node_id`` of a reply decides which client
it is from (never the reply's content). Node ids are mapped to client ids
(= partition ids) once by a ``hello`` query.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from fedhello.errors import FedHelloError
from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.model.layermap import LayerMap
from fedhello.model.rank import truncate_rank
from fedhello.model.state import State


def _reason(msg: Message) -> str:
    err = msg.error
    return f"node error {err.code}: {' '.join(str(err.reason).split())[:300]}"


POLL_S = 0.2  # seconds between two looks for replies


def exchange(grid: Grid, msgs: Sequence[Message], timeout: float | None) -> list[Message]:
    """``grid.send_and_receive(msgs, timeout=timeout)``, looking for replies every :data:`POLL_S` seconds.

    Flower's own ``send_and_receive`` of the deployment runtime's Grid looks every 3
    seconds, which puts a floor of up to 3 s on every round. A Grid without
    ``push_messages``/``pull_messages`` gets its own ``send_and_receive``.
    """
    import time

    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        return list(grid.send_and_receive(msgs, timeout=timeout))
    pending = set(grid.push_messages(msgs))
    end = None if timeout is None else time.monotonic() + timeout
    out: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(POLL_S)
    return out


class FedHelloStrategy:
    """Per-node partial training messages out, their replies back as updates or failures.

    ``configure_train`` uses the tasks of the round set by :meth:`plan` (the
    project allocator's decision, made by the Server loop); ``collect`` turns the
    replies into what the Server then screens and aggregates.
    """

    def __init__(self, layermap: LayerMap, experiment_json: str, node_of: dict[int, int],
                 ttl: float | None = None):
        self.layermap = layermap
        self.experiment_json = experiment_json
        self.node_of = dict(node_of)  # client id -> node id
        self.ttl = ttl
        self._tasks: list[FitTask] = []
        self._sent: dict[int, FitTask] = {}  # node id -> task of the current round
        self._messages: list[Message] = []  # the current round's train messages

    def client_of(self, node_id: int) -> int | None:
        """The client id of Flower node ``node_id`` (None: no client of this run)."""
        for cid, nid in self.node_of.items():
            if nid == node_id:
                return cid
        return None

    def plan(self, tasks: Sequence[FitTask]) -> None:
        """Set the round's tasks, which :meth:`configure_train` and :meth:`collect` then use."""
        self._tasks = list(tasks)

    def configure_train(self, server_round: int, global_state: State) -> list[Message]:
        """One train message per task of the round (see :mod:`fedhello.flower` for the contents)."""
        self._sent = {}
        full = ArrayRecord(global_state)
        messages = []
        for task in self._tasks:
            nid = self.node_of[task.client_id]
            cfg = ConfigRecord({
                "client-id": int(task.client_id), "round": int(task.round),
                "layers": [int(x) for x in task.layers], "lr": float(task.lr), "seed": int(task.seed),
                "experiment": self.experiment_json,
            })
            down = full
            if task.rank is not None:  # rank-heterogeneous strategies: the node's first `rank` components
                cfg["rank"] = int(task.rank)
                down = ArrayRecord(truncate_rank(global_state, task.rank))
            content = RecordDict({"arrays": down, "config": cfg})
            messages.append(Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN,
                                    group_id=str(server_round), ttl=self.ttl))
            self._sent[nid] = task
        self._messages = messages  # their ids, set when the Grid pushes them, name SuperLink error replies
        return messages

    def collect(self, replies: Iterable[Message]) -> list[ClientUpdate | ClientFailure]:
        """The round's replies as updates or failures (error reply, no reply, malformed).

        One result per task, except: a node that replied more than once gets every
        reply listed, and a reply from a node not asked this round is listed as a
        failure of its client; :func:`~fedhello.federation.aggregation.screen_replies`
        rejects and records both.
        """
        got: dict[int, list[ClientUpdate | ClientFailure]] = {}
        unasked: list[ClientFailure] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if nid == SUPERLINK_NODE_ID and msg.has_error():
                # the SuperLink answers for a node that went away (Flower's NODE_UNAVAILABLE): the
                # failure is the client's whose message this replies to
                dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self._messages}
                nid = dst.get(msg.metadata.reply_to_message_id, nid)
            task = self._sent.get(nid)
            if task is None:
                cid = self.client_of(nid)
                who = f"client {cid}" if cid is not None else f"node {nid} (no client of this run)"
                unasked.append(ClientFailure(cid, f"{who}: reply for a client not asked this round"))
                continue
            cid = task.client_id
            if msg.has_error():
                got.setdefault(cid, []).append(ClientFailure(cid, _reason(msg)))
                continue
            try:
                content = msg.content
                tensors = content.array_records["arrays"].to_torch_state_dict()
                metrics = content.metric_records["metrics"]
                claimed = metrics.get("client-id", cid)
                if claimed != cid:
                    raise ValueError(f"node {nid} is client {cid} but its reply claims client {claimed}")
                got.setdefault(cid, []).append(ClientUpdate(
                    # the count as sent (int or float): validation rejects anything but a positive int
                    client_id=cid, num_samples=metrics["num-examples"], tensors=tensors,
                    layers=list(task.layers), train_loss=float(metrics.get("train-loss", float("nan"))),
                    train_time_s=float(metrics.get("train-time-s", 0.0)),
                    train_cpu_time_s=float(metrics.get("train-cpu-time-s", 0.0)),
                    train_memory_bytes=int(metrics.get("train-memory-bytes", 0)),
                    # as sent: screening (check_cost_report) refuses anything but counts >= 0
                    train_batches=metrics.get("train-batches", 0),
                    train_tokens=metrics.get("train-tokens", 0),
                    train_max_batch_tokens=metrics.get("train-max-batch-tokens", 0),
                ))
            except Exception as err:  # malformed content: the node failed this round
                got.setdefault(cid, []).append(
                    ClientFailure(cid, f"malformed reply ({type(err).__name__}: {err})"[:300]))
        out: list[ClientUpdate | ClientFailure] = []
        for t in self._tasks:
            out += got.get(t.client_id) or [
                ClientFailure(t.client_id, "no reply (node gone, or past the round timeout)")]
        return out + unasked


class FlowerRunner:
    """The Server loop's ClientRunner over a Flower Grid (simulation or deployment)."""

    def __init__(self, grid: Grid, strategy: FedHelloStrategy, timeout: float | None,
                 log: Callable[[str], None] | None = None):
        self.grid = grid
        self.strategy = strategy
        self.timeout = timeout
        self.log = log or (lambda m: None)
        self.missed: set[int] = set()  # clients that did not answer last time: skipped once

    def fit(self, tasks: Sequence[FitTask], global_state: State) -> list[ClientUpdate | ClientFailure]:
        """See :meth:`~fedhello.federation.server.ClientRunner.fit`.

        One train message per task through the Grid, waiting at most ``timeout``
        seconds; a client without a usable reply is a failure, and is skipped at the
        next sampling (see :meth:`available`).
        """
        self.strategy.plan(tasks)
        rnd = tasks[0].round + 1 if tasks else 0
        msgs = self.strategy.configure_train(rnd, global_state)
        replies = exchange(self.grid, msgs, self.timeout) if msgs else []
        results = self.strategy.collect(replies)
        self.missed = {r.client_id for r in results if isinstance(r, ClientFailure)}
        return results

    def _query(self, action: str, client_ids: Sequence[int], global_state: State):
        """Send the query ``action`` with the global state to each client's node; yield (client id, reply).

        The message type ``query.<action>`` reaches the ClientApp's ``@app.query("<action>")`` handler.
        """
        arrays = ArrayRecord(global_state)
        msgs, asked = [], {}
        for cid in client_ids:
            nid = self.strategy.node_of[cid]
            cfg = ConfigRecord({"client-id": int(cid), "experiment": self.strategy.experiment_json})
            msgs.append(Message(content=RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=nid,
                                message_type=f"{MessageType.QUERY}.{action}", ttl=self.strategy.ttl))
            asked[nid] = cid
        for msg in exchange(self.grid, msgs, self.timeout):
            cid = asked.pop(msg.metadata.src_node_id, None)  # one reply per asked node
            if cid is not None:
                yield cid, msg

    def class_stats(self, client_ids: Sequence[int], global_state: State):
        """See :meth:`~fedhello.federation.server.ClientRunner.class_stats` (query ``class_stats``).

        The Server checks the statistics' shapes and values.
        """
        got: dict[int, tuple[np.ndarray, np.ndarray, float] | ClientFailure] = {}
        for cid, msg in self._query("class_stats", client_ids, global_state):
            if msg.has_error():
                got[cid] = ClientFailure(cid, _reason(msg))
                continue
            try:
                arrays = msg.content.array_records["arrays"]
                got[cid] = (arrays["sums"].numpy().astype(np.float64), arrays["counts"].numpy().astype(np.float64),
                            float(msg.content.metric_records["metrics"]["norm-sum"]))
            except Exception as err:
                got[cid] = ClientFailure(cid, f"malformed class statistics ({type(err).__name__})")
        out = [got.get(cid) or ClientFailure(cid, "no class statistics before the timeout") for cid in client_ids]
        # a node lost here is recorded by the statistics round (by client id) and skipped once, like after fit
        self.missed = {r.client_id for r in out if isinstance(r, ClientFailure)}
        return out

    def scores(self, client_ids: Sequence[int], global_state: State):
        """See :meth:`~fedhello.federation.server.ClientRunner.scores` (a ``fisher`` query).

        A reply that is not one finite score per layer with a positive sample count is a
        failure; failures are logged.
        """
        got: dict[int, tuple[np.ndarray, int] | ClientFailure] = {}
        for cid, msg in self._query("fisher", client_ids, global_state):
            if msg.has_error():
                got[cid] = ClientFailure(cid, _reason(msg))
                continue
            try:
                s = msg.content.array_records["arrays"]["scores"].numpy().astype(np.float64)
                n = int(msg.content.metric_records["metrics"]["num-examples"])
                if s.shape != (self.strategy.layermap.num_layers,) or not np.all(np.isfinite(s)) or n < 1:
                    raise ValueError("bad Fisher scores")
                got[cid] = (s, n)
            except Exception as err:
                got[cid] = ClientFailure(cid, f"malformed Fisher reply ({err})")
        out = [got.get(cid) or ClientFailure(cid, "no Fisher reply before the timeout") for cid in client_ids]
        for r in out:
            if isinstance(r, ClientFailure):
                self.log(f"Fisher scores: client {r.client_id} failed: {r.reason}")
        return out

    def available(self) -> set[int] | None:
        """See :meth:`~fedhello.federation.server.ClientRunner.available`.

        The clients whose node is connected, less those that missed the last round
        (skipped once, unless that leaves none).
        """
        up = set(self.grid.get_node_ids())
        ids = {cid for cid, nid in self.strategy.node_of.items() if nid in up}
        # a client that missed the last round is skipped once (unless that leaves nobody)
        rest = ids - self.missed
        self.missed = set()
        return rest or ids


def node_limits(c, nid: int) -> dict[str, float]:
    """A hello reply's declared limits (``memory-mb``, ``time-s``, ``upload-mb``) as
    ``{memory_mb, time_s, upload_mb}``; FedHelloError naming the node config key for a
    value that is not a positive finite number."""
    import math

    out = {}
    for key in ("memory-mb", "time-s", "upload-mb"):
        if key not in c:
            continue
        v = c[key]
        try:
            x = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not (math.isfinite(x) and x > 0):
            raise FedHelloError(f"node {nid}: node config {key}={v!r} is not a positive finite number")
        out[key.replace("-", "_")] = x
    return out


def hello(grid: Grid, num_clients: int, budgets: Sequence[int], timeout: float, min_nodes: int,
          log: Callable[[str], None], limits: dict[int, dict[str, float]] | None = None,
          ) -> tuple[dict[int, int], dict[int, int]]:
    """Ask every connected node who it is; wait until ``min_nodes`` have answered.

    Returns (client id -> node id, client id -> declared group). ``limits``, when given,
    is filled with client id -> the node's declared limits (``{memory_mb, time_s,
    upload_mb}``, any subset) for every node that declares some.
    """
    import time

    node_of: dict[int, int] = {}
    groups: dict[int, int] = {}
    asked: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        new = [nid for nid in grid.get_node_ids() if nid not in asked]
        if new:
            msgs = [Message(content=RecordDict(), dst_node_id=nid, message_type=f"{MessageType.QUERY}.hello")
                    for nid in new]
            asked.update(new)
            for msg in grid.send_and_receive(msgs, timeout=max(5.0, deadline - time.monotonic())):
                nid = msg.metadata.src_node_id
                if msg.has_error():
                    log(f"node {nid} did not say hello: {_reason(msg)}")
                    continue
                c = msg.content.config_records["config"]
                pid, nparts, budget = int(c["partition-id"]), int(c["num-partitions"]), int(c.get("budget", 0))
                if nparts != num_clients:
                    raise FedHelloError(
                        f"node {nid}: node config num-partitions={nparts} but the config has "
                        f"clients.num_clients={num_clients}"
                    )
                if not 0 <= pid < num_clients:
                    raise FedHelloError(f"node {nid}: node config partition-id={pid} is not in [0, {num_clients})")
                if pid in node_of:
                    raise FedHelloError(f"nodes {node_of[pid]} and {nid} both have partition-id={pid}")
                if budget:
                    if budget not in budgets:
                        raise FedHelloError(
                            f"node {nid}: node config budget={budget} is not one of clients.budgets {list(budgets)}"
                        )
                    groups[pid] = list(budgets).index(budget)
                declared = node_limits(c, nid)
                if declared and limits is not None:
                    limits[pid] = declared
                node_of[pid] = nid
        if len(node_of) >= min_nodes:
            return node_of, groups
        if time.monotonic() > deadline:
            raise FedHelloError(f"only {len(node_of)} of {min_nodes} nodes connected within {timeout:.0f}s")
        time.sleep(1.0)
