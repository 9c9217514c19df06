"""``fedhello sweep``: every (strategy, partition, seed) cell of a grid, run resumably.

Layout of a sweep directory::

    DIR/sweep.json                          the grid as asked (config, strategies, partitions, seeds, --set, target)
    DIR/<partition>/<strategy>/seed<S>/     one ordinary run directory per cell
    DIR/failures.json                       cells whose run raised, with the error (removed once they succeed)
    DIR/results.csv, DIR/results.md         the table (:mod:`fedhello.report.table`), rewritten after every cell
    DIR/plots/                              test accuracy per round, one figure per partition

Partition specs: ``iid``; ``pat-K`` (pathological, K classes per client);
``dir-A`` (Dirichlet label skew with concentration A).

The sweep is resumable: a cell whose ``summary.json`` exists and whose
``config.yaml`` equals the cell's config is not run again; a cell with a
checkpoint but no summary continues from its last finished round (that is what
:func:`~fedhello.run.experiment.run_experiment` does with the same config in
the same directory). Cells run in this order: seed, then partition, then
strategy, so that a partial sweep already holds every strategy of the first seed.
What is written after each cell (the table, plots) is the caller's ``after_cell`` hook.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from fedhello.config import load_config
from fedhello.errors import ConfigError, FedHelloError
from fedhello.run.experiment import Reporter, check_model_fit, holds_config, run_experiment
from fedhello.run.rundir import SUMMARY, RunDir, atomic_write_json, atomic_write_text

SWEEP = "sweep.json"
FAILURES = "failures.json"

log = logging.getLogger("fedhello")
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
    """The items of a comma-separated option (or a sequence), stripped.

    Raises :class:`~fedhello.errors.ConfigError`, naming ``option``, when the list is
    empty or names an item twice.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ConfigError(f"{option}: empty list")
    if len(set(items)) != len(items):
        raise ConfigError(f"{option}: {', '.join(items)} names an item twice")
    return items


def parse_seeds(text: str | Sequence[Any]) -> list[int]:
    """``--seeds`` as integers (see :func:`split_list`); ConfigError for a non-integer."""
    items = split_list([str(s) for s in text] if not isinstance(text, str) else text, "--seeds")
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None


@dataclass(frozen=True)
class Cell:
    """One (strategy, partition, seed) of a sweep's grid."""
    strategy: str
    partition: str
    seed: int

    @property
    def key(self) -> str:
        """``<partition>/<strategy>/seed<S>``: the cell's name in logs and failures.json."""
        return f"{self.partition}/{self.strategy}/seed{self.seed}"

    def dir(self, root: str | Path) -> Path:
        """The cell's run directory under the sweep directory ``root``."""
        return Path(root) / self.partition / self.strategy / f"seed{self.seed}"


def plan(
    config: str | Path,
    strategies: Sequence[str],
    partitions: Sequence[str],
    seeds: Sequence[int],
    sets: Sequence[str] = (),
):
    """Every cell with its validated config (any input error is raised here, before any run)."""
    cells = []
    for seed in seeds:
        for part in partitions:
            over = partition_overrides(part)
            for strat in strategies:
                cfg = load_config(config, [*sets, *over, f"strategy.name={strat}", f"seed={seed}"])
                cells.append((Cell(strat, part, seed), cfg))
    if cells:
        check_model_fit(cells[0][1])
    return cells


def cell_status(path: Path, cfg) -> str:
    """``done``, ``resume`` (checkpointed, unfinished), ``new`` or ``different`` (another run)."""
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
    """The sweep's failures.json (cell key -> error record); ``{}`` if missing or not JSON."""
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
    on_round: Callable[[Cell, dict, int], None] | None = None,
    on_cell: Callable[[int, int, Cell, int], None] | None = None,
    after_cell: Callable[[Path], None] | None = None,
    reporter: Callable[[Path], Reporter] | None = None,
    jobs: int = 1,
    cell_command: Callable[[Path, Path, bool], list[str]] | None = None,
    on_status: Callable[[list[dict]], None] | None = None,
) -> dict[str, list[str]]:
    """Run the grid into ``out``; returns the cell keys that ran, were skipped and failed.

    Hooks: ``on_cell(i, n, cell, rounds_done)`` before each cell (``i`` of ``n``),
    ``on_round(cell, record, rounds)`` after each round, ``after_cell(out)`` after
    each cell and when the sweep stops (the CLI rewrites the results table there),
    ``reporter`` as in :func:`~fedhello.run.experiment.run_experiment` for every cell.

    ``jobs`` > 1 runs that many cells at once, each in its own process
    (:func:`run_parallel`): ``cell_command(config_file, cell_dir, overwrite)`` is the
    command line of one cell's run (the CLI gives ``fedhello run``), and
    ``on_status(cells)`` is called with every cell's state while they run
    (``on_round``/``on_cell`` are not called then).
    """
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target: {target} is not an accuracy in (0, 1]")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FedHelloError(f"--out {out} exists and is not a directory")
    cells = plan(config, strategies, partitions, seeds, sets)
    done: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    if dry_run:
        return _dry_run(cells, out, done)
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
    if jobs > 1:
        if cell_command is None:
            raise ValueError("jobs > 1 needs cell_command")
        run_parallel(cells, out, jobs, cell_command, overwrite, failures, done, on_status, after_cell)
        return done
    for i, (cell, cfg) in enumerate(cells, 1):
        _run_in_process(i, len(cells), cell, cfg, out, overwrite, failures, done,
                        on_round=on_round, on_cell=on_cell, after_cell=after_cell, reporter=reporter)
    _save_failures(out, failures, after_cell)
    return done


