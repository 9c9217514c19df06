"""``fedhello bench --out DIR [--quick] [--data FOLDER]``: the whole suite.

Writes ``DIR/bench.json`` (the figures and everything they were computed from)
and ``DIR/bench.txt`` (the table, also printed). Without ``--data`` the built-in
demo data is used, so the suite runs anywhere; ``--data`` takes a folder with
``train.csv``/``test.csv`` (columns text,category: the Banking77 layout).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fedhello.bench import suite
from fedhello.bench.common import machine_info
from fedhello.bench.report import check_targets, table
from fedhello.bench.settings import PARTS, Settings
from fedhello.errors import DataError
from fedhello.run.experiment import pick_device


def run_suite(s: Settings, parts: Sequence[str] = PARTS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark ``parts`` (in :data:`PARTS` order) with settings ``s``.

    Returns the bench.json contents: machine and settings, each part's figures,
    the time each part took and which targets are met. ``log`` gets the progress
    lines. Raises :class:`~fedhello.errors.DataError` when ``s.data`` has no train.csv.
    """
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.data and not (Path(s.data) / "train.csv").is_file():
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


def write_results(result: dict[str, Any], out: str | Path) -> str:
    """``out/bench.json`` and ``out/bench.txt`` (each written whole or not at all); returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(result)
    for name, content in (("bench.json", json.dumps(_finite(result), indent=2)), ("bench.txt", text + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)
    return text
