"""The server round loop, the same for every runtime.

One round: sample clients -> ask the strategy for each client's layers ->
hand the fit tasks to a :class:`ClientRunner` -> validate and aggregate the
replies layer-wise -> evaluate the global model -> record. The runner is the
only thing that knows how clients are reached (in-process simulation, Flower);
the loop itself knows nothing of it.

Rank-heterogeneous strategies also give each client a LoRA rank
(``Strategy.client_rank`` -> ``FitTask.rank``): the client is sent the global
state truncated to that rank (``fedhello.model.rank.truncate_rank``; a runtime
that transmits state sends exactly that) and replies with tensors of that rank;
the rule that ``Strategy.aggregation`` names in :data:`AGGREGATION_RULES`
replaces layer-wise averaging where the strategy needs to.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from fedhello.allocation import ClientSlot, Strategy
from fedhello.allocation.clients import allocation_rng, client_slots, sample_clients
from fedhello.allocation.resources import BatchShape, ResourceModel
from fedhello.errors import FedHelloError
from fedhello.federation.aggregation import aggregate, screen_round
from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask, round_seed, uploads_head
from fedhello.federation.progress import CLIENTS, EVALUATION, NO_PROGRESS, ROUNDS, STATISTICS, ProgressHook, phase
from fedhello.federation.records import RoundRecord, Summary
from fedhello.federation.rank_aggregation import flexlora_aggregate, hetlora_aggregate
from fedhello.federation.robust import (bound_update_norms, combine_class_stats, combine_scores, robust_mean,
                                       stats_problem)
from fedhello.model.layermap import LayerMap
from fedhello.model.rank import max_rank, truncate_rank
from fedhello.model.state import State, check_state, state_nbytes

Evaluator = Callable[[State], dict[str, dict[str, float]]]
"""global state -> {"val": {"accuracy", "loss", ...}, "test": {...}}"""


log = logging.getLogger("fedhello")

CHECKPOINT_KEYS = ("round", "global_state", "strategy_state", "records")


def check_checkpoint(ckpt: object, where: object) -> dict:
    """The checkpoint's structure: a dict of round (int), global_state (name -> tensor),
    strategy_state (dict) and records (one dict per finished round)."""
    if not isinstance(ckpt, dict):
        raise FedHelloError(f"{where}: not a fedhello checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    for key in CHECKPOINT_KEYS:
        if key not in ckpt:
            raise FedHelloError(f"{where}: not a fedhello checkpoint (key '{key}' missing)")
    rnd, state, records = ckpt["round"], ckpt["global_state"], ckpt["records"]
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
        raise FedHelloError(f"{where}: checkpoint key 'round' is not a round count ({rnd!r})")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise FedHelloError(f"{where}: checkpoint key 'global_state' is not a mapping of names to tensors")
    if not isinstance(ckpt["strategy_state"], dict):
        raise FedHelloError(f"{where}: checkpoint key 'strategy_state' is not a dict")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records) or len(records) != rnd:
        raise FedHelloError(f"{where}: checkpoint key 'records' does not hold one record per finished round ({rnd})")
    return ckpt


def _layerwise(global_state: State, updates, weighting: str) -> tuple[State, dict]:
    return aggregate(global_state, updates, weighting), {}


# Strategy.aggregation -> the rule that merges a round's validated updates: (state, info)
AGGREGATION_RULES = {"layerwise": _layerwise, "hetlora": hetlora_aggregate, "flexlora": flexlora_aggregate}


def merge_updates(global_state: State, updates: Sequence[ClientUpdate], rule: str, agg) -> tuple[State, dict]:
    """A round's screened updates merged, for every runtime: each update's deltas bounded
    (``agg.norm_bound``, :func:`~fedhello.federation.robust.bound_update_norms`), then the rule
    :data:`AGGREGATION_RULES` names, or for the layer-wise rule the ``agg.robust`` one.
    ``agg``: the config's ``aggregation`` section. Returns (state, info for the round's record)."""
    updates, bound_info = bound_update_norms(global_state, updates, agg.norm_bound)
    if rule == "layerwise" and agg.robust != "mean":
        new_state, info = robust_mean(global_state, updates, agg.robust, agg.trim), {}
    else:
        new_state, info = AGGREGATION_RULES[rule](global_state, updates, agg.weighting)
    if bound_info:
        info = {**info, "norm_bounded": bound_info["clipped"]}
    return new_state, info


class ClientRunner(Protocol):
    """How a runtime reaches clients: the one thing :class:`Server` does not know.

    Implementations: :class:`fedhello.federation.simulation.SimulationRunner`
    (every client in this process) and :class:`fedhello.flower.strategy.FlowerRunner`
    (one Flower node per client). A runner moves data and reports failures; it
    never validates or aggregates (the Server does, identically for every runtime).
    A client that fails, times out or cannot be reached is reported as a
    :class:`~fedhello.federation.client.ClientFailure` (with a reason) in its
    place, so that the round goes on with the others.
    """

    def fit(self, tasks: Sequence[FitTask], global_state: State) -> list[ClientUpdate | ClientFailure]:
        """Train each task's client from ``global_state``; one result per task.

        A task's client starts from ``global_state`` truncated to ``task.rank``
        (when set), trains ``task.layers`` with ``task.lr`` and ``task.seed``, and
        replies with only the tensors it trained. Results are matched to tasks by
        ``client_id``; the Server rejects extra, duplicate or malformed replies.
        """

    def scores(self, client_ids: Sequence[int], global_state: State) -> list[tuple[np.ndarray, int] | ClientFailure]:
        """Per-layer Fisher scores and sample counts computed by clients on their own data.

        One entry per id: ``(scores of length L, number of samples)`` or a failure.
        Used when ``strategy.fim_source`` is ``clients``; the Server averages the
        scores weighted by the sample counts.
        """

    def class_stats(
        self, client_ids: Sequence[int], global_state: State
    ) -> list[tuple[np.ndarray, np.ndarray, float] | ClientFailure]:
        """Per-class feature sums (C, D), counts (C,) and the sum of feature norms, computed
        forward-only by each client on its own data (the class-means head, fedhello.model.head).

        One entry per id, in the order of ``client_ids``.
        """

    def available(self) -> set[int] | None:
        """Ids of clients that can be reached now (None: all of them); sampling draws only from these."""


@dataclass
class ServerState:
    """Where the server loop stands: rounds finished, the global state and their records."""
    round: int  # rounds finished
    global_state: State
    records: list[dict] = field(default_factory=list)


class Server:
    """Runs rounds of federated LoRA fine-tuning over a :class:`ClientRunner`.

    Each round (:meth:`run_round`): sample up to ``clients.per_round`` of the eligible,
    available clients; ask the strategy for their layers (and ranks); have the
    runner train them; screen the replies (exact tensor names, shapes, dtypes,
    finite values, plausible sample counts); merge the accepted updates with the
    rule named by ``strategy.aggregation`` (:data:`AGGREGATION_RULES`); evaluate
    on the rounds ``eval.every`` asks for and the last one; return the round's
    record. With ``head_init`` set, :meth:`run` first sets the class-means head
    from the clients' class statistics (:meth:`initialise_head`).
    :meth:`checkpoint` returns the state after the last finished round and
    :meth:`restore` resumes from it.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment config (its rounds, seed, clients, strategy, train,
        aggregation, eval, head and lora keys are read).
    strategy : Strategy
        Decides each round's layer allocation; its state is checkpointed.
    groups : Sequence[int]
        The resource group of every client, by client id.
    layermap : LayerMap
        LoRA parameter names per layer: which tensors a reply must hold.
    global_state : State
        The initial global adapter (LoRA tensors, and the head).
    runner : ClientRunner
        How clients are reached.
    evaluator : Evaluator
        Scores a global state on the validation and test splits.
    server_scorer : callable, optional
        Fisher scores of a global state on the server's calibration set
        (``strategy.fim_source: server``).
    head_init : callable, optional
        The class-means head from summed class statistics (``head.init:
        class-means``), set before round 0 by :meth:`initialise_head`.
    num_classes : int, optional
        Checks the shape of the clients' class statistics.
    sample_counts : Sequence[int], optional
        Each client's partition size: a reply claiming more samples is rejected.
    """

    def __init__(
        self,
        cfg,
        strategy: Strategy,
        groups: Sequence[int],
        layermap: LayerMap,
        global_state: State,
        runner: ClientRunner,
        evaluator: Evaluator,
        server_scorer: Callable[[State], np.ndarray] | None = None,
        head_init: Callable[[np.ndarray, np.ndarray, float], State] | None = None,
        num_classes: int | None = None,
        sample_counts: Sequence[int] | None = None,
        resources: ResourceModel | None = None,
    ):
        """See the class docstring for the parameters."""
        self.cfg = cfg
        self.strategy = strategy
        self.groups = list(groups)
        self.budgets = list(cfg.clients.budgets)
        self.layermap = layermap
        self.state = ServerState(round=0, global_state=global_state)
        self.runner = runner
        self.evaluator = evaluator
        self.server_scorer = server_scorer
        self.head_init = head_init
        self.num_classes = num_classes
        self.uploads_head = uploads_head(cfg.head.train)
        self._head_info: dict | None = None  # the statistics round's costs, recorded with round 0
        # eval.test: selected: the best-validation round so far and its global state (checkpointed)
        self._best: dict | None = None
        # each client's training-set size as the server knows it (its partition): a reply
        # claiming more samples is rejected (README, "Bad input")
        self.sample_counts = list(sample_counts) if sample_counts is not None else None
        # the cost model and the clients' declared limits (clients.limits, Flower node config):
        # slots are restricted to what each client affords, plans checked, costs predicted
        self.resources = resources
        # where long steps stand (rounds, a round's clients, statistics, evaluation); set by the caller
        self.progress: ProgressHook = NO_PROGRESS
        if cfg.aggregation.robust != "mean" and strategy.aggregation != "layerwise":
            raise FedHelloError(f"config key 'aggregation.robust': {cfg.aggregation.robust} is for layer-wise "
                                f"averaging, strategy {cfg.strategy.name} merges with its own rule")

    # -- pieces of a round -------------------------------------------------------
    def slots(self) -> list[ClientSlot]:
        """Every client as a :class:`ClientSlot` (id, resource group, budget; under limits the
        count it affords and its floors, :meth:`ResourceModel.slot`)."""
        slots = client_slots(self.groups, self.budgets)
        return slots if self.resources is None else [self.resources.slot(s) for s in slots]

    def sample(self, t: int) -> list[ClientSlot]:
        """The clients of round ``t``: up to ``clients.per_round`` eligible, available ones.

        The draw depends on the seed, the round and the pool only. Raises
        :class:`~fedhello.errors.FedHelloError` when no eligible client is available.
        """
        pool = [s for s in self.slots() if self.strategy.eligible(s)]
        up = self.runner.available()
        if up is not None:
            pool = [s for s in pool if s.id in up]
        if not pool:
            raise FedHelloError(f"round {t}: no eligible client is available")
        by_id = {s.id: s for s in pool}
        return [by_id[i] for i in sample_clients(list(by_id), self.cfg.clients.per_round, self.cfg.seed, t)]

    def _score_provider(self, slots: Sequence[ClientSlot]) -> Callable[[], np.ndarray]:
        def provide() -> np.ndarray:
            state = self.state.global_state
            if self.cfg.strategy.fim_source == "server":
                if self.server_scorer is None:
                    raise FedHelloError("strategy.fim_source 'server' needs a server calibration set")
                return np.asarray(self.server_scorer(state), dtype=np.float64)
            ids = [s.id for s in slots]
            ok = self._screen_scores(ids, self.runner.scores(ids, state))
            if not ok:
                raise FedHelloError("no client returned Fisher scores")
            combined, clipped = combine_scores(ok, self.cfg.aggregation.norm_bound)
            if clipped:
                log.warning("Fisher scores: %d client score vectors norm-bounded (norm_bound x the median norm)", clipped)
            return combined

        return provide

    def _screen_scores(self, ids: Sequence[int], results) -> list[tuple[np.ndarray, int]]:
        """The usable Fisher replies: one finite non-negative score per layer and a count >= 1, the count
        capped at the client's partition size (a client may not buy itself weight)."""
        L = self.layermap.num_layers
        ok = []
        for cid, r in zip(ids, results):
            if isinstance(r, ClientFailure):
                continue
            try:
                s, n = np.asarray(r[0], dtype=np.float64), int(r[1])
            except (TypeError, ValueError, IndexError, OverflowError):
                log.warning("Fisher scores: client %s rejected (malformed)", cid)
                continue
            if s.shape != (L,) or not np.all(np.isfinite(s)) or np.any(s < 0) or n < 1:
                log.warning("Fisher scores: client %s rejected (not %d finite non-negative scores)", cid, L)
                continue
            cap = self._max_samples(cid)
            ok.append((s, min(n, cap) if cap is not None else n))
        return ok

    def _max_samples(self, cid) -> int | None:
        counts = self.sample_counts
        ok = counts is not None and isinstance(cid, int) and 0 <= cid < len(counts)
        return int(counts[cid]) if ok else None

    def lr(self, t: int) -> float:
        """The learning rate of round ``t``: ``train.lr * train.lr_decay ** t``."""
        return self.cfg.train.lr * (self.cfg.train.lr_decay**t)

    def should_evaluate(self, t: int) -> bool:
        """Whether round ``t`` is evaluated: every ``eval.every`` rounds, and the last one."""
        return (t + 1) % self.cfg.eval.every == 0 or t == self.cfg.rounds - 1

    def run_round(self, t: int) -> dict:
        """Run round ``t`` (see the class docstring) and return its record.

        The global state is replaced by the aggregate of the accepted updates; the
        record holds the round's loss, evaluation (None when not evaluated), time,
        learning rate, per-client costs, rejected or failed clients and the strategy's
        and aggregation rule's info (:class:`~fedhello.federation.records.RoundRecord`).
        """
        t0 = time.perf_counter()
        slots = self.sample(t)
        rng = allocation_rng(self.cfg.seed, t)
        plan = self.strategy.allocate(t, slots, rng, self._score_provider(slots))
        if self.resources is not None:
            self.resources.check_plan(self.strategy, plan.allocations)
        by_id = {s.id: s for s in slots}
        state = self.state.global_state
        r_max = max_rank(state)
        tasks = [
            FitTask(client_id=cid, round=t, layers=sorted(int(x) for x in layers), lr=self.lr(t),
                    seed=round_seed(self.cfg.seed, t, cid, 3),
                    rank=self.strategy.client_rank(by_id[cid], r_max) if r_max else None)
            for cid, layers in sorted(plan.allocations.items())
        ]
        with phase(self.progress, CLIENTS, len(tasks)):  # an in-process runner advances it per client
            results = self.runner.fit(tasks, state)
        t_train = time.perf_counter()
        task_of = {task.client_id: task for task in tasks}
        # shapes are checked against what each client was sent (its rank), counts against its partition
        updates, failed = screen_round(tasks, results, self.layermap, state, ffa=self.cfg.lora.ffa,
                                       head=self.uploads_head, sample_counts=self.sample_counts)
        gave_up = {r.client_id for r in results if isinstance(r, ClientFailure)}
        for f in failed:
            if f["id"] not in gave_up:
                log.warning("round %d: rejected update: %s", t, f["reason"])
        new_state, agg_info = merge_updates(state, updates, self.strategy.aggregation, self.cfg.aggregation)
        skipped = None
        if not all(bool(torch.isfinite(v).all()) for v in new_state.values()):
            skipped, new_state = "non-finite aggregate", state  # not applied: the previous state is kept
        self.state.global_state = new_state
        t_agg = time.perf_counter()
        # what each client is sent: the global state, truncated to its rank
        download = {tk.client_id: state_nbytes(truncate_rank(state, tk.rank)) for tk in tasks}
        n_total = sum(u.num_samples for u in updates)
        train_loss = (
            sum(u.train_loss * u.num_samples for u in updates) / n_total if n_total else math.nan
        )
        rec: dict = {"round": t, "train_loss": train_loss}
        if self.should_evaluate(t):
            with phase(self.progress, EVALUATION, None):
                ev = self.evaluate_round(t, new_state)
            if new_state is not state and not math.isfinite(float(ev["val"]["loss"])):
                # a round that ruins the model is not applied: the previous state is kept and scored
                skipped, new_state = "validation loss is not finite", state
                self.state.global_state = state
                with phase(self.progress, EVALUATION, None):
                    ev = self.evaluate_round(t, state)
            self.select_round(t, new_state, ev)  # eval.test: selected: the best state so far, its test at the end
            rec.update(
                val_accuracy=ev["val"]["accuracy"], val_loss=ev["val"]["loss"],
                test_accuracy=ev["test"]["accuracy"] if "test" in ev else None,
                test_loss=ev["test"]["loss"] if "test" in ev else None,
            )
            rec.update(extra_metrics(ev))
        else:
            rec.update(val_accuracy=None, val_loss=None, test_accuracy=None, test_loss=None)
        t_end = time.perf_counter()
        rec["round_time_s"] = t_end - t0
        # where the round's time went (summary.json sums it); the caller adds its checkpoint time
        rec["phase_time_s"] = {
            "head_init": float(self._head_info["time_s"]) if self._head_info is not None else 0.0,
            "train": t_train - t0, "aggregate": t_agg - t_train, "evaluate": t_end - t_agg, "checkpoint": 0.0,
        }
        rec["lr"] = self.lr(t)
        rec["clients"] = [
            {
                "id": u.client_id,
                "group": by_id[u.client_id].group,
                "layers": u.layers,
                "num_samples": u.num_samples,
                "upload_bytes": u.upload_bytes,
                "download_bytes": download[u.client_id],
                "train_time_s": u.train_time_s,
                "train_cpu_time_s": u.train_cpu_time_s,
                "train_memory_bytes": u.train_memory_bytes,
                "train_loss": u.train_loss,
                **({"rank": task_of[u.client_id].rank} if task_of[u.client_id].rank is not None else {}),
                **{k: v for k, v in u.metrics.items() if k == "peak_memory_bytes"},
                "train_batches": u.train_batches,
                "train_tokens": u.train_tokens,
                "train_max_batch_tokens": u.train_max_batch_tokens,
                **(self.resources.predicted(u.client_id, u.layers, BatchShape(
                    u.train_batches, u.train_tokens, u.train_max_batch_tokens)) if self.resources is not None else {}),
            }
            for u in updates
        ]
        rec["failed_clients"] = failed
        if skipped is not None:
            rec["skipped"] = skipped
            log.warning("round %d: not applied (%s); the previous global state is kept", t, skipped)
        rec.update(plan.info)
        rec.update(agg_info)
        if self._head_info is not None:
            rec["head_init"], self._head_info = self._head_info, None
        return rec

    def evaluate_round(self, t: int, state: State) -> dict:
        """The evaluation of round ``t``: validation and test (``eval.test: every``), or, with
        ``eval.test: selected``, validation only, and the test set too at the last round."""
        if self.cfg.eval.test != "selected":
            return self.evaluator(state)
        last = t == self.cfg.rounds - 1
        return self.evaluator(state, splits=("val", "test") if last else ("val",))

    def select_round(self, t: int, state: State, ev: dict) -> None:
        """``eval.test: selected``: keep ``state`` when round ``t`` is the best by validation so far
        (in memory and the checkpoint); at the last round, score the kept state on the test set and
        write that into its round's record, so summary.json's ``test_*_at_best_val`` and
        ``final_test_*`` are those of a full evaluation."""
        if self.cfg.eval.test != "selected":
            return
        score = ev["val"][self.cfg.eval.select_metric]
        # summarize()'s rule: the first evaluated round of highest score (max(): only a greater one replaces)
        if self._best is None or score > self._best["score"]:
            self._best = {"round": t, "score": score, "state": {k: v.detach().clone() for k, v in state.items()}}
        if t == self.cfg.rounds - 1 and self._best["round"] != t:
            with phase(self.progress, EVALUATION, None):
                best = self.evaluator(self._best["state"], splits=("test",))
            rec = self.state.records[self._best["round"]]
            rec.update(test_accuracy=best["test"]["accuracy"], test_loss=best["test"]["loss"])
            rec.update(extra_metrics({"test": best["test"]}))

    def initialise_head(self) -> dict:
        """The statistics round before round 0: every reachable client sends its per-class
        feature sums and counts under the initial global model; the server sets the head
        from their totals (``head_init``). Returns what it cost (recorded with round 0)."""
        t0 = time.perf_counter()
        state = self.state.global_state
        up = self.runner.available()
        ids = [s.id for s in self.slots() if up is None or s.id in up]
        with phase(self.progress, STATISTICS, len(ids)):
            results = self.runner.class_stats(ids, state)
        accepted: list = []
        upload, failed = 0, []
        for cid, res in zip(ids, results):
            if isinstance(res, ClientFailure):
                failed.append({"id": cid, "reason": res.reason})
                continue
            s_, c_, n_ = (np.asarray(res[0], dtype=np.float64), np.asarray(res[1], dtype=np.float64), float(res[2]))
            C = self.num_classes or c_.shape[0]
            why = None
            if (s_.ndim != 2 or s_.shape[0] != C or c_.shape != (C,) or not np.all(np.isfinite(s_))
                    or not np.all(np.isfinite(c_)) or np.any(c_ < 0) or np.any(c_ != np.round(c_))
                    or not math.isfinite(n_) or n_ < 0 or (accepted and s_.shape != accepted[0][1].shape)):
                why = "malformed class statistics"
            else:  # bounded: counts by the partition, class sums by the norm sum
                why = stats_problem(s_, c_, n_, self._max_samples(cid))
            if why is not None:
                failed.append({"id": cid, "reason": f"client {cid}: {why}"})
                log.warning("class statistics: client %s rejected (%s)", cid, why)
                continue
            accepted.append((cid, s_, c_, n_))
            upload += s_.nbytes + c_.nbytes + 8
        ok = len(accepted)
        if not accepted:
            raise FedHelloError("head.init class-means: no client returned class statistics")
        sums, counts, norm_sum, bounded = combine_class_stats(accepted, self.cfg.aggregation.norm_bound)
        head = self.head_init(sums, counts, norm_sum)
        new = dict(state)
        new.update(head)
        self.state.global_state = new
        info = {
            "clients": ok,
            "failed_clients": failed,
            "upload_bytes": int(upload),
            "download_bytes": int(state_nbytes(state) * len(ids)),
            "time_s": time.perf_counter() - t0,
            "classes_seen": int(np.count_nonzero(counts)),
            **bounded,
        }
        log.info(f"class-means head from {ok} clients ({info['classes_seen']} classes), "
                 f"{upload / 1e6:.2f} MB up, {info['time_s']:.1f}s")
        return info

    # -- the loop ------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """The state after the last finished round, as :meth:`restore` takes it back.

        Keys: ``round``, ``global_state``, ``strategy_state`` and ``records`` (see
        :func:`check_checkpoint`), and with ``eval.test: selected`` ``best`` (the best-validation
        round and its global state, :func:`restore_best`). The tensors are the server's own, not copies.
        """
        out = {
            "round": self.state.round,
            "global_state": self.state.global_state,
            "strategy_state": self.strategy.state_dict(),
            "records": self.state.records,
        }
        if self._best is not None:  # eval.test: selected
            out["best"] = {"round": self._best["round"], "state": self._best["state"]}
        return out

    def restore(self, ckpt: dict, where: str = "checkpoint") -> None:
        """Continue from ``ckpt`` (see :func:`check_checkpoint`): its state
        must be this model's (names, shapes, dtypes, finite values), before any round runs."""
        check_checkpoint(ckpt, where)
        check_state(ckpt["global_state"], self.state.global_state, where)
        if ckpt["round"] > self.cfg.rounds:
            raise FedHelloError(f"{where}: {ckpt['round']} rounds done, the config has rounds: {self.cfg.rounds}")
        try:
            self.strategy.load_state_dict(ckpt["strategy_state"])
        except (TypeError, ValueError, KeyError) as err:
            raise FedHelloError(f"{where}: unusable strategy state ({type(err).__name__}: {err})") from None
        self.state = ServerState(
            round=int(ckpt["round"]), global_state=ckpt["global_state"], records=list(ckpt["records"])
        )
        self._best = restore_best(self.cfg, ckpt, self.state.global_state, where)

    def run(self, on_round: Callable[[dict], None] | None = None, until: int | None = None) -> list[dict]:
        """Run the remaining rounds (or up to round ``until``); ``on_round(record)`` after each
        one, when :meth:`checkpoint` already holds it (the caller persists it)."""
        end = self.cfg.rounds if until is None else min(until, self.cfg.rounds)
        if self.state.round == 0 and self.head_init is not None and end > 0:
            self._head_info = self.initialise_head()
        with phase(self.progress, ROUNDS, self.cfg.rounds, self.state.round):
            for t in range(self.state.round, end):
                rec = self.run_round(t)
                self.state.records.append(rec)
                self.state.round = t + 1
                self.progress.advance(ROUNDS)
                if on_round is not None:
                    on_round(rec)
                self._check_progress(t)
        return self.state.records

    def _check_progress(self, t: int) -> None:
        """Raise once ``aggregation.max_empty_rounds`` rounds in a row aggregated nothing (no accepted
        update, or a result not applied): the run stops instead of finishing on a stale state."""
        n = self.cfg.aggregation.max_empty_rounds
        recent = self.state.records[-n:]
        if len(recent) == n and all(not r.get("clients") or r.get("skipped") for r in recent):
            why = recent[-1].get("skipped") or "no update accepted"
            raise FedHelloError(
                f"round {t}: nothing aggregated for {n} rounds in a row (last: {why}; "
                f"config key 'aggregation.max_empty_rounds'); the checkpoint holds the last good state"
            )


