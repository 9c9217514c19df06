"""The ``fedhello`` command.

Errors caused by input (config, data, run directory) print one line,
``error: ...``, naming the key or file, and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Sequence

from fedhello.errors import FedHelloError


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _quiet_env() -> None:
    # never reach for the model hub unless the user asked for a hub model or dataset
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def round_line(rec: dict, rounds: int) -> str:
    def pct(x):
        return "  -  " if x is None else f"{100 * x:5.1f}"

    return (
        f"round {rec['round'] + 1:>3}/{rounds}  loss {rec['train_loss']:.3f}  "
        f"val {pct(rec['val_accuracy'])}%  test {pct(rec['test_accuracy'])}%  "
        f"{rec['round_time_s']:.1f}s  clients {len(rec['clients'])}"
        + (f"  failed {len(rec['failed_clients'])}" if rec.get("failed_clients") else "")
    )


def cmd_run(args: argparse.Namespace) -> int:
    from fedhello.config import build_config, load_config
    from fedhello.federation.simulation import resume_config, run_experiment

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

    summary = run_experiment(
        cfg,
        out,
        overwrite=args.overwrite,
        on_start=start,
        on_round=lambda rec: console.print(round_line(rec, cfg.rounds)),
        log=lambda msg: console.print(f"[yellow]{msg}[/yellow]"),
    )
    if summary.get("final_test_accuracy") is not None:
        best = summary.get("best_val_round")
        # counted from 1, like the round lines (summary.json keeps the records' 0-based index)
        best = "-" if best is None else best + 1
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
    from fedhello.demo import run_demo

    return run_demo(args.out, strategies=args.strategies, rounds=args.rounds)


def cmd_validate(args: argparse.Namespace) -> int:
    from fedhello.config import load_config
    from fedhello.validate import validate_config

    cfg = load_config(args.config, args.set)
    rep = validate_config(cfg)
    layers = f"{rep.num_layers} layers ({rep.model_source})" if rep.num_layers is not None else "layers unchecked"
    print(f"{args.config}: ok ({cfg.task}, {cfg.strategy.name}, {layers}, budgets {cfg.clients.budgets})")
    for note in rep.notes:
        print(f"  note: {note}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedhello.report.sweep import parse_seeds, run_sweep, split_list

    console = _console()
    strategies = split_list(args.strategies, "--strategies")
    partitions = split_list(args.partitions, "--partitions")
    seeds = parse_seeds(args.seeds)

    def on_round(cell, rec, rounds) -> None:
        console.print("  " + round_line(rec, rounds))

    try:
        res = run_sweep(
            args.config, strategies, partitions, seeds, args.out, sets=args.set, target=args.target,
            overwrite=args.overwrite, dry_run=args.dry_run, print_fn=lambda m: console.print(m, markup=False),
            on_round=on_round,
        )
    except KeyboardInterrupt:
        print("interrupted: finished cells and the running cell's last round are kept; "
              "run the same sweep command again to continue", file=sys.stderr)
        return 130
    if args.dry_run:
        return 0
    console.print(
        f"sweep: {len(res['ran'])} cells run, {len(res['skipped'])} already finished, {len(res['failed'])} failed"
        f" -> {args.out}/results.md"
    )
    if res["failed"]:
        console.print(f"[red]failed cells: {', '.join(res['failed'])} (see {args.out}/failures.json)[/red]")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedhello.report import report

    files = report(args.dir, adapter=args.adapter, print_fn=lambda m: print(m, file=sys.stderr))
    pngs = [f for f in files if f.suffix == ".png"]
    print(f"{args.dir}: {len(pngs)} plots" + "".join(f"\n  {f}" for f in files if f.suffix != ".png"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fedhello.federation.simulation import pick_device
    from fedhello.report.export import predict

    for text, (label, prob, _) in zip(args.text, predict(args.run, args.text, pick_device(args.device, "--device"))):
        print(f"{label}\t{prob:.3f}\t{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedhello", description="Federated LoRA fine-tuning with heterogeneous LoRA allocation")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one federated experiment from a YAML config")
    r.add_argument("--config", help="experiment config (YAML)")
    r.add_argument("--out", help="run directory")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="offline demo: a short non-IID federated run of several strategies")
    d.add_argument("--out", default="runs/demo", help="where the demo's run directories go (default runs/demo)")
    d.add_argument("--strategies", default=None, help="comma-separated strategies (default: the demo's set)")
    d.add_argument("--rounds", type=int, default=None, help="rounds per strategy")
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
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="regenerate plots, TensorBoard scalars (and a sweep's results) from a directory")
    rp.add_argument("dir", metavar="RUN_OR_SWEEP_DIR")
    rp.add_argument("--adapter", action="store_true", help="also re-export the PEFT adapter from checkpoint.pt")
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("predict", help="classify texts with a finished run's exported adapter")
    pr.add_argument("--run", required=True, metavar="DIR", help="run directory (with adapter/)")
    pr.add_argument("--text", action="append", required=True, help="a text to classify (repeatable)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    pr.set_defaults(func=cmd_predict)

    try:
        from fedhello.flower.deploy import add_deploy_parser
    except ImportError:  # pragma: no cover  (flwr not installed)
        pass
    else:
        add_deploy_parser(sub)

    try:
        from fedhello.allocation.preview import add_allocate_parser
    except ImportError:  # pragma: no cover
        pass
    else:
        add_allocate_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
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
        print("interrupted: the last finished round is checkpointed; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