def _run_in_process(i: int, n: int, cell: Cell, cfg, out: Path, overwrite: bool, failures: dict, done: dict, *,
                    on_round, on_cell, after_cell, reporter) -> None:
    """Cell ``i`` of ``n`` run in this process (``jobs`` 1), unless done; its outcome goes into
    ``done`` and ``failures`` (saved), a failure recorded and the sweep going on."""
    path = cell.dir(out)
    st = cell_status(path, cfg)
    if on_cell is not None:
        on_cell(i, n, cell, cfg.rounds if st == "done" else _rounds_done(path, st))
    if st == "done":
        done["skipped"].append(cell.key)
        failures.pop(cell.key, None)
        return
    note = {"resume": " (resuming from its checkpoint)", "different": " (replacing another run)"}.get(st, "")
    log.info(f"[{i}/{n}] {cell.key}: {cfg.rounds} rounds{note if overwrite or st != 'different' else ''}")
    try:
        run_experiment(
            cfg,
            path,
            overwrite=overwrite,
            on_round=(lambda rec, c=cell, rounds=cfg.rounds: on_round(c, rec, rounds)) if on_round else None,
            reporter=reporter,
        )
    except KeyboardInterrupt:
        if after_cell is not None:
            after_cell(out)
        raise
    except Exception as err:  # a failed cell is recorded and the sweep goes on
        msg = " ".join(str(err).split()) or type(err).__name__
        failures[cell.key] = _failure(cell, f"{type(err).__name__}: {msg}", traceback.format_exc(limit=-3))
        done["failed"].append(cell.key)
        log.error(f"  failed: {type(err).__name__}: {msg} (recorded in {out / FAILURES})")
    else:
        failures.pop(cell.key, None)
        done["ran"].append(cell.key)
    _save_failures(out, failures, after_cell)


def _save_failures(out: Path, failures: dict, after_cell) -> None:
    """failures.json rewritten, then the caller's ``after_cell`` hook (the results table)."""
    atomic_write_json(out / FAILURES, failures)
    if after_cell is not None:
        after_cell(out)


def _dry_run(cells, out: Path, done: dict[str, list[str]]) -> dict[str, list[str]]:
    """``--dry-run``: every cell is validated as `fedhello validate` does and listed with its
    status; refused cells are listed as failed. Nothing is written."""
    from fedhello.run.validate import validate_config

    for i, (cell, cfg) in enumerate(cells, 1):
        try:
            validate_config(cfg)
            st = cell_status(cell.dir(out), cfg)
        except FedHelloError as err:
            st = "refused: " + " ".join(str(err).split())
            done["failed"].append(cell.key)
        log.info(f"[{i}/{len(cells)}] {cell.key:<40} {cfg.rounds} rounds  {st}  -> {cell.dir(out)}")
    return done


