"""The results table of a sweep directory (``results.csv`` / ``results.md``), from the cells' files alone.

The table is computed from the cell directories alone (``summary.json``,
``metrics.jsonl``), so ``fedhello report DIR`` rebuilds it:
- ``final_test_accuracy``: test accuracy after the last round;
- ``best_val_test_accuracy``: test accuracy of the best validation round (by ``eval.select_metric``,
  shown as ``select_metric``): model selection on validation, never on test;
- mean and *sample* standard deviation (n-1) over the finished seeds; the std
  is blank with a single seed;
- ``rounds_to_target``: how many rounds were trained (the round index, numbered from 0, + 1)
  until the first evaluation whose test accuracy is at least the target, averaged over the seeds that reach it
  (``reached_target`` says how many did). The target is ``--target`` (a
  fraction, e.g. 0.8) or by default 90% of the best ``final_test_accuracy_mean``
  among the strategies of that partition;
- ``upload_mb``: total bytes uploaded by clients over the run / 1e6;
- ``mean_client_train_time_s``: mean local training time of one client in one round;
- ``trainable_params_per_group``: trainable LoRA + head parameters of a client
  of each resource group (weakest first).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedhello.federation.records import Summary, read_summary
from fedhello.run.rundir import CONFIG, SUMMARY, RunDir, atomic_write_text
from fedhello.run.sweep import SWEEP, Cell, read_failures

PHASES = ("head_init", "train", "aggregate", "evaluate", "checkpoint")
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
DEFAULT_TARGET_SHARE = 0.9

CSV_COLUMNS = [
    "strategy",
    "partition",
    "seeds",
    "seed_ids",
    "failed",
    "incomplete",
    "rounds",
    "select_metric",
    "final_test_accuracy_mean",
    "final_test_accuracy_std",
    "best_val_test_accuracy_mean",
    "best_val_test_accuracy_std",
    "target_accuracy",
    "rounds_to_target",
    "reached_target",
    "upload_mb_mean",
    "mean_client_train_time_s",
    "total_time_s_mean",
    "trainable_params_per_group",
    # where a cell's time goes: summary.json's phase_time_s, mean over the finished seeds
    *(f"time_{p}_s_mean" for p in PHASES),
]


# -- the results table -----------------------------------------------------------------


@dataclass
class CellResult:
    """One cell run directory of a sweep: its cell, path, summary (None: unfinished) and records."""
    cell: Cell
    path: Path
    summary: Summary | None  # None: unfinished
    records: list[dict]


def manifest(out: Path) -> dict:
    """The sweep's ``sweep.json`` (the grid as asked); ``{}`` when missing or not valid JSON."""
    p = out / SWEEP
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def collect(out: str | Path) -> list[CellResult]:
    """Every cell run directory under a sweep directory (DIR/<partition>/<strategy>/seed<S>/)."""
    out = Path(out)
    found = []
    for cfg_file in sorted(out.glob(f"*/*/seed*/{CONFIG}")):
        path = cfg_file.parent
        m = re.fullmatch(r"seed(-?\d+)", path.name)
        if not m:
            continue
        cell = Cell(path.parent.name, path.parent.parent.name, int(m.group(1)))
        rd = RunDir(path)
        summary = read_summary(rd.read_json(SUMMARY)) if rd.file(SUMMARY).is_file() else None
        found.append(CellResult(cell, path, summary, rd.read_metrics()))
    return found


def order_by(values: list[str], preferred: Sequence[str] | None) -> list[str]:
    """``values`` with those in ``preferred`` first (in its order), the rest sorted."""
    pref = [v for v in (preferred or []) if v in values]
    return pref + sorted(v for v in values if v not in pref)


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) >= 2 else None


def rounds_to(records: list[dict], target: float) -> int | None:
    """How many rounds were trained until the test accuracy reached ``target`` (a count: round index + 1)."""
    for r in records:
        acc = r.get("test_accuracy")
        if acc is not None and acc >= target - 1e-12:
            return int(r["round"]) + 1
    return None


