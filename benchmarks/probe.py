"""Measurements that need a fresh process (peak memory): ``python -m benchmarks.probe JSON``.

Prints one JSON line. Used by :mod:`benchmarks.suite`; not meant to be run by hand.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import torch


def _threads(s) -> None:
    if s.threads:
        torch.set_num_threads(s.threads)


def probe_freeze(arg: dict) -> dict:
    from benchmarks.common import Settings, autocast, peak_rss_bytes, reset_peak_rss, rss_bytes
    from benchmarks.suite import bare_steps, freeze_setup
    from fedhello.config import build_config
    from fedhello.run.experiment import pick_device
    from fedhello.model import build_backbone
    from fedhello.model.state import set_state

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


def probe_scale(arg: dict) -> dict:
    import numpy as np

    from benchmarks.common import Settings, autocast, peak_rss_bytes, rss_bytes, timed
    from benchmarks.suite import no_eval, scale_raw
    from fedhello.allocation import build_strategy
    from fedhello.config import build_config
    from fedhello.federation.server import Server
    from fedhello.run.experiment import prepare
    from fedhello.federation.simulation import SimulationRunner

    s = Settings.from_dict(arg["settings"])
    _threads(s)
    cfg = build_config(scale_raw(s, arg["clients"]))
    t0 = time.perf_counter()
    exp = prepare(cfg)
    prepare_s = time.perf_counter() - t0
    rss_after_setup = rss_bytes()
    strategy = build_strategy(cfg.strategy, exp.layermap.num_layers, cfg.clients.budgets)
    server = Server(cfg, strategy, exp.groups, exp.layermap, exp.global_state(), SimulationRunner(exp), no_eval)
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


def main() -> None:
    arg = json.loads(sys.argv[1])
    fn = {"freeze": probe_freeze, "scale": probe_scale}[arg["kind"]]
    print(json.dumps(fn(arg)))


if __name__ == "__main__":
    main()
