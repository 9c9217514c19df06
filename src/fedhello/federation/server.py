"""The server round loop, the same for every runtime.

One round: plan (sample clients, ask the strategy for each client's layers) ->
hand the fit tasks to a :class:`~fedhello.federation.seams.ClientRunner` -> merge
(validate and aggregate the replies layer-wise) -> evaluate the global model ->
record. The runner is the only thing that knows how clients are reached
(in-process simulation, Flower); the loop itself knows nothing of it.
:meth:`Server.for_experiment` builds a server from a prepared experiment; the
server reads only its :class:`ServerSettings`, never the whole config.

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
from typing import Callable, Sequence

import numpy as np
import torch

from fedhello.allocation import ClientSlot, Strategy, build_strategy
from fedhello.allocation.clients import allocation_rng, client_slots, sample_clients
from fedhello.allocation.resources import BatchShape, ResourceModel
from fedhello.errors import FedHelloError
from fedhello.federation.aggregation import aggregate, screen_round
from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask, round_seed, uploads_head
from fedhello.federation.progress import CLIENTS, EVALUATION, NO_PROGRESS, ROUNDS, STATISTICS, ProgressHook, phase
from fedhello.federation.records import ClientRecord, RoundLine, RoundRecord, Summary
from fedhello.federation.rank_aggregation import flexlora_aggregate, hetlora_aggregate
from fedhello.federation.robust import (bound_update_norms, combine_class_stats, combine_scores, robust_mean,
                                       stats_problem)
from fedhello.federation.seams import ClientRunner, Evaluator, FisherScorer, HeadInitialiser, ServerExperiment
from fedhello.model.layermap import LayerMap
from fedhello.model.rank import max_rank, truncate_rank
from fedhello.model.state import State, check_state, state_nbytes

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
    ``agg``: :class:`AggregationSettings` (or the config's ``aggregation`` section, which has the
    same names). Returns (state, info for the round's record)."""
    updates, bound_info = bound_update_norms(global_state, updates, agg.norm_bound)
    if rule == "layerwise" and agg.robust != "mean":
        new_state, info = robust_mean(global_state, updates, agg.robust, agg.trim), {}
    else:
        new_state, info = AGGREGATION_RULES[rule](global_state, updates, agg.weighting)
    if bound_info:
        info = {**info, "norm_bounded": bound_info["clipped"]}
    return new_state, info


@dataclass(frozen=True)
class AggregationSettings:
    """How a round's updates are bounded and merged (the config's ``aggregation`` section)."""
    weighting: str  # samples | uniform
    norm_bound: float  # each update's deltas clipped to this x the median over holders (0: off)
    robust: str  # mean | trimmed-mean | median (layer-wise averaging only)
    trim: float  # trimmed-mean: share of holders dropped at each end
    max_empty_rounds: int  # the run stops after this many rounds in a row aggregated nothing

    @classmethod
    def from_config(cls, agg) -> AggregationSettings:
        """The settings of a config's ``aggregation`` section."""
        return cls(agg.weighting, agg.norm_bound, agg.robust, agg.trim, agg.max_empty_rounds)


@dataclass(frozen=True)
class EvalSettings:
    """When rounds are evaluated and how the best one is chosen (the config's ``eval`` section)."""
    every: int  # evaluate every this many rounds, and the last one
    test: str  # every: the test set every evaluated round; selected: only the best-validation round's
    select_metric: str  # the validation metric that chooses the best round