def results_rows(out: str | Path, target: float | None = None,
                 cells: list[CellResult] | None = None) -> list[dict[str, Any]]:
    """One row per (strategy, partition) found under ``out``; see the module docstring.

    ``cells``: :func:`collect` of ``out`` when the caller has already read it.
    """
    out = Path(out)
    man = manifest(out)
    if target is None:
        target = man.get("target")
    if cells is None:
        cells = collect(out)
    failures = read_failures(out)
    keys = {(c.cell.partition, c.cell.strategy) for c in cells}
    keys |= {(f["partition"], f["strategy"]) for f in failures.values()}
    partitions = order_by(sorted({p for p, _ in keys}), man.get("partitions"))
    strategies = order_by(sorted({s for _, s in keys}), man.get("strategies"))
    rows: list[dict[str, Any]] = []
    for part in partitions:
        part_rows = []
        for strat in strategies:
            if (part, strat) not in keys:
                continue
            mine = sorted((c for c in cells if c.cell.partition == part and c.cell.strategy == strat),
                          key=lambda c: c.cell.seed)
            fin = [c for c in mine if c.summary is not None]
            failed = sorted(f["seed"] for f in failures.values() if f["partition"] == part and f["strategy"] == strat)
            final = [c.summary["final_test_accuracy"] for c in fin if c.summary.get("final_test_accuracy") is not None]
            best = [c.summary["test_accuracy_at_best_val"] for c in fin
                    if c.summary.get("test_accuracy_at_best_val") is not None]
            times = [cl["train_time_s"] for c in fin for r in c.records for cl in r.get("clients", [])]
            params = next((c.summary.get("trainable_params_per_group") for c in fin
                           if c.summary.get("trainable_params_per_group")), None)
            part_rows.append({
                "strategy": strat,
                "partition": part,
                "seeds": len(fin),
                "seed_ids": " ".join(str(c.cell.seed) for c in fin),
                "failed": len(failed),
                "incomplete": len([c for c in mine if c.summary is None and c.cell.seed not in failed]),
                "rounds": max((c.summary["rounds"] for c in fin), default=None),
                # the validation metric that chose each seed's best round
                "select_metric": "/".join(sorted({c.summary["select_metric"] for c in fin})) or None,
                "final_test_accuracy_mean": _mean(final),
                "final_test_accuracy_std": _std(final),
                "best_val_test_accuracy_mean": _mean(best),
                "best_val_test_accuracy_std": _std(best),
                "upload_mb_mean": _mean([c.summary["total_upload_bytes"] / 1e6 for c in fin]),
                "mean_client_train_time_s": _mean(times),
                "total_time_s_mean": _mean([c.summary["total_time_s"] for c in fin]),
                "trainable_params_per_group": "/".join(str(int(p)) for p in params) if params else None,
                "_cells": fin,
                **{f"time_{p}_s_mean": _mean([c.summary["phase_time_s"][p] for c in fin
                                              if isinstance(c.summary.get("phase_time_s"), dict)
                                              and p in c.summary["phase_time_s"]]) for p in PHASES},
            })
        finals = [r["final_test_accuracy_mean"] for r in part_rows if r["final_test_accuracy_mean"] is not None]
        tgt = target if target is not None else (DEFAULT_TARGET_SHARE * max(finals) if finals else None)
        for r in part_rows:
            r["target_accuracy"] = tgt
            reached = [rounds_to(c.records, tgt) for c in r.pop("_cells")] if tgt is not None else []
            hit = [x for x in reached if x is not None]
            r["rounds_to_target"] = _mean([float(x) for x in hit])
            r["reached_target"] = f"{len(hit)}/{len(reached)}"
        rows.extend(part_rows)
    return rows


