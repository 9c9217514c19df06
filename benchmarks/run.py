"""``python -m benchmarks.run --out DIR [--quick] [--data FOLDER]``: the whole suite.

Writes ``DIR/bench.json`` (the figures and everything they were computed from)
and ``DIR/bench.txt`` (the table, also printed). Without ``--data`` the built-in
demo data is used, so the suite runs anywhere; ``--data`` takes a folder with
``train.csv``/``test.csv`` (columns text,category: the Banking77 layout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.common import SIZES, Settings, machine_info

PARTS = ("engine", "freezing", "fisher", "grouping", "accuracy", "scale")

# figure -> (target text, check on the value or None)
TARGETS: dict[str, tuple[str, Callable[[float], bool] | None]] = {
    "engine_overhead_ratio": ("<= 1.10", lambda v: v <= 1.10),
    "freeze_time_ratio.top_half": ("<= 0.75", lambda v: v <= 0.75),
    "freeze_time_ratio.bottom_half": ("(context)", None),
    "freeze_time_ratio.bottleneck": ("(context)", None),
    "freeze_time_ratio.lr0_all": ("~1 (no saving)", lambda v: v >= 0.9),
    "freeze_peak_memory_ratio.top_half": ("< bottom_half", None),
    "freeze_peak_memory_ratio.bottom_half": ("~1", None),
    "freeze_peak_memory_ratio.bottleneck": ("~1 (trains layer 0)", None),
    "freeze_peak_memory_ratio.lr0_all": ("~1 (no saving)", lambda v: v >= 0.9),
    "fim_speedup": (">= 2 (CPU), >= 10 (GPU)", None),
    "fim_max_rel_error": ("<= 1e-5", lambda v: v <= 1e-5),
    "length_grouping_speedup": (">= 1.5", lambda v: v >= 1.5),
}


def _get(result: dict, dotted: str):
    cur: Any = result
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def check_targets(result: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (_, ok) in TARGETS.items():
        v = _get(result, key)
        if v is None or ok is None:
            continue
        out[key] = bool(ok(v))
    fim_ok = result.get("fim_speedup")
    if fim_ok is not None:
        need = 10.0 if result["machine"]["device"] == "cuda" else 2.0
        out["fim_speedup"] = fim_ok >= need
    mem = result.get("freeze_peak_memory_ratio")
    if mem:
        out["freeze_peak_memory_ratio.top_half"] = mem["top_half"] < mem["bottom_half"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return str(v)


def table(result: dict) -> str:
    rows = [("figure", "value", "target", "met")]
    met = result.get("targets_met", {})
    for key, (target, _) in TARGETS.items():
        v = _get(result, key)
        if v is None:
            continue
        rows.append((key, _fmt(v), target, {True: "yes", False: "NO"}.get(met.get(key), "-")))
    for g, b in (result.get("upload_bytes_per_group") or {}).items():
        rows.append((f"upload_bytes_per_group.{g}", str(b), "<= fedit" if g != "fedit" else "", "-"))
    for r in result.get("scale") or []:
        rows.append((f"scale.{r['clients']}_clients", f"{r['rss_mb']:.0f} MB, {r['round_time_s']:.2f} s/round", "flat", "-"))
    acc = result.get("length_grouping_accuracy")
    if acc:
        rows.append(("grouping accuracy (grouped / shuffled / shuffled seed 1)",
                     f"{acc['grouped']:.3f} / {acc['shuffled']:.3f} / {acc['shuffled_seed1']:.3f}", "within noise", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    m = result["machine"]
    lines.append("")
    lines.append(f"machine: {m['device_name']} ({m['device']}), {m['cpu_count']} CPUs, torch {m['torch']}, "
                 f"{m['torch_threads']} threads; size {result['settings']['size']}; data {result['data']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (bench.json, bench.txt)")
    p.add_argument("--quick", action="store_true", help="reduced sizes: the whole suite in minutes")
    p.add_argument("--size", choices=sorted(SIZES), help="explicit size (overrides --quick)")
    p.add_argument("--data", help="folder with train.csv and test.csv (Banking77 layout); default: demo data")
    p.add_argument("--model", default="minilm", help="backbone (default: minilm, offline)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for training and scoring")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run_suite(s: Settings, parts: Sequence[str] = PARTS, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from benchmarks import suite
    from fedhello.run.experiment import pick_device

    if s.threads:
        torch.set_num_threads(s.threads)
    if s.data and not (Path(s.data) / "train.csv").is_file():
        from fedhello.errors import DataError

        raise DataError(f"--data {s.data}: no train.csv there")
    device = pick_device(s.device)
    t_all = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(s, device),
        # the data folder by name only: results are committed, machine paths are not
        "settings": {**s.to_dict(), "data": Path(s.data).name if s.data else None},
        "data": "banking77-layout csv" if s.data else "built-in demo data",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    timings: dict[str, float] = {}
    need_exp = {"engine", "freezing", "fisher", "grouping"} & set(parts)
    exp = None
    if need_exp:
        t0 = time.perf_counter()
        exp = suite.setup_experiment(s)
        timings["setup"] = time.perf_counter() - t0
        log(f"setup: {len(exp.train)} training samples, {exp.layermap.num_layers} layers, device {exp.device} "
            f"({timings['setup']:.0f}s)")
    steps = [
        ("engine", "1+6 engine overhead and communication", lambda: suite.bench_engine(exp, s, log)),
        ("freezing", "2 freezing: step time, activation and peak memory", lambda: suite.bench_freezing(exp, s, log)),
        ("fisher", "3 Fisher: vectorised vs per-sample loop", lambda: suite.bench_fisher(exp, s, log)),
        ("grouping", "4 length grouping throughput", lambda: suite.bench_length_grouping(exp, s, log)),
        ("accuracy", "4b length grouping accuracy", lambda: suite.bench_grouping_accuracy(s, log)),
        ("scale", "5 scale", lambda: suite.bench_scale(s, log)),
    ]
    for name, title, fn in steps:
        if name not in parts:
            continue
        log(f"[{title}]")
        t0 = time.perf_counter()
        result.update(fn())
        timings[name] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    result["timings_s"] = timings
    result["targets_met"] = check_targets(result)
    return result


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from fedhello.errors import FedHelloError

    size = args.size or ("quick" if args.quick else "full")
    parts = [p.strip() for p in args.only.split(",")] if args.only else list(PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"error: --only: unknown part {bad[0]!r} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    s = Settings(model=args.model, data=args.data, size=size, device=args.device, bf16=args.bf16,
                 threads=args.threads, seed=args.seed)
    out = Path(args.out)
    try:
        result = run_suite(s, parts, log=lambda m: print(m, file=sys.stderr, flush=True))
    except FedHelloError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    text = table(result)
    for name, content in (("bench.json", json.dumps(_finite(result), indent=2)), ("bench.txt", text + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
