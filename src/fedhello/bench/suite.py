"""The measurements. Each returns a dict for bench.json; A/B timings are interleaved."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import fedhello
from fedhello.model.fisher import fisher_layer_scores, fisher_layer_scores_loop, length_buckets, split_batch
from fedhello.allocation.patterns import deterministic_layers
from fedhello.bench.common import (
    autocast,
    base_raw,
    median,
    model_layers,
    peak_rss_bytes,
    reset_peak_rss,
    rotate,
    rss_bytes,
    timed,
)
from fedhello.bench.settings import Settings
from fedhello.config import build_config
from fedhello.data.batching import collate, eval_batches, train_batches
from fedhello.federation.client import FitTask, LocalTrainer, make_optimizer
from fedhello.federation.server import Server
from fedhello.federation.simulation import SimulationRunner
from fedhello.model import build_backbone
from fedhello.model.step import TrainingMemory, train_step
from fedhello.model.state import freeze_all, set_state, set_trainable, state_nbytes
from fedhello.run.device import pick_device
from fedhello.run.preparation import Experiment, prepare

Log = Callable[[str], None]
# the folder that holds the fedhello package: the probe processes import it from there
PACKAGE_ROOT = Path(fedhello.__file__).resolve().parents[1]


def no_eval(state) -> dict:
    """An evaluator that evaluates nothing (NaN): the benchmarks time rounds without it."""
    nan = float("nan")
    return {"val": {"accuracy": nan, "loss": nan}, "test": {"accuracy": nan, "loss": nan}}


def setup_experiment(s: Settings) -> Experiment:
    """The prepared experiment the engine, freezing, Fisher and grouping parts share."""
    return prepare(build_config(base_raw(s, model_layers(s.model))))


def bare_steps(model, opt, batches) -> None:
    """The bare loop: the trainer's own step (forward, loss, backward, optimizer step), nothing around it."""
    for b in batches:
        train_step(model, opt, b)


def client_batches(exp: Experiment, task: FitTask, indices: np.ndarray) -> list[dict]:
    """Exactly the batches LocalTrainer.fit draws for ``task`` (same rng, same order)."""
    cfg = exp.cfg.train
    rng = np.random.default_rng(task.seed)
    lengths = exp.train.lengths
    out: list[dict] = []
    for _ in range(cfg.epochs):
        for idx in train_batches(lengths, indices, cfg.batch_size, rng, cfg.group_by_length):
            out.append(collate(exp.train, idx, exp.device))
            if cfg.max_steps is not None and len(out) >= cfg.max_steps:
                return out
    return out


# --------------------------------------------------------------------------- 1 + 6: engine, communication


def bare_client(exp: Experiment, s: Settings, task: FitTask, gstate) -> float:
    """The bare twin of one client's training: the same layers, seed and pre-collated batches,
    only the optimizer construction and the forward/backward/step loop timed; returns its seconds."""
    cfg, model, lm = exp.cfg, exp.model, exp.layermap
    set_state(model, gstate)
    params = set_trainable(model, lm, task.layers, ffa=cfg.lora.ffa)
    batches = client_batches(exp, task, exp.partitions[task.client_id])
    torch.manual_seed(task.seed)
    model.train()

    def run():
        opt = make_optimizer(params, cfg.train.optimizer, task.lr, cfg.train.weight_decay)
        with autocast(s, exp.device):
            bare_steps(model, opt, batches)

    dt, _ = timed(run, exp.device)
    model.eval()
    freeze_all(model, lm)
    return dt


class InterleavedRunner(SimulationRunner):
    """The real runner, one client at a time, each next to its bare twin (A/B order alternating)."""

    def __init__(self, exp: Experiment, s: Settings):
        super().__init__(exp)
        self.exp, self.settings = exp, s
        self.bare_s = 0.0  # bare time spent inside this round's fit call (subtracted from the round's wall time)
        self.calls = 0

    def fit(self, tasks, global_state):
        """See :meth:`SimulationRunner.fit`; each client's bare twin runs right before or after it."""
        out = []
        self.bare_s = 0.0
        for task in tasks:
            self.calls += 1
            if self.calls % 2:
                out.extend(super().fit([task], global_state))
                self.bare_s += bare_client(self.exp, self.settings, task, global_state)
            else:
                self.bare_s += bare_client(self.exp, self.settings, task, global_state)
                out.extend(super().fit([task], global_state))
        return out


