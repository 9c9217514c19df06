"""The ``fedhello`` command.

Errors caused by input (config, data, run directory) print one line,
``error: ...``, naming the key or file, and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from fedhello.bench.settings import PARTS, SIZES, Settings, parse_parts
from fedhello.console import LOGGER, RichProgress, make_console, round_line, setup_logging
from fedhello.errors import FedHelloError


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _quiet_env() -> None:
    # never reach for the model hub unless the user asked for a hub model or dataset
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _console():
    return make_console()


def cmd_run(args: argparse.Namespace) -> int:
    """``fedhello run``: one experiment into ``--out``, or continue the run in ``--resume DIR``.

    A new run reads ``--config`` with its ``--set`` overrides; a resumed run takes the
    directory's own config.yaml (``--config``/``--set`` are refused then). Prints the
    final test accuracy and the test accuracy at the best validation round (and the
    same for ``eval.select_metric`` when it is not accuracy). Returns the exit status.
    """
    from fedhello.config import load_config
    from fedhello.report.hooks import RunReporter
    from fedhello.run.experiment import resume_config, run_experiment

    console = _console()
    if args.resume:
        if args.config or args.set:
            raise FedHelloError("--resume takes the run's own config.yaml: drop --config/--set")
        cfg = resume_config(args.resume)
        out = args.resume
    else:
        if not args.config:
            raise FedHelloError("fedhello run needs --config FILE (or --resume DIR)")
        if not args.out:
            raise FedHelloError("fedhello run needs --out DIR")
        cfg = load_config(args.config, args.set)
        out = args.out

    def start(exp) -> None:
        console.print(
            f"[bold]fedhello[/bold] {cfg.strategy.name}: {cfg.rounds} rounds, {cfg.clients.num_clients} clients "
            f"({cfg.clients.per_round} per round), {len(exp.train)} training samples, "
            f"{exp.layermap.num_layers} LoRA layers on {exp.device} -> {out}"
        )

    with RichProgress(console, quiet=args.quiet) as progress:  # bars only on a terminal, without --quiet
        summary = run_experiment(
            cfg,
            out,
            overwrite=args.overwrite,
            on_start=start,
            on_round=lambda rec: console.print(round_line(rec, cfg.rounds)),
            reporter=RunReporter,
            progress=progress,
        )
    if summary.get("final_test_accuracy") is not None:
        best = summary.get("best_val_round")
        best = "-" if best is None else best  # rounds are numbered from 0 everywhere, as in summary.json
        console.print(
            f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%  "
            f"(test at best val round {best}: "
            f"{100 * (summary['test_accuracy_at_best_val'] or 0):.2f}%)  run directory: {out}"
        )
        sel = cfg.eval.select_metric
        if sel != "accuracy" and summary.get(f"final_test_{sel}") is not None:
            console.print(
                f"final test {sel} {100 * summary[f'final_test_{sel}']:.2f}  "
                f"(at best val {sel} round: {100 * (summary.get(f'test_{sel}_at_best_val') or 0):.2f})"
            )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``fedhello demo``: see :func:`fedhello.demo.run_demo`."""
    from fedhello.demo import run_demo

    return run_demo(args.out, strategies=args.strategies, rounds=args.rounds, quiet=args.quiet)