def restore_best(cfg, ckpt: dict, like: State, where: str) -> dict | None:
    """The kept best-validation state of a checkpoint (``eval.test: selected``), checked: its
    round must be the best of the checkpoint's records by summarize()'s rule, its state this model's."""
    if cfg.eval.test != "selected":
        return None
    sel = f"val_{cfg.eval.select_metric}"
    evald = [r for r in ckpt["records"] if r.get(sel) is not None]
    if not evald:
        return None
    best = max(evald, key=lambda r: r[sel])
    kept = ckpt.get("best")
    if (not isinstance(kept, dict) or kept.get("round") != best.get("round")
            or not isinstance(kept.get("state"), dict)):
        raise FedHelloError(f"{where}: checkpoint key 'best' does not hold the best-validation round's state "
                            "(eval.test: selected needs it): start the run again with --overwrite")
    check_state(kept["state"], like, where)
    return {"round": best["round"], "score": best[sel], "state": kept["state"]}


def phase_totals(records: list[dict]) -> dict[str, float]:
    """The run's time per phase (head_init, train, aggregate, evaluate, checkpoint), summed over
    the records' ``phase_time_s`` (a record without it counts its round time as training)."""
    out = dict.fromkeys(PHASES, 0.0)
    for r in records:
        split = r.get("phase_time_s") or {"train": r.get("round_time_s", 0.0)}
        for k in PHASES:
            out[k] += float(split.get(k, 0.0))
    head_init = records[0].get("head_init") if records else None
    if head_init and not (records[0].get("phase_time_s") or {}).get("head_init"):
        out["head_init"] += float(head_init["time_s"])
    return out