@dataclass(frozen=True)
class ServerSettings:
    """Everything :class:`Server` reads of an experiment config, and nothing else
    (:meth:`from_config`; the config key of each field in its comment)."""
    rounds: int  # rounds
    seed: int  # seed: client sampling, allocation draws, the clients' training seeds
    per_round: int  # clients.per_round
    budgets: tuple[int, ...]  # clients.budgets: each resource group's count of LoRA layers
    lr: float  # train.lr, the learning rate of round 0
    lr_decay: float  # train.lr_decay, per round
    fim_source: str  # strategy.fim_source: who computes Fisher scores (server | clients)
    ffa: bool  # lora.ffa: replies hold no LoRA A matrices
    uploads_head: bool  # from head.train: replies hold the head
    aggregation: AggregationSettings
    eval: EvalSettings

    @classmethod
    def from_config(cls, cfg) -> ServerSettings:
        """The settings of an :class:`~fedhello.config.ExperimentConfig`."""
        return cls(
            rounds=cfg.rounds, seed=cfg.seed, per_round=cfg.clients.per_round, budgets=tuple(cfg.clients.budgets),
            lr=cfg.train.lr, lr_decay=cfg.train.lr_decay, fim_source=cfg.strategy.fim_source, ffa=cfg.lora.ffa,
            uploads_head=uploads_head(cfg.head.train), aggregation=AggregationSettings.from_config(cfg.aggregation),
            eval=EvalSettings(cfg.eval.every, cfg.eval.test, cfg.eval.select_metric),
        )


@dataclass
class RoundPlan:
    """A round's plan (:meth:`Server.plan`): its clients, their fit tasks and the strategy's info."""
    round: int
    slots: dict[int, ClientSlot]  # the sampled clients, by id
    tasks: list[FitTask]  # one per client the strategy gave layers, by client id
    info: dict  # the strategy's record entries (layer_probs, fim_scores, ...)

    def rank_of(self, client_id: int) -> int | None:
        """The LoRA rank client ``client_id`` was sent (None: the global state's own)."""
        return next(task.rank for task in self.tasks if task.client_id == client_id)


@dataclass
class RoundMerge:
    """A round's replies screened and merged (:func:`screen_and_merge`)."""
    updates: list[ClientUpdate]  # the accepted updates
    failed: list[dict]  # {id, reason}: gave up, unreachable or rejected
    state: State  # the new global state; the previous one when ``skipped``
    info: dict  # the aggregation rule's record entries (norm_bounded, ...)
    skipped: str | None = None  # why the aggregate is not applied


def screen_and_merge(tasks: Sequence[FitTask], results: Sequence, state: State, layermap: LayerMap, *,
                     rule: str, aggregation, ffa: bool, head: bool,
                     sample_counts: Sequence[int] | None = None) -> RoundMerge:
    """A round's replies to ``tasks`` screened (:func:`~fedhello.federation.aggregation.screen_round`:
    shapes against what each client was sent, counts against its partition) and the accepted ones
    merged (:func:`merge_updates`; ``aggregation``: :class:`AggregationSettings` or the config's
    section). A non-finite aggregate is not applied: the result then holds ``state`` and says why."""
    updates, failed = screen_round(tasks, results, layermap, state, ffa=ffa, head=head, sample_counts=sample_counts)
    new_state, info = merge_updates(state, updates, rule, aggregation)
    skipped = None
    if not all(bool(torch.isfinite(v).all()) for v in new_state.values()):
        skipped, new_state = "non-finite aggregate", state
    return RoundMerge(updates, failed, new_state, info, skipped)


@dataclass
class ServerState:
    """Where the server loop stands: rounds finished, the global state and their records."""
    round: int  # rounds finished
    global_state: State
    records: list[dict] = field(default_factory=list)