def time_engine_rounds(exp: Experiment, s: Settings, log: Log, server: Server, runner: InterleavedRunner):
    """One warm-up round, then ``engine_rounds`` timed ones: per round the engine's time (the round's
    wall time less its bare twins') and the bare time, and the byte counts every client moved, by
    resource group (``{group: {"upload": {...}, "download": {...}}}``)."""
    rounds = s.sizes.engine_rounds
    engine_t, bare_t = [], []
    comm: dict[int, dict[str, set]] = {}
    for t in range(rounds + 1):
        with autocast(s, exp.device):
            wall, _ = timed(lambda: server.run(until=t + 1), exp.device)
        rec = server.state.records[-1]
        assert rec["val_accuracy"] is None, "an evaluation ran inside a timed round"
        for c in rec["clients"]:
            g = comm.setdefault(c["group"], {"upload": set(), "download": set()})
            g["upload"].add(c["upload_bytes"])
            g["download"].add(c["download_bytes"])
        tb = runner.bare_s
        te = wall - tb
        if t == 0:
            log(f"  engine warm-up round: engine {te:.2f}s, bare {tb:.2f}s")
            continue
        engine_t.append(te)
        bare_t.append(tb)
        log(f"  engine round {t}/{rounds}: engine {te:.2f}s, bare {tb:.2f}s, ratio {te / tb:.3f}")
    return engine_t, bare_t, comm


def bench_engine(exp: Experiment, s: Settings, log: Log) -> dict[str, Any]:
    """Rounds of the real Server + SimulationRunner vs. the same steps in a bare loop.

    Engine time: ``Server.run`` for one round (sampling, allocation, state in/out,
    collation, training, validation, aggregation); evaluation is excluded (none is
    due in these rounds). Bare time: only the optimizer construction and the
    forward/backward/step loop of the same clients on the same pre-collated batches,
    same layers, same seeds (:func:`bare_client`). Each client's bare twin runs right
    before or after it (alternating, :class:`InterleavedRunner`) inside the round, and
    is subtracted from the round's wall time.
    """
    cfg = exp.cfg
    runner = InterleavedRunner(exp, s)
    server = Server.for_experiment(exp, runner, evaluator=no_eval)
    engine_t, bare_t, comm = time_engine_rounds(exp, s, log, server, runner)
    ratios = [te / tb for te, tb in zip(engine_t, bare_t)]
    communication = bench_communication(cfg, exp.layermap, server.state.global_state, comm)
    return {
        "engine_overhead_ratio": median(ratios),
        "engine": {
            "ratio_of_totals": sum(engine_t) / sum(bare_t),
            "per_round_ratios": ratios,
            "interleaving": "per client, alternating engine-first / bare-first",
            "engine_round_s": engine_t,
            "bare_round_s": bare_t,
            "clients_per_round": cfg.clients.per_round,
            "num_clients": cfg.clients.num_clients,
            "strategy": cfg.strategy.name,
            "evaluation": "excluded (no evaluation due in the timed rounds)",
        },
        **communication,
    }


def bench_communication(cfg, lm, gstate, comm: dict[int, dict[str, set]]) -> dict[str, Any]:
    """Bytes per client per round by resource group (all clients of a group are equal), checked
    against the uploads measured in the engine's rounds (``comm``: group -> measured byte counts)."""
    head = list(lm.head)
    fedit_up = state_nbytes({n: gstate[n] for n in lm.names_for(range(lm.num_layers)) if n in gstate})
    download = state_nbytes(gstate)
    upload_per_group: dict[str, int] = {}
    groups_detail = []
    for g in range(len(cfg.clients.budgets)):
        budget = cfg.clients.budgets[g]
        names = lm.names_for(range(budget))  # every layer has the same size
        up = state_nbytes({n: gstate[n] for n in names})
        measured = sorted(comm.get(g, {}).get("upload", set()))
        if measured and measured != [up]:
            raise RuntimeError(f"group {g}: measured uploads {measured} differ from the {up} bytes of {budget} layers")
        upload_per_group[str(g)] = up
        groups_detail.append(
            {"group": g, "budget": budget, "upload_bytes": up, "download_bytes": download,
             "upload_vs_fedit": up / fedit_up, "measured_in_rounds": bool(measured)}
        )
    upload_per_group["fedit"] = fedit_up
    return {
        "upload_bytes_per_group": upload_per_group,
        "communication": {
            "groups": groups_detail,
            "fedit": {"upload_bytes": fedit_up, "download_bytes": download},
            "head_bytes": state_nbytes({n: gstate[n] for n in head}),
            "download": "the full global LoRA state + head, the same for every client and for FedIT",
        },
    }