PHASES = ("head_init", "train", "aggregate", "evaluate", "checkpoint")


def extra_metrics(ev: dict) -> dict:
    """val_/test_ entries for every evaluated metric beyond accuracy and loss (F1s: fedhello.metrics)."""
    return {
        f"{split}_{k}": v
        for split in ("val", "test")
        for k, v in ev.get(split, {}).items()
        if k not in ("accuracy", "loss", "num_samples")
    }


def max_memory_over_limit(records: list[RoundRecord]) -> float | None:
    """The worst overshoot of a declared memory limit: the largest measured training memory
    (``train_memory_bytes``) over ``memory_limit_bytes`` of any client-round that has both;
    None when no client-round has a memory limit and a measure."""
    ratios = [c["train_memory_bytes"] / c["memory_limit_bytes"] for r in records for c in r.get("clients", [])
              if c.get("memory_limit_bytes") and c.get("train_memory_bytes") is not None]
    return max(ratios) if ratios else None


def cost_prediction(records: list[RoundRecord], n_groups: int) -> list[dict | None]:
    """Per resource group (None: no client-round with a prediction), how measured cost compares with
    the batch-aware prediction: median and max over its client-rounds of ``train_memory_bytes /
    predicted_memory_bytes`` and of the measured time over ``predicted_time_s``, the measured time on
    the profile's clock (``predicted_time_clock``: ``train_cpu_time_s`` on ``cpu``, else ``train_time_s``)."""
    out: list[dict | None] = []
    for g in range(n_groups):
        cs = [c for r in records for c in r.get("clients", []) if c.get("group") == g and c.get("predicted_memory_bytes")]
        if not cs:
            out.append(None)
            continue
        mem = [c["train_memory_bytes"] / c["predicted_memory_bytes"] for c in cs if c.get("train_memory_bytes") is not None]
        tim = [c["train_cpu_time_s" if c.get("predicted_time_clock") == "cpu" else "train_time_s"] / c["predicted_time_s"]
               for c in cs if c.get("predicted_time_s")]
        row: dict = {"client_rounds": len(cs), "time_clock": cs[0].get("predicted_time_clock")}
        for key, vals in (("memory", mem), ("time", tim)):
            row[f"{key}_measured_over_predicted_median"] = float(np.median(vals)) if vals else None
            row[f"{key}_measured_over_predicted_max"] = max(vals) if vals else None
        out.append(row)
    return out