class Server:
    """Runs rounds of federated LoRA fine-tuning over a :class:`~fedhello.federation.seams.ClientRunner`.

    Each round (:meth:`run_round`): :meth:`plan` samples up to ``per_round`` of the eligible,
    available clients and asks the strategy for their layers (and ranks); the runner trains
    them; :meth:`merge` screens the replies (exact tensor names, shapes, dtypes, finite values,
    plausible sample counts) and merges the accepted updates with the rule named by
    ``strategy.aggregation`` (:data:`AGGREGATION_RULES`); :meth:`evaluate` scores the rounds
    ``eval.every`` asks for and the last one; :meth:`record` builds the round's
    :class:`~fedhello.federation.records.RoundRecord`. With ``head_init`` set, :meth:`run`
    first sets the class-means head from the clients' class statistics (:meth:`initialise_head`).
    :meth:`checkpoint` returns the state after the last finished round and :meth:`restore`
    resumes from it.

    :meth:`for_experiment` builds one from a prepared experiment, the way every caller does.

    Parameters
    ----------
    settings : ServerSettings
        What the server reads of the experiment config (:meth:`ServerSettings.from_config`).
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
    server_scorer : FisherScorer, optional
        Fisher scores of a global state on the server's calibration set
        (``strategy.fim_source: server``).
    head_init : HeadInitialiser, optional
        The class-means head from summed class statistics (``head.init:
        class-means``), set before round 0 by :meth:`initialise_head`.
    num_classes : int, optional
        Checks the shape of the clients' class statistics.
    sample_counts : Sequence[int], optional
        Each client's partition size: a reply claiming more samples is rejected.
    resources : ResourceModel, optional
        The cost model and the clients' declared limits: slots are restricted to what
        each client affords, plans checked, costs predicted.
    """

    def __init__(
        self,
        settings: ServerSettings,
        strategy: Strategy,
        groups: Sequence[int],
        layermap: LayerMap,
        global_state: State,
        runner: ClientRunner,
        evaluator: Evaluator,
        *,
        server_scorer: FisherScorer | None = None,
        head_init: HeadInitialiser | None = None,
        num_classes: int | None = None,
        sample_counts: Sequence[int] | None = None,
        resources: ResourceModel | None = None,
    ):
        """See the class docstring for the parameters."""
        self.settings = settings
        self.strategy = strategy
        self.groups = list(groups)
        self.budgets = list(settings.budgets)
        self.layermap = layermap
        self.state = ServerState(round=0, global_state=global_state)
        self.runner = runner
        self.evaluator = evaluator
        self.server_scorer = server_scorer
        self.head_init = head_init
        self.num_classes = num_classes
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
        if settings.aggregation.robust != "mean" and strategy.aggregation != "layerwise":
            raise FedHelloError(f"config key 'aggregation.robust': {settings.aggregation.robust} is for layer-wise "
                                f"averaging, strategy {strategy.name} merges with its own rule")

    @classmethod
    def for_experiment(cls, exp: ServerExperiment, runner: ClientRunner, *, evaluator: Evaluator | None = None,
                       global_state: State | None = None) -> Server:
        """The Server of a prepared experiment (:class:`~fedhello.federation.seams.ServerExperiment`)
        over ``runner``: its config's settings and strategy, its clients' groups and partition
        sizes, its layers, state, Fisher scorer, class-means head (``head.init: class-means``)
        and cost model. ``evaluator``: instead of the experiment's own; ``global_state``: the
        state to start from instead of the model's current one."""
        cfg = exp.cfg
        return cls(
            ServerSettings.from_config(cfg),
            build_strategy(cfg.strategy, exp.layermap.num_layers, cfg.clients.budgets),
            exp.groups, exp.layermap, exp.global_state() if global_state is None else global_state, runner,
            exp.evaluator() if evaluator is None else evaluator,
            server_scorer=exp.server_scorer(),
            head_init=exp.head_from_stats if cfg.head.init == "class-means" else None,
            num_classes=exp.num_classes(),
            sample_counts=[len(p) for p in exp.partitions],
            resources=exp.resources,
        )

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
        return [by_id[i] for i in sample_clients(list(by_id), self.settings.per_round, self.settings.seed, t)]

    def _score_provider(self, slots: Sequence[ClientSlot]) -> Callable[[], np.ndarray]:
        def provide() -> np.ndarray:
            state = self.state.global_state
            if self.settings.fim_source == "server":
                if self.server_scorer is None:
                    raise FedHelloError("strategy.fim_source 'server' needs a server calibration set")
                return np.asarray(self.server_scorer(state), dtype=np.float64)
            ids = [s.id for s in slots]
            ok = self._screen_scores(ids, self.runner.scores(ids, state))
            if not ok:
                raise FedHelloError("no client returned Fisher scores")
            combined, clipped = combine_scores(ok, self.settings.aggregation.norm_bound)
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
        return self.settings.lr * (self.settings.lr_decay**t)

    def should_evaluate(self, t: int) -> bool:
        """Whether round ``t`` is evaluated: every ``eval.every`` rounds, and the last one."""
        return (t + 1) % self.settings.eval.every == 0 or t == self.settings.rounds - 1

    def run_round(self, t: int) -> RoundRecord:
        """Run round ``t`` (see the class docstring) and return its record.

        The global state is replaced by the aggregate of the accepted updates; the
        record holds the round's loss, evaluation (None when not evaluated), time,
        learning rate, per-client costs, rejected or failed clients and the strategy's
        and aggregation rule's info (:class:`~fedhello.federation.records.RoundRecord`).
        """
        t0 = time.perf_counter()
        plan = self.plan(t)
        state = self.state.global_state
        with phase(self.progress, CLIENTS, len(plan.tasks)):  # an in-process runner advances it per client
            results = self.runner.fit(plan.tasks, state)
        t_train = time.perf_counter()
        merged = self.merge(t, plan.tasks, results, state)
        self.state.global_state = merged.state
        t_agg = time.perf_counter()
        evaluation = self.evaluate(t, state, merged)
        t_end = time.perf_counter()
        # where the round's time went (summary.json sums it); the caller adds its checkpoint time
        phases = {"train": t_train - t0, "aggregate": t_agg - t_train, "evaluate": t_end - t_agg}
        return self.record(plan, state, merged, evaluation, t_end - t0, phases)

    def plan(self, t: int) -> RoundPlan:
        """Round ``t``'s clients (:meth:`sample`), the strategy's layers for each (its Fisher scores
        asked for as it needs them), checked against the clients' limits, as fit tasks: layers,
        learning rate, training seed and, for rank strategies, the rank each client is sent."""
        slots = self.sample(t)
        rng = allocation_rng(self.settings.seed, t)
        allocation = self.strategy.allocate(t, slots, rng, self._score_provider(slots))
        if self.resources is not None:
            self.resources.check_plan(self.strategy, allocation.allocations)
        by_id = {s.id: s for s in slots}
        r_max = max_rank(self.state.global_state)
        tasks = [
            FitTask(client_id=cid, round=t, layers=sorted(int(x) for x in layers), lr=self.lr(t),
                    seed=round_seed(self.settings.seed, t, cid, 3),
                    rank=self.strategy.client_rank(by_id[cid], r_max) if r_max else None)
            for cid, layers in sorted(allocation.allocations.items())
        ]
        return RoundPlan(t, by_id, tasks, allocation.info)

    def merge(self, t: int, tasks: Sequence[FitTask], results: Sequence, state: State) -> RoundMerge:
        """Round ``t``'s replies screened and merged into ``state`` (:func:`screen_and_merge`, with
        this server's aggregation settings, rule and partition sizes); rejected replies are logged."""
        merged = screen_and_merge(tasks, results, state, self.layermap, rule=self.strategy.aggregation,
                                  aggregation=self.settings.aggregation, ffa=self.settings.ffa,
                                  head=self.settings.uploads_head, sample_counts=self.sample_counts)
        gave_up = {r.client_id for r in results if isinstance(r, ClientFailure)}
        for f in merged.failed:
            if f["id"] not in gave_up:
                log.warning("round %d: rejected update: %s", t, f["reason"])
        return merged

    def evaluate(self, t: int, before: State, merged: RoundMerge) -> dict | None:
        """Round ``t``'s evaluation (None on rounds not evaluated) of the merged state. A merge
        that makes the validation loss non-finite is not applied: the state ``before`` the round
        is kept (``merged`` says so) and scored instead. With ``eval.test: selected`` the best
        state so far is kept (:meth:`select_round`)."""
        if not self.should_evaluate(t):
            return None
        with phase(self.progress, EVALUATION, None):
            ev = self.evaluate_round(t, merged.state)
        if merged.state is not before and not math.isfinite(float(ev["val"]["loss"])):
            # a round that ruins the model is not applied: the previous state is kept and scored
            merged.skipped, merged.state = "validation loss is not finite", before
            self.state.global_state = before
            with phase(self.progress, EVALUATION, None):
                ev = self.evaluate_round(t, before)
        self.select_round(t, merged.state, ev)  # eval.test: selected: the best state so far, its test at the end
        return ev

    def record(self, plan: RoundPlan, sent: State, merged: RoundMerge, ev: dict | None, round_time_s: float,
               phases: dict[str, float]) -> RoundRecord:
        """The round's record: the accepted clients' losses and costs (what each was ``sent``: the
        global state truncated to its rank), the evaluation, the phase times, the failed clients,
        the strategy's and the rule's info, and with round 0 the statistics round's costs."""
        t = plan.round
        updates = merged.updates
        n_total = sum(u.num_samples for u in updates)
        train_loss = sum(u.train_loss * u.num_samples for u in updates) / n_total if n_total else math.nan
        if ev is not None:
            evaluation = {"val_accuracy": ev["val"]["accuracy"], "val_loss": ev["val"]["loss"],
                          "test_accuracy": ev["test"]["accuracy"] if "test" in ev else None,
                          "test_loss": ev["test"]["loss"] if "test" in ev else None, **extra_metrics(ev)}
        else:
            evaluation = dict.fromkeys(("val_accuracy", "val_loss", "test_accuracy", "test_loss"))
        head_s = float(self._head_info["time_s"]) if self._head_info is not None else 0.0
        if merged.skipped is not None:
            log.warning("round %d: not applied (%s); the previous global state is kept", t, merged.skipped)
        head_info, self._head_info = self._head_info, None
        return RoundRecord(
            round=t, train_loss=train_loss, evaluation=evaluation, round_time_s=round_time_s,
            phase_time_s={"head_init": head_s, **phases, "checkpoint": 0.0}, lr=self.lr(t),
            clients=[self.client_record(plan, u, sent) for u in updates], failed_clients=merged.failed,
            skipped=merged.skipped, info={**plan.info, **merged.info}, head_init=head_info,  # type: ignore[arg-type]
        )

    def client_record(self, plan: RoundPlan, u: ClientUpdate, sent: State) -> ClientRecord:
        """An accepted client's entry in the round's record (:class:`~fedhello.federation.records.ClientRecord`)."""
        rank = plan.rank_of(u.client_id)
        return {  # type: ignore[return-value]
            "id": u.client_id,
            "group": plan.slots[u.client_id].group,
            "layers": u.layers,
            "num_samples": u.num_samples,
            "upload_bytes": u.upload_bytes,
            "download_bytes": state_nbytes(truncate_rank(sent, rank)),
            "train_time_s": u.train_time_s,
            "train_cpu_time_s": u.train_cpu_time_s,
            "train_memory_bytes": u.train_memory_bytes,
            "train_loss": u.train_loss,
            **({"rank": rank} if rank is not None else {}),
            **{k: v for k, v in u.metrics.items() if k == "peak_memory_bytes"},
            "train_batches": u.train_batches,
            "train_tokens": u.train_tokens,
            "train_max_batch_tokens": u.train_max_batch_tokens,
            **(self.resources.predicted(u.client_id, u.layers, BatchShape(
                u.train_batches, u.train_tokens, u.train_max_batch_tokens)) if self.resources is not None else {}),
        }

    def evaluate_round(self, t: int, state: State) -> dict:
        """The evaluation of round ``t``: validation and test (``eval.test: every``), or, with
        ``eval.test: selected``, validation only, and the test set too at the last round."""
        if self.settings.eval.test != "selected":
            return self.evaluator(state)
        last = t == self.settings.rounds - 1
        return self.evaluator(state, splits=("val", "test") if last else ("val",))

    def select_round(self, t: int, state: State, ev: dict) -> None:
        """``eval.test: selected``: keep ``state`` when round ``t`` is the best by validation so far
        (in memory and the checkpoint); at the last round, score the kept state on the test set and
        write that into its round's record, so summary.json's ``test_*_at_best_val`` and
        ``final_test_*`` are those of a full evaluation."""
        if self.settings.eval.test != "selected":
            return
        score = ev["val"][self.settings.eval.select_metric]
        # summarize()'s rule: the first evaluated round of highest score (max(): only a greater one replaces)
        if self._best is None or score > self._best["score"]:
            self._best = {"round": t, "score": score, "state": {k: v.detach().clone() for k, v in state.items()}}
        if t == self.settings.rounds - 1 and self._best["round"] != t:
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
        accepted, failed = self._screen_class_stats(ids, results)
        upload = sum(s_.nbytes + c_.nbytes + 8 for _, s_, c_, _ in accepted)
        ok = len(accepted)
        if not accepted:
            raise FedHelloError("head.init class-means: no client returned class statistics")
        sums, counts, norm_sum, bounded = combine_class_stats(accepted, self.settings.aggregation.norm_bound)
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

    def _screen_class_stats(self, ids: Sequence[int], results) -> tuple[list, list[dict]]:
        """The usable class statistics, as (id, sums, counts, norm sum), and the failed clients
        ({id, reason}): finite sums of one shape (C, D), whole non-negative counts, a finite
        non-negative norm sum, and bounded (counts by the partition, sums by the norm sum)."""
        accepted: list = []
        failed: list[dict] = []
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
        return accepted, failed

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
        if ckpt["round"] > self.settings.rounds:
            raise FedHelloError(f"{where}: {ckpt['round']} rounds done, the config has rounds: {self.settings.rounds}")
        try:
            self.strategy.load_state_dict(ckpt["strategy_state"])
        except (TypeError, ValueError, KeyError) as err:
            raise FedHelloError(f"{where}: unusable strategy state ({type(err).__name__}: {err})") from None
        self.state = ServerState(
            round=int(ckpt["round"]), global_state=ckpt["global_state"], records=list(ckpt["records"])
        )
        self._best = restore_best(self.settings.eval, ckpt, self.state.global_state, where)

    def run(self, on_round: Callable[[dict], None] | None = None, until: int | None = None) -> list[dict]:
        """Run the remaining rounds (or up to round ``until``); ``on_round(record)`` after each
        one, when :meth:`checkpoint` already holds it (the caller persists it)."""
        end = self.settings.rounds if until is None else min(until, self.settings.rounds)
        if self.state.round == 0 and self.head_init is not None and end > 0:
            self._head_info = self.initialise_head()
        with phase(self.progress, ROUNDS, self.settings.rounds, self.state.round):
            for t in range(self.state.round, end):
                rec = self.run_round(t).to_dict()
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
        n = self.settings.aggregation.max_empty_rounds
        recent = self.state.records[-n:]
        if len(recent) == n and all(not r.get("clients") or r.get("skipped") for r in recent):
            why = recent[-1].get("skipped") or "no update accepted"
            raise FedHelloError(
                f"round {t}: nothing aggregated for {n} rounds in a row (last: {why}; "
                f"config key 'aggregation.max_empty_rounds'); the checkpoint holds the last good state"
            )


def restore_best(ev: EvalSettings, ckpt: dict, like: State, where: str) -> dict | None:
    """The kept best-validation state of a checkpoint (``eval.test: selected``), checked: its
    round must be the best of the checkpoint's records by summarize()'s rule, its state this model's."""
    if ev.test != "selected":
        return None
    sel = f"val_{ev.select_metric}"
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


def max_memory_over_limit(records: list[RoundLine]) -> float | None:
    """The worst overshoot of a declared memory limit: the largest measured training memory
    (``train_memory_bytes``) over ``memory_limit_bytes`` of any client-round that has both;
    None when no client-round has a memory limit and a measure."""
    ratios = [c["train_memory_bytes"] / c["memory_limit_bytes"] for r in records for c in r.get("clients", [])
              if c.get("memory_limit_bytes") and c.get("train_memory_bytes") is not None]
    return max(ratios) if ratios else None


def cost_prediction(records: list[RoundLine], n_groups: int) -> list[dict | None]:
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


def summarize(cfg, records: list[RoundLine]) -> Summary:
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