def cmd_validate(args: argparse.Namespace) -> int:
    """``fedhello validate``: every offline check of a config and its local data.

    Runs :func:`fedhello.run.validate.validate_config` (no model weights are loaded)
    and prints one ``ok`` line with the layer count, then the validation notes.
    """
    from fedhello.config import load_config
    from fedhello.run.validate import validate_config

    cfg = load_config(args.config, args.set)
    rep = validate_config(cfg)
    layers = f"{rep.num_layers} layers ({rep.model_source})" if rep.num_layers is not None else "layers unchecked"
    print(f"{args.config}: ok ({cfg.task}, {cfg.strategy.name}, {layers}, budgets {cfg.clients.budgets})")
    for note in rep.notes:
        print(f"  note: {note}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """``fedhello config show``: every key with its value (from ``--config``/``--set``, else the defaults),
    its default where different (starred) and its description."""
    from fedhello.config import build_config, load_config
    from fedhello.report.keys import render_keys

    cfg = load_config(args.config, args.set) if args.config else build_config({}) if not args.set else None
    if cfg is None:
        raise FedHelloError("--set needs --config FILE here (or no --set: the defaults are shown)")
    print(render_keys(cfg))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``fedhello sweep``: the grid strategies x partitions x seeds, run resumably.

    Runs :func:`fedhello.run.sweep.run_sweep` under one progress bar over every round
    of every cell (rounds already done count as done) and rewrites the sweep's
    results table and plots after each cell. Returns 1 when a cell failed (see
    ``failures.json``) and 130 when interrupted; finished cells are kept, and the same
    command continues the sweep.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fedhello.report.hooks import RunReporter, write_sweep_reports
    from fedhello.run.sweep import parse_seeds, plan, run_sweep, split_list

    console = _console()
    if args.jobs < 1:
        raise FedHelloError(f"--jobs: {args.jobs} is not a number of parallel cells (1 or more)")
    if args.jobs > 1 and not args.dry_run:
        return _sweep_jobs(args, console)
    strategies = split_list(args.strategies, "--strategies")
    partitions = split_list(args.partitions, "--partitions")
    seeds = parse_seeds(args.seeds)
    total = sum(cfg.rounds for _, cfg in plan(args.config, strategies, partitions, seeds, args.set))
    # one bar over every round of every cell; its ETA counts only rounds run in this process
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        disable=args.dry_run,
    )
    bar = progress.add_task("sweep", total=total)

    def on_cell(i, n, cell, rounds_done) -> None:
        progress.update(bar, description=f"cell {i}/{n} {cell.key}")
        if rounds_done:  # finished or checkpointed rounds count as done, not in the pace of the ETA
            progress.reset(bar, total=total, completed=progress.tasks[bar].completed + rounds_done,
                           description=f"cell {i}/{n} {cell.key}")

    def on_round(cell, rec, rounds) -> None:
        console.print("  " + round_line(rec, rounds))
        progress.advance(bar)

    try:
        with progress:
            res = run_sweep(
                args.config, strategies, partitions, seeds, args.out, sets=args.set, target=args.target,
                overwrite=args.overwrite, dry_run=args.dry_run, on_round=on_round, on_cell=on_cell,
                after_cell=lambda out: write_sweep_reports(out, args.target), reporter=RunReporter,
            )
    except KeyboardInterrupt:
        print("interrupted: finished cells and the running cell's last round are kept; "
              "run the same sweep command again to continue", file=sys.stderr)
        return 130
    if args.dry_run:
        if res["failed"]:  # cells `fedhello validate` refuses: the sweep would record them as failures
            print(f"error: {len(res['failed'])} cells would be refused: {', '.join(res['failed'])}", file=sys.stderr)
            return 2
        return 0
    return _sweep_done(res, args.out, console)



def _sweep_done(res: dict, out, console) -> int:
    """The sweep's last line (cells run, skipped, failed) and its exit status: 1 when a cell failed."""
    console.print(
        f"sweep: {len(res['ran'])} cells run, {len(res['skipped'])} already finished, {len(res['failed'])} failed"
        f" -> {out}/results.md"
    )
    if res["failed"]:
        console.print(f"[red]failed cells: {', '.join(res['failed'])} (see {out}/failures.json)[/red]")
        return 1
    return 0

def _sweep_jobs(args: argparse.Namespace, console) -> int:
    """``fedhello sweep --jobs N``: N cells at once, each a ``fedhello run`` process with
    cores // N threads; one live table of every cell's state and ETA on a terminal, one line per
    cell start and end otherwise."""
    import time

    from rich.live import Live
    from rich.table import Table

    from fedhello.report.hooks import write_sweep_reports
    from fedhello.run.sweep import cell_eta, parse_seeds, run_sweep, split_list, sweep_eta, threads_per_job

    def command(cfg_file, cell_dir, overwrite):
        return [sys.executable, "-c", "import sys; from fedhello.cli import main; sys.exit(main(sys.argv[1:]))",
                "run", "--config", str(cfg_file), "--out", str(cell_dir), *(["--overwrite"] if overwrite else [])]

    def clock(sec):
        return "-" if sec is None else time.strftime("%H:%M:%S", time.gmtime(sec))

    def table(status):
        t = Table(title=f"sweep {args.out}: {args.jobs} jobs x {threads_per_job(args.jobs)} threads, "
                        f"ETA {clock(sweep_eta(status, args.jobs))}", title_justify="left")
        for col in ("cell", "state", "rounds", "ETA"):
            t.add_column(col)
        for e in status:
            t.add_row(e["key"], e["state"], f"{e['rounds_done']}/{e['rounds']}", clock(cell_eta(e)))
        return t

    seen: dict[str, str] = {}

    def plain(status):  # not a terminal: one line when a cell changes state
        for e in status:
            if seen.get(e["key"]) != e["state"]:
                seen[e["key"]] = e["state"]
                console.print(f"{e['key']}: {e['state']} ({e['rounds_done']}/{e['rounds']} rounds; "
                              f"sweep ETA {clock(sweep_eta(status, args.jobs))})")

    live = Live(console=console, transient=False, refresh_per_second=1) if console.is_terminal else None
    show = (lambda st: live.update(table(st))) if live is not None else plain
    try:
        if live is not None:
            live.start()
        res = run_sweep(
            args.config, split_list(args.strategies, "--strategies"), split_list(args.partitions, "--partitions"),
            parse_seeds(args.seeds), args.out, sets=args.set, target=args.target, overwrite=args.overwrite,
            after_cell=lambda out: write_sweep_reports(out, args.target), jobs=args.jobs, cell_command=command,
            on_status=show,
        )
    except KeyboardInterrupt:
        print("interrupted: finished cells and each running cell's last round are kept; "
              "run the same sweep command again to continue", file=sys.stderr)
        return 130
    finally:
        if live is not None:
            live.stop()
    return _sweep_done(res, args.out, console)


def cmd_report(args: argparse.Namespace) -> int:
    """``fedhello report``: regenerate a run's or a sweep's reports.

    See :func:`fedhello.report.report`; prints the number of plots and the other files.
    """
    from fedhello.report import report

    files = report(args.dir, adapter=args.adapter)
    pngs = [f for f in files if f.suffix == ".png"]
    print(f"{args.dir}: {len(pngs)} plots" + "".join(f"\n  {f}" for f in files if f.suffix != ".png"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``fedhello predict``: score inputs with a finished run's exported adapter, any task.

    Prints one tab-separated line per input: label, probability, text (and its
    ``--pair``); multiple choice: option index (from 0), option, probability, text
    (and question); images: label, probability, file.
    """
    from fedhello.report.export import predict
    from fedhello.run.experiment import pick_device

    texts, pairs = args.text or [], args.pair or None
    res = predict(args.run, texts, pick_device(args.device, "--device"), pairs=pairs, choices=args.choice or None,
                  images=args.image or None)
    for i, (k, name, prob, _) in enumerate(res):
        if args.image:
            print(f"{name}\t{prob:.3f}\t{args.image[i]}")
            continue
        head = f"{k}\t{name}" if args.choice else name
        print(f"{head}\t{prob:.3f}\t{texts[i]}" + (f"\t{pairs[i]}" if pairs else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``fedhello bench``: run the benchmark suite (:func:`fedhello.bench.run.run_suite`).

    ``--only`` is checked before torch is loaded; ``HF_HUB_OFFLINE`` defaults to 1
    (the default model ships with the package). Writes ``bench.json`` and
    ``bench.txt`` into ``--out`` and prints the table.
    """
    parts = parse_parts(args.only)  # before loading torch: a typo fails at once
    # the suite's default model ships with the package; a hub --model needs HF_HUB_OFFLINE=0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fedhello.bench.run import run_suite, write_results

    s = Settings(model=args.model, data=args.data, size=args.size or ("quick" if args.quick else "full"),
                 device=args.device, bf16=args.bf16, threads=args.threads, seed=args.seed)
    result = run_suite(s, parts, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(write_results(result, args.out))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``fedhello profile``: measured cost of layer sets (:func:`fedhello.run.profile.run_profile`)."""
    from fedhello.config import load_config
    from fedhello.run.profile import run_profile

    cfg = load_config(args.config, args.set)
    print(run_profile(cfg, args.out, reps=args.reps, seq_len=args.seq_len,
                      log=lambda m: print(m, file=sys.stderr, flush=True)))
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    """``fedhello bench-report``: print a bench.json's figures as a Markdown table."""
    from fedhello.bench.report import load_result, markdown

    print(markdown(load_result(args.result), Path(args.result).as_posix()))
    return 0


def add_allocate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``allocate`` (:mod:`fedhello.allocation.preview`): options with a fixed set of
    values list them, taken from the config schema."""
    from fedhello.allocation import available_strategies
    p = subparsers.add_parser(
        "allocate",
        help="preview which layers each client trains (no model, no data)",
        description="Preview an allocation strategy: groups, sampled clients and their layers per round, "
        "and the collective distribution over all rounds. No model or data is loaded.",
    )
    # checked by the strategy registry, which suggests the closest name
    p.add_argument("--strategy", required=True, metavar="NAME", help=f"one of {', '.join(available_strategies())}")
    p.add_argument("--layers", type=int, default=12, help="number of LoRA layers L (default 12)")
    p.add_argument("--budgets", default="6,9,12", help="layers per resource group, e.g. 6,9,12")
    p.add_argument("--fractions", default=None, help="client share per group, e.g. 1/3,1/3,1/3 (default equal)")
    p.add_argument("--clients", type=int, default=100, help="number of clients N (default 100)")
    p.add_argument("--per-round", type=int, default=10, help="clients sampled per round K (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="rounds to preview (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", default=None, help="fixed per-layer Fisher scores s0,s1,... for FIM strategies")
    p.add_argument("--lora-r", type=int, default=16, help="global LoRA rank lora.r (rank strategies; default 16)")
    _add_strategy_flags(p)
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="profile.json of 'fedhello profile': adds each client's predicted cost")
    p.add_argument("--limits", default=None, metavar="YAML",
                   help="declared limits per group as clients.limits takes them, e.g. "
                   "'[{memory_mb: 60}, {memory_mb: 80}, {}]' (needs --profile)")
    p.add_argument("--steps", type=int, default=1, help="local optimizer steps per round that time_s limits count (default 1)")
    p.add_argument("--json", action="store_true", help="print the allocations as JSON")
    p.add_argument("--show-rounds", action="store_true", help="also list every round's clients and layers")
    p.set_defaults(func=run_allocate)
    return p


def _strategy_flags() -> list[tuple[str, str, object]]:
    """(flag, key, kind) per option of the config's ``strategy`` section, built from the options
    classes the strategies register (:mod:`fedhello.strategy_options`):
    ``--fim-every`` sets ``strategy.fim_every``. kind: the Literal's values (a list), int, float,
    or ``list`` for a list of integers given as ``8,12,16``."""
    import typing

    from fedhello.strategy_options import strategy_section

    out = []
    for key, field in strategy_section().model_fields.items():
        if key == "name":
            continue  # --strategy
        args = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
        if typing.get_origin(field.annotation) is typing.Literal:
            kind: object = list(typing.get_args(field.annotation))
        elif args[0] in (int, float):
            kind = args[0]
        elif typing.get_origin(args[0]) is list and typing.get_args(args[0]) == (int,):
            kind = list
        else:  # pragma: no cover - a new option type needs a parser here
            raise TypeError(f"strategy.{key}: no command-line form for {field.annotation}")
        out.append(("--" + key.replace("_", "-"), key, kind))
    return out


def _add_strategy_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ``strategy`` option (:func:`_strategy_flags`); unset, the config's default."""
    from fedhello.strategy_options import strategy_section

    for flag, key, kind in _strategy_flags():
        field = strategy_section().model_fields[key]
        kw: dict[str, object] = {"default": None, "dest": f"strategy_{key}"}
        if isinstance(kind, list):
            kw["choices"] = kind
        elif kind is list:
            kw["metavar"] = "N,N,..."
        else:
            kw["type"], kw["metavar"] = kind, "N" if kind is int else "X"
        desc = (field.description or "").replace("%", "%%")
        p.add_argument(flag, help=f"strategy.{key}: {desc} (default {field.default})", **kw)


def _strategy_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``strategy`` options given on the command line, by config key."""
    from fedhello.config import parse_ints

    out = {}
    for flag, key, kind in _strategy_flags():
        value = getattr(args, f"strategy_{key}")
        if value is not None:
            out[key] = parse_ints(flag, value) if kind is list else value
    return out


def _allocate_limits(args: argparse.Namespace) -> dict:
    """``costs``, ``limits`` and ``steps`` of the preview from --profile, --limits and --steps."""
    from fedhello.allocation.resources import LayerCosts, Limits
    from fedhello.config import parse_limits
    from fedhello.errors import ConfigError

    if args.steps < 1:
        raise ConfigError("--steps must be at least 1")
    out: dict = {"steps": args.steps}
    if args.profile is not None:
        out["costs"] = LayerCosts.load(args.profile)
    if args.limits is not None:
        out["limits"] = [Limits.from_config(g) for g in parse_limits(args.limits, key="--limits")]
    return out


def run_allocate(args: argparse.Namespace) -> int:
    """``fedhello allocate``: preview a strategy's layer allocations (no model, no data).

    Runs :func:`fedhello.allocation.preview.preview` with the command's options and
    prints the result as JSON (``--json``) or as the collective distribution over
    all rounds, preceded by every round's clients with ``--show-rounds``.
    """
    import json

    from fedhello.allocation.preview import preview, render_distribution, render_rounds
    from fedhello.config import parse_ints, parse_numbers

    options = _strategy_options(args)
    result = preview(
        strategy=args.strategy,
        pattern=options.pop("pattern", None),
        layers=args.layers,
        budgets=parse_ints("--budgets", args.budgets),
        fractions=parse_numbers("--fractions", args.fractions, allow_fraction=True) if args.fractions else None,
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        seed=args.seed,
        scores=parse_numbers("--scores", args.scores) if args.scores else None,
        lora_r=args.lora_r,
        **_allocate_limits(args),
        **options,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.show_rounds:
            print(render_rounds(result))
            print()
        print(render_distribution(result))
    return 0


def _add_run_commands(sub) -> None:
    """config, run, demo, validate, sweep."""
    c = sub.add_parser("config", help="show every config key with its value, default and description")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="every config key: value (of --config, else the default), default, description")
    cs.add_argument("--config", default=None, help="experiment config (YAML); without it the defaults are shown")
    cs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    cs.set_defaults(func=cmd_config_show)

    r = sub.add_parser("run", help="run one federated experiment from a YAML config")
    r.add_argument("--config", help="experiment config (YAML)")
    r.add_argument("--out", help="run directory")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bars (they are shown only on a terminal anyway)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="offline demo: a short non-IID federated run of several strategies")
    d.add_argument("--out", default="runs/demo", help="where the demo's run directories go (default runs/demo)")
    d.add_argument("--strategies", default=None, help="comma-separated strategies (default: the demo's set)")
    d.add_argument("--rounds", type=int, default=None, help="rounds per strategy")
    d.add_argument("--quiet", action="store_true", help="no progress bars (they are shown only on a terminal anyway)")
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("validate", help="check a config (and local data) without loading weights")
    v.add_argument("--config", required=True)
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=cmd_validate)

    sw = sub.add_parser("sweep", help="run a grid of strategies x partitions x seeds (resumable) and tabulate it")
    sw.add_argument("--config", required=True, help="base experiment config (YAML)")
    sw.add_argument("--strategies", required=True, help="comma-separated strategy names")
    sw.add_argument("--partitions", default="iid", help="comma-separated: iid, pat-K (K classes per client), "
                    "dir-A (Dirichlet alpha A); default iid")
    sw.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sw.add_argument("--out", required=True, help="sweep directory (cells go to OUT/<partition>/<strategy>/seed<S>)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every cell")
    sw.add_argument("--target", type=float, default=None, help="target test accuracy (fraction) for rounds-to-target; "
                    "default: 90%% of the best final mean accuracy in each partition")
    sw.add_argument("--overwrite", action="store_true", help="replace cells that hold a run of another config")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    sw.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N cells at once as separate processes, each with cores // N threads (default 1)")
    sw.set_defaults(func=cmd_sweep)


def _add_result_commands(sub) -> None:
    """report, predict."""
    rp = sub.add_parser("report", help="regenerate plots, TensorBoard scalars (and a sweep's results) from a directory")
    rp.add_argument("dir", metavar="RUN_OR_SWEEP_DIR")
    rp.add_argument("--adapter", action="store_true", help="also re-export the PEFT adapter from checkpoint.pt")
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("predict", help="classify texts, text pairs, multiple-choice questions or images with a "
                        "finished run's exported adapter")
    pr.add_argument("--run", required=True, metavar="DIR", help="run directory (with adapter/)")
    pr.add_argument("--text", action="append", default=[],
                    help="a text to classify; multiple choice: a passage (repeatable)")
    pr.add_argument("--pair", action="append", default=[],
                    help="text-pair adapters: the second text of each --text; multiple choice: its question "
                    "(optional); in the same order (repeatable)")
    pr.add_argument("--choice", action="append", default=[],
                    help="multiple-choice adapters: an option every --text is asked (at least 2; repeatable)")
    pr.add_argument("--image", action="append", default=[], metavar="FILE",
                    help="image-classification adapters: an image file (PNG, JPEG, ...) to classify (repeatable)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    pr.set_defaults(func=cmd_predict)


def _add_measure_commands(sub) -> None:
    """bench, profile, bench-report."""
    b = sub.add_parser("bench", help="the benchmark suite (BENCHMARKS.md): engine overhead, freezing, Fisher, "
                       "length grouping, scale", description="Run the benchmark suite; writes OUT/bench.json and "
                       "OUT/bench.txt (the table, also printed). Without --data the built-in demo data is used.")
    b.add_argument("--out", required=True, help="output folder (bench.json, bench.txt)")
    b.add_argument("--quick", action="store_true", help="reduced sizes: the whole suite in minutes")
    b.add_argument("--size", choices=sorted(SIZES), help="explicit size (overrides --quick)")
    b.add_argument("--data", help="folder with train.csv and test.csv (Banking77 layout); default: demo data")
    b.add_argument("--model", default="minilm", help="backbone (default: minilm, offline)")
    b.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    b.add_argument("--bf16", action="store_true", help="bfloat16 autocast for training and scoring")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--only", help=f"comma-separated subset of {','.join(PARTS)}")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_bench)

    pf = sub.add_parser("profile", help="measure the training memory and step time of LoRA layer sets on the "
                        "configured device, fit the per-layer cost model, write DIR/profile.json")
    pf.add_argument("--config", required=True, metavar="FILE")
    pf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pf.add_argument("--out", required=True, metavar="DIR")
    pf.add_argument("--reps", type=int, default=2, help="timed steps per layer set (default 2)")
    pf.add_argument("--seq-len", type=int, default=None,
                    help="tokens per sample of the profiled batch (default: the longest the data holds)")
    pf.set_defaults(func=cmd_profile)

    br = sub.add_parser("bench-report", help="a bench.json's figures as a Markdown table (BENCHMARKS.md's tables)")
    br.add_argument("result", metavar="RESULT.json", help="bench.json written by fedhello bench")
    br.set_defaults(func=cmd_bench_report)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedhello`` argument parser; each subcommand sets ``func`` to its handler."""
    p = argparse.ArgumentParser(prog="fedhello", description="Federated LoRA fine-tuning with heterogeneous LoRA allocation")
    from fedhello import __version__

    p.add_argument("--version", action="version", version=f"fedhello {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _add_run_commands(sub)
    _add_result_commands(sub)
    _add_measure_commands(sub)
    from fedhello.flower.deploy import add_deploy_parser

    add_deploy_parser(sub)

    add_allocate_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedhello`` command; returns the exit status.

    Parses ``argv`` (default ``sys.argv[1:]``), sends the library's log to the console
    for this command only and runs the subcommand. A :class:`~fedhello.errors.FedHelloError`,
    or a file that cannot be written (no space, read-only, no permission), prints one
    ``error: ...`` line and gives 2; an interrupt gives 130; a closed stdout pipe ends quietly with 141.
    """
    _quiet_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = setup_logging(make_console())  # the library's diagnostics, for this command only
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe is answered below
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except FedHelloError as err:
        msg = " ".join(str(err).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:
        # a file that cannot be written (read-only, full disk, no permission) outside the
        # run directory's own writes, which already say so as a FedHelloError
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: cannot write {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"run": "continue with --resume",
                "deploy-local": f"continue with deploy-local --resume {getattr(args, 'out', None) or 'DIR'}"}
        how = hint.get(getattr(args, "command", None) or "", "")
        print(f"interrupted: the last finished round is checkpointed{'; ' + how if how else ''}", file=sys.stderr)
        return 130
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)


def _closed_pipe() -> int:
    """The reader of stdout went away (``fedhello config show | head``): stop quietly, as a
    command killed by SIGPIPE does (exit 141), and send stdout to nowhere so that
    Python's own flush at exit does not print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor behind stdout (e.g. captured)
        pass
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