def _failure(cell: Cell, error: str, trace: str) -> dict[str, Any]:
    """A failed cell's entry in the sweep's failures file."""
    return {
        "strategy": cell.strategy,
        "partition": cell.partition,
        "seed": cell.seed,
        "error": error,
        "traceback": trace,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _rounds_done(path: Path, status: str) -> int:
    """Rounds a cell already holds (its metrics.jsonl), for progress; 0 for a new one."""
    if status != "resume":
        return 0
    try:
        return len(RunDir(path).read_metrics())
    except FedHelloError:
        return 0


JOBS_DIR = ".jobs"


def threads_per_job(jobs: int) -> int:
    """CPU threads each of ``jobs`` parallel cells gets: the cores this process may use, split evenly (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def run_parallel(cells, out: Path, jobs: int, cell_command, overwrite: bool, failures: dict, done: dict,
                 on_status=None, after_cell=None, poll_s: float = 1.0) -> None:
    """Run the unfinished cells ``jobs`` at a time, each as its own process (``cell_command``).

    Every process gets ``OMP_NUM_THREADS`` = cores // jobs so that the cells do not
    oversubscribe the CPU. A cell's process writes its ordinary run directory (the
    checkpoint after every round), so a killed sweep loses only the running cells'
    rounds since their last checkpoint and the same command continues them. Its
    console output goes to ``DIR/.jobs/<partition>-<strategy>-seed<S>.log``; a cell
    that exits non-zero is recorded in failures.json with the log's last lines.
    ``on_status`` gets one dict per cell (``key``, ``state``: done, skipped, waiting,
    running, failed; ``rounds_done``, ``rounds``, ``started``, ``finished``: seconds
    since the epoch or None) every ``poll_s`` seconds and when a cell changes state.
    """
    jobdir = out / JOBS_DIR
    jobdir.mkdir(parents=True, exist_ok=True)
    status, queue = _queue(cells, out, failures, done)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_job(jobs)), MKL_NUM_THREADS=str(threads_per_job(jobs)))
    running: dict = {}  # Popen -> (cell, entry, log file, log path)

    def report() -> None:
        if on_status is not None:
            on_status(status)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell, cfg, entry = queue.pop(0)
                proc, job = _start_cell(cell, cfg, entry, out, jobdir, cell_command, overwrite, env)
                running[proc] = job
                report()
            time.sleep(poll_s)
            for proc in [p for p in running if p.poll() is not None]:
                _finish_cell(proc, *running.pop(proc), failures, done)
                _save_failures(out, failures, after_cell)
            for cell, entry, _, _ in running.values():
                try:
                    entry["rounds_done"] = len(RunDir(cell.dir(out)).read_metrics())
                except (FedHelloError, OSError):
                    pass
            report()
    finally:  # interrupted: stop the cells still running (each keeps its last checkpoint)
        _stop(running)
    _save_failures(out, failures, after_cell)


def _queue(cells, out: Path, failures: dict, done: dict) -> tuple[list[dict], list]:
    """Every cell's status entry, and the (cell, config, entry) of those still to run (done cells are skipped)."""
    status: list[dict] = []
    queue = []
    for cell, cfg in cells:
        st = cell_status(cell.dir(out), cfg)
        entry = {"key": cell.key, "state": "waiting", "rounds": cfg.rounds,
                 "rounds_done": _rounds_done(cell.dir(out), st), "started": None, "finished": None}
        if st == "done":
            entry.update(state="skipped", rounds_done=cfg.rounds)
            done["skipped"].append(cell.key)
            failures.pop(cell.key, None)
        else:
            queue.append((cell, cfg, entry))
        status.append(entry)
    return status, queue


def _start_cell(cell: Cell, cfg, entry: dict, out: Path, jobdir: Path, cell_command, overwrite: bool, env: dict):
    """One cell's process started on its config file, its output going to its log; (process, its job)."""
    name = cell.key.replace("/", "-")
    cfg_file = jobdir / f"{name}.yaml"
    atomic_write_text(cfg_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logf = open(jobdir / f"{name}.log", "ab")
    proc = subprocess.Popen(cell_command(cfg_file, cell.dir(out), overwrite), stdout=logf,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    entry.update(state="running", started=time.time(), rounds_at_start=entry["rounds_done"])
    return proc, (cell, entry, logf, jobdir / f"{name}.log")


def _finish_cell(proc, cell: Cell, entry: dict, logf, logpath: Path, failures: dict, done: dict) -> None:
    """A cell whose process exited: done, or failed with its log's last lines recorded."""
    logf.close()
    entry["finished"] = time.time()
    if proc.returncode == 0:
        entry.update(state="done", rounds_done=entry["rounds"])
        failures.pop(cell.key, None)
        done["ran"].append(cell.key)
    else:
        entry["state"] = "failed"
        tail = _tail(logpath)
        error = f"exit status {proc.returncode}: {tail[-1] if tail else ''}".strip()
        failures[cell.key] = _failure(cell, error, "\n".join(tail))
        done["failed"].append(cell.key)
        log.error(f"  {cell.key} failed: {failures[cell.key]['error']} (log: {logpath})")


def _stop(running: dict) -> None:
    """The cells still running stopped (each keeps its last checkpoint) and their logs closed."""
    for proc, (_, _, logf, _) in running.items():
        if proc.poll() is None:
            proc.terminate()
    for proc, (_, _, logf, _) in running.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()


def _tail(path: Path, n: int = 5) -> list[str]:
    """The last ``n`` non-empty lines of a log file."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def cell_eta(entry: dict, now: float | None = None) -> float | None:
    """Seconds until a running cell finishes, from its pace in this sweep (None before its first round here)."""
    if entry["state"] != "running" or entry["started"] is None:
        return None
    done_here = entry["rounds_done"] - entry.get("rounds_at_start", 0)
    if done_here <= 0:
        return None
    per_round = ((now or time.time()) - entry["started"]) / done_here
    return per_round * (entry["rounds"] - entry["rounds_done"])


def sweep_eta(status: list[dict], jobs: int, now: float | None = None) -> float | None:
    """Seconds until the whole sweep finishes: the rounds left at the mean pace of the rounds
    run so far in this sweep, shared by ``jobs`` processes (None before any round is done here)."""
    now = now or time.time()
    spent = done = 0.0
    for e in status:
        if e["started"] is None:
            continue
        spent += (e["finished"] or now) - e["started"]
        done += e["rounds_done"] - e.get("rounds_at_start", 0)
    if done <= 0:
        return None
    left = sum(e["rounds"] - e["rounds_done"] for e in status if e["state"] in ("waiting", "running"))
    return spent / done * left / max(1, jobs)