def summarize(cfg, records: list[RoundRecord]) -> Summary:
    """summary.json from the metrics records (selection on validation, never on test).

    The best validation round is the one of highest ``val_<eval.select_metric>``
    (accuracy by default); every recorded metric is reported at that round and at
    the last one (:class:`~fedhello.federation.records.Summary`).
    """
    sel = f"val_{cfg.eval.select_metric}"
    evald = [r for r in records if r.get(sel) is not None]
    best = max(evald, key=lambda r: r[sel], default=None)  # first of equals wins
    last = records[-1] if records else {}
    upload = sum(c["upload_bytes"] for r in records for c in r["clients"])
    head_init = records[0].get("head_init") if records else None
    head_cost = {}
    if head_init:  # the class statistics round counts in the totals, and on its own
        upload += head_init["upload_bytes"]
        head_cost = {"head_init_upload_bytes": head_init["upload_bytes"], "head_init_time_s": head_init["time_s"]}
    out: Summary = {
        "strategy": cfg.strategy.name,
        "seed": cfg.seed,
        "rounds": len(records),
        "select_metric": cfg.eval.select_metric,
        "final_test_accuracy": last.get("test_accuracy"),
        "final_val_accuracy": last.get("val_accuracy"),
        "best_val_round": best["round"] if best else None,
        "val_accuracy_at_best_val": best["val_accuracy"] if best else None,
        "test_accuracy_at_best_val": best["test_accuracy"] if best else None,
        "total_time_s": sum(r["round_time_s"] for r in records) + (head_init["time_s"] if head_init else 0.0),
        "total_upload_bytes": upload,
        "failed_client_rounds": sum(len(r.get("failed_clients", [])) for r in records),
        "max_memory_over_limit": max_memory_over_limit(records),
        "phase_time_s": phase_totals(records),
        **({"cost_prediction": cost_prediction(records, len(cfg.clients.budgets))}
           if any("predicted_memory_bytes" in c for r in records for c in r.get("clients", [])) else {}),
        **head_cost,  # type: ignore[typeddict-item]
    }
    names = sorted({k[len("test_"):] for r in records for k in r if k.startswith("test_")} - {"accuracy", "loss"})
    for m in names:
        out[f"final_test_{m}"] = last.get(f"test_{m}")  # type: ignore[literal-required]
        out[f"val_{m}_at_best_val"] = best.get(f"val_{m}") if best else None  # type: ignore[literal-required]
        out[f"test_{m}_at_best_val"] = best.get(f"test_{m}") if best else None  # type: ignore[literal-required]
    return out