def grid_progress(man: dict, cells: list[CellResult]) -> tuple[int, int] | None:
    """(finished, total) cells of the grid in ``man`` (the sweep.json), counting the
    finished ones among ``cells``; None without a readable grid.

    A sweep run in stages, or stopped, tabulates only its finished cells; the Markdown table
    says so on its first line rather than look complete.
    """
    try:
        grid = {Cell(s, p, int(seed)).key for s in man["strategies"] for p in man["partitions"] for seed in man["seeds"]}
    except (KeyError, TypeError, ValueError):
        return None
    done = {c.cell.key for c in cells if c.summary is not None}
    return len(grid & done), len(grid)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def results_csv(rows: list[dict]) -> str:
    """The rows as CSV with :data:`CSV_COLUMNS` (None and NaN empty, floats to 6 digits)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def _pm(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None:
        return "-"
    s = f"{scale * mean:.{digits}f}"
    return s + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def results_markdown(rows: list[dict], title: str = "Results", progress: tuple[int, int] | None = None) -> str:
    """The rows as Markdown: an explanation of the columns, then one table per partition.

    Accuracies are shown in % as mean ± sample standard deviation. ``progress`` is
    (finished, total) cells of the grid: an unfinished grid is marked PARTIAL on the first line.
    """
    lines = []
    if progress is not None and progress[0] < progress[1]:
        lines += [f"**PARTIAL**: {progress[0]} of {progress[1]} cells of the sweep's grid have finished; "
                  "the table covers those.", ""]
    lines += [f"# {title}", ""]
    lines.append(
        "Test accuracy in %, mean ± sample standard deviation over the finished seeds. "
        "*acc @ best val*: test accuracy of the round with the best validation score, by the metric "
        "named in brackets (eval.select_metric). "
        "*rounds to target*: first round whose test accuracy reaches the partition's target, "
        "averaged over the seeds that reach it (reached/seeds in brackets). "
        "*upload MB*: total client upload over the run (1 MB = 1e6 bytes). "
        "*client train s*: mean local training time of one client in one round. "
        "*trainable params*: LoRA + head parameters a client of each resource group trains."
    )
    for part in dict.fromkeys(r["partition"] for r in rows):
        prow = [r for r in rows if r["partition"] == part]
        tgt = prow[0]["target_accuracy"]
        lines += ["", f"## {part}" + (f" (target {100 * tgt:.1f}%)" if tgt is not None else ""), ""]
        metrics = sorted({m for r in prow if r["select_metric"] for m in r["select_metric"].split("/")})
        sel = f" ({', '.join(metrics)})" if metrics else ""
        lines.append(f"| strategy | seeds | final test acc | acc @ best val{sel} | rounds to target | upload MB "
                     "| client train s | trainable params |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in prow:
            seeds = str(r["seeds"]) + (f" ({r['failed']} failed)" if r["failed"] else "") + (
                f" ({r['incomplete']} unfinished)" if r["incomplete"] else "")
            rtt = "-" if r["rounds_to_target"] is None else f"{r['rounds_to_target']:.1f} ({r['reached_target']})"
            if r["rounds_to_target"] is None and r["seeds"]:
                rtt = f"not reached ({r['reached_target']})"
            upload = "-" if r["upload_mb_mean"] is None else f"{r['upload_mb_mean']:.1f}"
            ttime = "-" if r["mean_client_train_time_s"] is None else f"{r['mean_client_train_time_s']:.2f}"
            lines.append(
                f"| {r['strategy']} | {seeds} | {_pm(r['final_test_accuracy_mean'], r['final_test_accuracy_std'])} "
                f"| {_pm(r['best_val_test_accuracy_mean'], r['best_val_test_accuracy_std'])} | {rtt} "
                f"| {upload} | {ttime} | {r['trainable_params_per_group'] or '-'} |"
            )
    timed = [r for r in rows if r.get("time_train_s_mean") is not None]
    if timed:
        lines += ["", "## Where a cell's time goes", "",
                  "Seconds per cell (mean over the finished seeds; summary.json's phase_time_s): the "
                  "class-statistics round, allocation and local training, aggregation, evaluation, "
                  "checkpoint writes; in brackets the share of the cell.", "",
                  "| partition | strategy | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
        for r in timed:
            vals = [r.get(f"time_{p}_s_mean") or 0.0 for p in PHASES]
            tot = sum(vals) or 1.0
            cells = " | ".join(f"{v:.1f} ({100 * v / tot:.0f}%)" for v in vals)
            lines.append(f"| {r['partition']} | {r['strategy']} | {cells} |")
    return "\n".join(lines) + "\n"


def write_results(out: str | Path, target: float | None = None,
                  cells: list[CellResult] | None = None) -> list[dict]:
    """(Re)write results.csv and results.md (atomically) from the cells of ``out``.

    ``cells``: :func:`collect` of ``out`` when the caller has already read it; otherwise
    every cell's records are read here, once, for both the rows and the progress line.
    """
    out = Path(out)
    if cells is None:
        cells = collect(out)
    rows = results_rows(out, target, cells)
    atomic_write_text(out / RESULTS_CSV, results_csv(rows))
    progress = grid_progress(manifest(out), cells)
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, f"Sweep results: {out.name}", progress))
    return rows
