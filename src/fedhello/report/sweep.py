"""``fedhello sweep``: every (strategy, partition, seed) cell of a grid, and the results table.

Layout of a sweep directory::

    DIR/sweep.json                          the grid as asked (config, strategies, partitions, seeds, --set, target)
    DIR/<partition>/<strategy>/seed<S>/     one ordinary run directory per cell
    DIR/failures.json                       cells whose run raised, with the error (removed once they succeed)
    DIR/results.csv, DIR/results.md         one row per (strategy, partition), rewritten after every cell
    DIR/plots/                              test accuracy per round, one figure per partition

Partition specs: ``iid``; ``pat-K`` (pathological, K classes per client);
``dir-A`` (Dirichlet label skew with concentration A).

The sweep is resumable: a cell whose ``summary.json`` exists and whose
``config.yaml`` equals the cell's config is not run again; a cell with a
checkpoint but no summary continues from its last finished round (that is what
:func:`~fedhello.federation.simulation.run_experiment` does with the same
config in the same directory). Cells run in this order: seed, then partition,
then strategy, so that a partial sweep already holds every strategy of the
first seed.

The table is computed from the cell directories alone (``summary.json``,
``metrics.jsonl``), so ``fedhello report DIR`` rebuilds it:

- ``final_test_accuracy``: test accuracy after the last round;
- ``best_val_test_accuracy``: test accuracy of the round with the best
  validation accuracy (model selection on validation, never on test);
- mean and *sample* standard deviation (n-1) over the finished seeds; the std
  is blank with a single seed;
- ``rounds_to_target``: the first evaluated round (counted from 1) whose test accuracy is
  at least the target, averaged over the seeds that reach it
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
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fedhello.errors import ConfigError, FedHelloError
from fedhello.run.rundir import CONFIG, SUMMARY, RunDir, atomic_write_json, atomic_write_text

SWEEP = "sweep.json"
FAILURES = "failures.json"
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
]

_PAT = re.compile(r"^pat-(\d+)$")
_DIR = re.compile(r"^dir-((?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)$")


def partition_overrides(spec: str) -> list[str]:
    """``iid`` / ``pat-K`` / ``dir-A`` -> config overrides."""
    if spec == "iid":
        return ["partition.name=iid"]
    m = _PAT.match(spec)
    if m and int(m.group(1)) >= 1:
        return ["partition.name=pathological", f"partition.classes_per_client={int(m.group(1))}"]
    m = _DIR.match(spec)
    if m and float(m.group(1)) > 0:
        return ["partition.name=dirichlet", f"partition.alpha={float(m.group(1))}"]
    raise ConfigError(
        f"--partitions: {spec!r} is not a partition spec (iid, pat-K with K classes per client, "
        "or dir-A with Dirichlet alpha A > 0)"
    )


def split_list(text: str | Sequence[str], option: str) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ConfigError(f"{option}: empty list")
    if len(set(items)) != len(items):
        raise ConfigError(f"{option}: {', '.join(items)} names an item twice")
    return items


def parse_seeds(text: str | Sequence[Any]) -> list[int]:
    items = split_list([str(s) for s in text] if not isinstance(text, str) else text, "--seeds")
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None


@dataclass(frozen=True)
class Cell:
    strategy: str
    partition: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.partition}/{self.strategy}/seed{self.seed}"

    def dir(self, root: str | Path) -> Path:
        return Path(root) / self.partition / self.strategy / f"seed{self.seed}"


def plan(
    config: str | Path,
    strategies: Sequence[str],
    partitions: Sequence[str],
    seeds: Sequence[int],
    sets: Sequence[str] = (),
):
    """Every cell with its validated config (any input error is raised here, before any run)."""
    from fedhello.config import load_config
    from fedhello.federation.simulation import check_budgets

    cells = []
    for seed in seeds:
        for part in partitions:
            over = partition_overrides(part)
            for strat in strategies:
                cfg = load_config(config, [*sets, *over, f"strategy.name={strat}", f"seed={seed}"])
                cells.append((Cell(strat, part, seed), cfg))
    if cells:
        check_budgets(cells[0][1])
    return cells


def cell_status(path: Path, cfg) -> str:
    """``done``, ``resume`` (checkpointed, unfinished), ``new`` or ``different`` (another run)."""
    from fedhello.federation.simulation import holds_config

    rd = RunDir(path)
    if not rd.has_run():
        return "new"
    try:
        same = holds_config(rd, cfg)
    except Exception:  # unreadable config.yaml
        return "different"
    if not same:
        return "different"
    return "done" if rd.file(SUMMARY).is_file() else "resume"


def read_failures(out: Path) -> dict[str, dict]:
    p = out / FAILURES
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}


def run_sweep(
    config: str | Path,
    strategies: Sequence[str],
    partitions: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    sets: Sequence[str] = (),
    target: float | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    print_fn: Callable[[str], None] = print,
    on_round: Callable[[Cell, dict, int], None] | None = None,
) -> dict[str, list[str]]:
    """Run the grid into ``out``; returns the cell keys that ran, were skipped and failed."""
    from fedhello.federation.simulation import run_experiment

    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target: {target} is not an accuracy in (0, 1]")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FedHelloError(f"--out {out} exists and is not a directory")
    cells = plan(config, strategies, partitions, seeds, sets)
    done: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    if dry_run:
        for i, (cell, cfg) in enumerate(cells, 1):
            st = cell_status(cell.dir(out), cfg)
            print_fn(f"[{i}/{len(cells)}] {cell.key:<40} {cfg.rounds} rounds  {st}  -> {cell.dir(out)}")
        return done
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / SWEEP,
        {
            "config": str(config),
            "strategies": list(strategies),
            "partitions": list(partitions),
            "seeds": list(seeds),
            "set": list(sets),
            "target": target,
        },
    )
    failures = read_failures(out)
    for i, (cell, cfg) in enumerate(cells, 1):
        path = cell.dir(out)
        st = cell_status(path, cfg)
        if st == "done":
            done["skipped"].append(cell.key)
            failures.pop(cell.key, None)
            continue
        note = {"resume": " (resuming from its checkpoint)", "different": " (replacing another run)"}.get(st, "")
        print_fn(f"[{i}/{len(cells)}] {cell.key}: {cfg.rounds} rounds{note if overwrite or st != 'different' else ''}")
        try:
            run_experiment(
                cfg,
                path,
                overwrite=overwrite,
                on_round=(lambda rec, c=cell, n=cfg.rounds: on_round(c, rec, n)) if on_round else None,
                log=lambda msg: print_fn(f"  {msg}"),
            )
        except KeyboardInterrupt:
            write_results(out, target)
            raise
        except Exception as err:  # a failed cell is recorded and the sweep goes on
            msg = " ".join(str(err).split()) or type(err).__name__
            failures[cell.key] = {
                "strategy": cell.strategy,
                "partition": cell.partition,
                "seed": cell.seed,
                "error": f"{type(err).__name__}: {msg}",
                "traceback": traceback.format_exc(limit=-3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            done["failed"].append(cell.key)
            print_fn(f"  failed: {type(err).__name__}: {msg} (recorded in {out / FAILURES})")
        else:
            failures.pop(cell.key, None)
            done["ran"].append(cell.key)
        atomic_write_json(out / FAILURES, failures)
        write_results(out, target, plots=True)
    atomic_write_json(out / FAILURES, failures)
    write_results(out, target, plots=True)
    return done


# -- the results table -----------------------------------------------------------------


@dataclass
class CellResult:
    cell: Cell
    path: Path
    summary: dict | None  # None: unfinished
    records: list[dict]


def _manifest(out: Path) -> dict:
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
        summary = rd.read_json(SUMMARY) if rd.file(SUMMARY).is_file() else None
        found.append(CellResult(cell, path, summary, rd.read_metrics()))
    return found


def _order(values: list[str], preferred: Sequence[str] | None) -> list[str]:
    pref = [v for v in (preferred or []) if v in values]
    return pref + sorted(v for v in values if v not in pref)


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) >= 2 else None


def rounds_to(records: list[dict], target: float) -> int | None:
    """First round (counted from 1) whose test accuracy reaches ``target``."""
    for r in records:
        acc = r.get("test_accuracy")
        if acc is not None and acc >= target - 1e-12:
            return int(r["round"]) + 1
    return None


def results_rows(out: str | Path, target: float | None = None) -> list[dict[str, Any]]:
    """One row per (strategy, partition) found under ``out``; see the module docstring."""
    out = Path(out)
    man = _manifest(out)
    if target is None:
        target = man.get("target")
    cells = collect(out)
    failures = read_failures(out)
    keys = {(c.cell.partition, c.cell.strategy) for c in cells}
    keys |= {(f["partition"], f["strategy"]) for f in failures.values()}
    partitions = _order(sorted({p for p, _ in keys}), man.get("partitions"))
    strategies = _order(sorted({s for _, s in keys}), man.get("strategies"))
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
                "final_test_accuracy_mean": _mean(final),
                "final_test_accuracy_std": _std(final),
                "best_val_test_accuracy_mean": _mean(best),
                "best_val_test_accuracy_std": _std(best),
                "upload_mb_mean": _mean([c.summary["total_upload_bytes"] / 1e6 for c in fin]),
                "mean_client_train_time_s": _mean(times),
                "total_time_s_mean": _mean([c.summary["total_time_s"] for c in fin]),
                "trainable_params_per_group": "/".join(str(int(p)) for p in params) if params else None,
                "_cells": fin,
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


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def results_csv(rows: list[dict]) -> str:
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


def results_markdown(rows: list[dict], title: str = "Results") -> str:
    lines = [f"# {title}", ""]
    lines.append(
        "Test accuracy in %, mean ± sample standard deviation over the finished seeds. "
        "*acc @ best val*: test accuracy of the round with the best validation accuracy. "
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
        lines.append("| strategy | seeds | final test acc | acc @ best val | rounds to target | upload MB "
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
    return "\n".join(lines) + "\n"


def write_results(out: str | Path, target: float | None = None, plots: bool = False) -> list[dict]:
    """(Re)write results.csv and results.md (atomically) and, with ``plots``, the sweep plots."""
    out = Path(out)
    rows = results_rows(out, target)
    atomic_write_text(out / RESULTS_CSV, results_csv(rows))
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, f"Sweep results: {out.name}"))
    if plots:
        try:
            from fedhello.report.plots import sweep_plots

            sweep_plots(out)
        except Exception as err:  # a plotting problem must not stop a sweep: the table is there
            warnings.warn(f"sweep plots not written: {type(err).__name__}: {err}", stacklevel=2)
    return rows