# --------------------------------------------------------------------------- 2: freezing


def freeze_configs(num_layers: int) -> dict[str, list[int]]:
    """The freezing configurations compared: layer lists by name (see :func:`freeze_setup`)."""
    half = num_layers // 2
    return {
        "all": list(range(num_layers)),
        "top_half": list(range(num_layers - half, num_layers)),
        "bottom_half": list(range(half)),
        "bottleneck": deterministic_layers("bottleneck", num_layers, max(1, half)),
        # the reference's freezing: every layer requires grad, lr 0 outside the top half
        "lr0_all": list(range(num_layers - half, num_layers)),
    }


def freeze_setup(model, lm, name: str, layers: list[int], lr: float, optimizer: str = "adamw"):
    """Trainable flags + optimizer for one freezing configuration (``lr0_all``: the reference's way)."""
    if name != "lr0_all":
        params = set_trainable(model, lm, layers)
        return make_optimizer(params, optimizer, lr, 0.0)
    set_trainable(model, lm, range(lm.num_layers))
    by_name = dict(model.named_parameters())
    trained = set(lm.names_for(layers, include_head=True))
    on = [by_name[n] for n in lm.all_names if n in trained]
    off = [by_name[n] for n in lm.all_names if n not in trained]
    groups = [{"params": on, "lr": lr}, {"params": off, "lr": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0) if optimizer == "adamw" else torch.optim.SGD(groups, lr=lr)


def fixed_batches(exp: Experiment, n_batches: int, bs: int, seed: int) -> list[dict]:
    """``n_batches`` length-grouped training batches of ``bs`` samples, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(exp.train), size=min(len(exp.train), n_batches * bs), replace=False)
    return [collate(exp.train, b, exp.device) for b in train_batches(exp.train.lengths, idx, bs, rng, True)]


def start_freezing(exp: Experiment, s: Settings, name: str, layers: list[int], gstate):
    """The model loaded with ``gstate``, in training mode, with configuration ``name``'s trainable
    layers (:func:`freeze_setup`); returns its optimizer."""
    set_state(exp.model, gstate)
    opt = freeze_setup(exp.model, exp.layermap, name, layers, s.lr)
    exp.model.train()
    return opt


def freeze_saved_bytes(exp: Experiment, s: Settings, configs: dict[str, list[int]], batch: dict,
                       gstate) -> dict[str, int]:
    """A warm-up step of every freezing configuration on ``batch``; the activation bytes each saved for backward."""
    model, lm, dev = exp.model, exp.layermap, exp.device
    saved: dict[str, int] = {}
    for name, layers in configs.items():
        opt = start_freezing(exp, s, name, layers, gstate)
        mem = TrainingMemory(model)
        train_step(model, opt, batch, memory=mem, forward_ctx=lambda: autocast(s, dev))
        saved[name] = mem.last["saved_bytes"]
        freeze_all(model, lm)
    return saved


def time_freezing(exp: Experiment, s: Settings, log: Log, configs: dict[str, list[int]], batches: list[dict], gstate):
    """Every configuration trains on the same batches, interleaved step by step (the order rotating),
    ``freeze_reps`` times. Returns the mean step time of each repetition, by configuration, and every
    timed step's forward, backward and optimizer seconds."""
    model, lm, dev = exp.model, exp.layermap, exp.device
    names = list(configs)
    times: dict[str, list[float]] = {n: [] for n in names}
    phases: dict[str, dict[str, list[float]]] = {n: {"forward": [], "backward": [], "optimizer": []} for n in names}
    for rep in range(s.sizes.freeze_reps):
        tot = {n: 0.0 for n in names}
        for j, b in enumerate(batches):
            for name in rotate(names, rep * len(batches) + j):
                opt = start_freezing(exp, s, name, configs[name], gstate)
                torch.manual_seed(j)
                f, bw, o = train_step(model, opt, b, forward_ctx=lambda: autocast(s, dev), phases=dev).phase_s
                ph = phases[name]
                ph["forward"].append(f)
                ph["backward"].append(bw)
                ph["optimizer"].append(o)
                tot[name] += f + bw + o
                model.eval()
                freeze_all(model, lm)
        for n in names:
            times[n].append(tot[n] / len(batches))
        log("  freezing rep {}: ".format(rep + 1) + ", ".join(f"{n} {1000 * times[n][-1]:.0f}ms" for n in names))
    set_state(model, gstate)
    return times, phases


def bench_freezing(exp: Experiment, s: Settings, log: Log, memory: bool = True) -> dict[str, Any]:
    """Step time and memory of each freezing configuration vs. training every layer.

    Every configuration trains on the same fixed batches, interleaved step by step
    (:func:`time_freezing`); the figures are the median per-repetition time ratios to
    ``all``, the bytes saved for backward (:func:`freeze_saved_bytes`), and with
    ``memory`` the peak memory of each configuration (:func:`freeze_memory`).
    """
    configs = freeze_configs(exp.layermap.num_layers)
    names = list(configs)
    batches = fixed_batches(exp, s.sizes.freeze_batches, s.batch_size, s.seed + 11)
    gstate = exp.global_state()
    saved = freeze_saved_bytes(exp, s, configs, batches[0], gstate)
    times, phases = time_freezing(exp, s, log, configs, batches, gstate)
    step = {n: median(v) for n, v in times.items()}
    # ratio per repetition (interleaved), then the median
    time_ratio = {
        n: median([a / b for a, b in zip(times[n], times["all"])]) for n in names if n != "all"
    }
    out: dict[str, Any] = {
        "freeze_time_ratio": time_ratio,
        "freezing": {
            "layers": configs,
            "step_time_s": step,
            "saved_activation_bytes": saved,
            # summed over all timed steps: where a step's time goes
            "phase_s": {n: {k: sum(v) for k, v in ph.items()} for n, ph in phases.items()},
            # no freezing can make a step cheaper than its forward pass (all layers still run forward)
            "forward_share_of_all_layers_step": sum(phases["all"]["forward"]) / sum(
                sum(v) for v in phases["all"].values()
            ),
            "saved_activation_ratio": {n: saved[n] / saved["all"] for n in names if n != "all"},
            "batch_size": s.batch_size,
            "lr0_all": "every LoRA layer requires grad, lr 0 outside the top half (the reference's freezing)",
        },
    }
    if memory:
        mem = freeze_memory(exp, s, batches, gstate, configs, log)
        out["freeze_peak_memory_ratio"] = {
            n: mem[n]["peak_delta_bytes"] / mem["all"]["peak_delta_bytes"] for n in names if n != "all"
        }
        out["freezing"]["peak_memory"] = mem
    return out


def _probe(kind: str, payload: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Run ``python -m fedhello.bench.probe`` in a fresh process; its last stdout line is JSON."""
    env = dict(os.environ)
    # this fedhello, installed or not (a relative PYTHONPATH keeps working: same working directory)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    arg = json.dumps({"kind": kind, "settings": s.to_dict(), **payload})
    proc = subprocess.run([sys.executable, "-m", "fedhello.bench.probe", arg], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def freeze_memory(exp, s, batches, gstate, configs, log) -> dict[str, dict]:
    """Peak memory of training steps, one fresh process per configuration."""
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "batches.pt"
        torch.save({"batches": [{k: v.cpu() for k, v in b.items()} for b in batches], "state": gstate}, blob)
        for name, layers in configs.items():
            arg = {"config": exp.cfg.to_dict(), "num_labels": len(exp.label_names), "blob": str(blob),
                   "name": name, "layers": layers}
            if s.sizes.memory_fresh_process:
                res = _probe("freeze", arg, s)
            else:  # the tests: same code, this process (figures then mean little)
                res = probe_freeze({"kind": "freeze", "settings": s.to_dict(), **arg})
            out[name] = res
            log(f"  memory {name}: peak +{res['peak_delta_bytes'] / 2**20:.1f} MiB ({res['source']})")
    return out


def _threads(s: Settings) -> None:
    if s.threads:
        torch.set_num_threads(s.threads)


def probe_freeze(arg: dict) -> dict:
    """Peak memory of one freezing configuration's training steps (run in a fresh process by
    :func:`freeze_memory`, through :mod:`fedhello.bench.probe`)."""
    s = Settings.from_dict(arg["settings"])
    _threads(s)
    cfg = build_config(arg["config"])
    dev = pick_device(cfg.device)
    bb = build_backbone(cfg, arg["num_labels"], dev)
    blob = torch.load(arg["blob"], weights_only=True)
    batches = [{k: v.to(dev) for k, v in b.items()} for b in blob["batches"]]
    set_state(bb.model, blob["state"])
    model, lm = bb.model, bb.layermap
    model.train()
    with torch.no_grad():  # first-call workspaces are not training memory
        b = max(batches, key=lambda x: x["input_ids"].numel())
        model(**{k: v for k, v in b.items() if k != "labels"})
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        source = "torch.cuda.max_memory_allocated"
    else:
        base = rss_bytes()
        source = "peak RSS (VmHWM reset)" if reset_peak_rss() else "peak RSS (ru_maxrss, not reset)"
    opt = freeze_setup(model, lm, arg["name"], arg["layers"], s.lr)
    with autocast(s, dev):
        bare_steps(model, opt, batches)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = peak_rss_bytes()
    return {"name": arg["name"], "baseline_bytes": base, "peak_bytes": peak,
            "peak_delta_bytes": max(peak - base, 1), "source": source}


# --------------------------------------------------------------------------- 3: Fisher


def bench_fisher(exp: Experiment, s: Settings, log: Log) -> dict[str, Any]:
    """The vectorised Fisher scores vs. the per-sample loop: speed-up and agreement.

    Also times the vectorised path on random-order batches without length
    buckets, and reports how much padding each path computes.
    """
    model, lm, dev, data = exp.model, exp.layermap, exp.device, exp.train
    n = min(s.sizes.fim_samples, len(data))
    idx = np.sort(np.random.default_rng(s.seed + 3).choice(len(data), size=n, replace=False))
    bs = exp.cfg.eval.batch_size
    # the engine's path (Experiment.fisher): length-sorted batches of eval.batch_size,
    # re-cut by fisher_layer_scores into length buckets of 16
    bucketed = [collate(data, b, dev) for b in eval_batches(data.lengths, idx, bs)]
    # the same samples in random order, padded to each batch's longest sample, not re-cut
    perm = np.random.default_rng(s.seed + 4).permutation(idx)
    padded = [collate(data, perm[i : i + bs], dev) for i in range(0, n, bs)]
    singles = [collate(data, [i], dev) for i in idx]  # one unpadded sample per backward
    fast = fisher_layer_scores(model, lm, bucketed)  # warm-up
    slow = fisher_layer_scores_loop(model, lm, singles)
    unb = fisher_layer_scores(model, lm, padded, bucket_size=n)
    t_fast, t_slow, t_pad = [], [], []
    for rep in range(s.sizes.fim_reps):
        for which in rotate(["fast", "slow", "padded"], rep):
            with autocast(s, dev):
                if which == "fast":
                    dt, fast = timed(lambda: fisher_layer_scores(model, lm, bucketed), dev)
                    t_fast.append(dt)
                elif which == "slow":
                    dt, slow = timed(lambda: fisher_layer_scores_loop(model, lm, singles), dev)
                    t_slow.append(dt)
                else:
                    dt, unb = timed(lambda: fisher_layer_scores(model, lm, padded, bucket_size=n), dev)
                    t_pad.append(dt)
        log(f"  fisher rep {rep + 1}: vectorised {t_fast[-1]:.2f}s, loop {t_slow[-1]:.2f}s, unbucketed {t_pad[-1]:.2f}s")
    rel = np.abs(fast - slow) / np.maximum(np.abs(slow), np.finfo(float).tiny)
    rel_pad = np.abs(unb - slow) / np.maximum(np.abs(slow), np.finfo(float).tiny)
    return {
        "fim_speedup": median([b / a for a, b in zip(t_fast, t_slow)]),
        "fim_max_rel_error": float(rel.max()),
        "fisher": {
            "samples": n,
            "batch_size": bs,
            "vectorised_s": t_fast,
            "loop_s": t_slow,
            "unbucketed_s": t_pad,
            "unbucketed_speedup": median([b / a for a, b in zip(t_pad, t_slow)]),
            "unbucketed_max_rel_error": float(rel_pad.max()),
            "scores_vectorised": fast.tolist(),
            "scores_loop": slow.tolist(),
            "mean_tokens_per_sample": float(data.lengths[idx].mean()),
            # after fisher_layer_scores re-cuts the batches into length buckets of 16
            "padded_tokens_per_sample_bucketed": float(
                sum(p["input_ids"].numel() for b in bucketed for p, _ in length_buckets(*split_batch(b, dev), 16)) / n
            ),
            "padded_tokens_per_sample_unbucketed": float(sum(b["input_ids"].numel() for b in padded) / n),
        },
    }


# --------------------------------------------------------------------------- 4: padding waste


def bench_length_grouping(exp: Experiment, s: Settings, log: Log) -> dict[str, Any]:
    """Training throughput of one client with and without length-grouped batches.

    Also reports the padded tokens per real token of each batching.
    """
    model, lm, dev = exp.model, exp.layermap, exp.device
    n = min(s.sizes.pad_samples, len(exp.train))
    indices = np.sort(np.random.default_rng(s.seed + 5).choice(len(exp.train), size=n, replace=False))
    gstate = exp.global_state()
    trainers = {
        g: LocalTrainer(model, lm, exp.train, exp.cfg.train.model_copy(update={"group_by_length": g}), dev)
        for g in (True, False)
    }
    every = list(range(lm.num_layers))
    thr: dict[bool, list[float]] = {True: [], False: []}
    pad: dict[bool, float] = {}
    for g in (True, False):
        rng = np.random.default_rng(0)
        bl = train_batches(exp.train.lengths, indices, s.batch_size, rng, g)
        pad[g] = sum(len(b) * int(exp.train.lengths[b].max()) for b in bl) / float(exp.train.lengths[indices].sum())
        trainers[g].fit(FitTask(0, 0, every, s.lr, seed=0), gstate, indices[: 2 * s.batch_size])  # warm-up
    for rep in range(s.sizes.pad_reps):
        for g in rotate([True, False], rep):
            task = FitTask(client_id=0, round=0, layers=every, lr=s.lr, seed=1000 + rep)
            with autocast(s, dev):
                dt, _ = timed(lambda: trainers[g].fit(task, gstate, indices), dev)
            thr[g].append(n / dt)
        log(f"  length grouping rep {rep + 1}: grouped {thr[True][-1]:.0f}/s, shuffled {thr[False][-1]:.0f}/s")
    set_state(model, gstate)
    return {
        "length_grouping_speedup": median([a / b for a, b in zip(thr[True], thr[False])]),
        "length_grouping": {
            "samples": n,
            "batch_size": s.batch_size,
            "samples_per_s_grouped": thr[True],
            "samples_per_s_shuffled": thr[False],
            "padded_tokens_per_real_token_grouped": pad[True],
            "padded_tokens_per_real_token_shuffled": pad[False],
        },
    }


def bench_grouping_accuracy(s: Settings, log: Log) -> dict[str, Any]:
    """A small FedIT run, with and without length grouping (and a second seed as a noise yardstick)."""
    z = s.sizes
    raw = base_raw(
        s, model_layers(s.model),
        data={**base_raw(s, 1)["data"], "max_train_samples": z.acc_train, "max_test_samples": z.acc_test},
        partition={"name": "iid"},
        clients={"num_clients": 5, "per_round": 5, "fractions": [1.0], "budgets": [model_layers(s.model)]},
        strategy={"name": "fedit"},
        rounds=z.acc_rounds,
        eval={"every": z.acc_rounds, "batch_size": 64},
    )
    exp = prepare(build_config(raw))
    init = exp.global_state()
    results = {}
    for label, group, seed in (("grouped", True, 0), ("shuffled", False, 0), ("shuffled_seed1", False, 1)):
        cfg = exp.cfg.model_copy(update={"seed": seed, "train": exp.cfg.train.model_copy(update={"group_by_length": group})})
        e = dataclasses.replace(exp, cfg=cfg)
        server = Server.for_experiment(e, SimulationRunner(e), global_state=dict(init))
        with autocast(s, exp.device):
            recs = server.run()
        results[label] = recs[-1]["test_accuracy"]
        log(f"  accuracy ({label}, seed {seed}): {100 * results[label]:.1f}%")
    set_state(exp.model, init)
    return {
        "length_grouping_accuracy": {
            **results,
            "rounds": z.acc_rounds,
            "train_samples": len(exp.train),
            "test_samples": len(exp.test),
            "note": "test accuracy after the run; |shuffled - shuffled_seed1| is the seed-to-seed noise",
        }
    }


# --------------------------------------------------------------------------- 5: scale


def bench_scale(s: Settings, log: Log) -> dict[str, Any]:
    """Peak memory and round time for each client count of the size, each in a fresh process."""
    rows = []
    for c in s.sizes.scale_clients:
        if s.sizes.memory_fresh_process:
            res = _probe("scale", {"clients": c}, s)
        else:  # the tests: same code, this process (memory figures then mean little)
            res = probe_scale({"kind": "scale", "settings": s.to_dict(), "clients": c})
        rows.append(res)
        log(f"  scale {c} clients: peak RSS {res['rss_mb']:.0f} MB, round {res['round_time_s']:.2f}s, "
            f"setup {res['prepare_s']:.1f}s")
    return {"scale": rows}


def scale_raw(s: Settings, clients: int) -> dict[str, Any]:
    """Fixed data (demo, ``scale_samples``), only the client count varies; one step of 2 samples per client."""
    L = model_layers(s.model)
    raw = base_raw(
        s, L,
        partition={"name": "iid"},
        clients={"num_clients": clients, "per_round": min(10, clients), "fractions": [0.5, 0.5],
                 "budgets": [max(1, L // 2), L]},
        strategy={"name": "fedra"},
        train={"batch_size": 2, "max_steps": 1},
    )
    # the demo data's section as a whole, not merged into --data's (data.path beside the demo format is refused)
    raw["data"] = {"format": "demo", "demo_samples": s.sizes.scale_samples, "val_fraction": 0.01}
    return raw


def probe_scale(arg: dict) -> dict:
    """Memory and round time of one client count (run in a fresh process by :func:`bench_scale`,
    through :mod:`fedhello.bench.probe`)."""
    s = Settings.from_dict(arg["settings"])
    _threads(s)
    cfg = build_config(scale_raw(s, arg["clients"]))
    t0 = time.perf_counter()
    exp = prepare(cfg)
    prepare_s = time.perf_counter() - t0
    rss_after_setup = rss_bytes()
    server = Server.for_experiment(exp, SimulationRunner(exp), evaluator=no_eval)
    times = []
    for t in range(s.sizes.scale_rounds + 1):
        with autocast(s, exp.device):
            dt, _ = timed(lambda: server.run(until=t + 1), exp.device)
        if t > 0:
            times.append(dt)
    gc.collect()
    return {
        "clients": arg["clients"],
        "rss_mb": peak_rss_bytes() / 2**20,
        "rss_after_setup_mb": rss_after_setup / 2**20,
        "rss_end_mb": rss_bytes() / 2**20,
        "round_time_s": float(np.median(times)),
        "round_times_s": times,
        "prepare_s": prepare_s,
        "train_samples": len(exp.train),
        "partition_index_bytes": int(sum(p.nbytes for p in exp.partitions)),
        "per_round": cfg.clients.per_round,
    }
