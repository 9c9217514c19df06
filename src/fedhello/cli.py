"""The ``fedhello`` command.

Errors caused by input (config, data, run directory) print one line,
``error: ...``, naming the key or file, and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from fedhello.errors import FedHelloError


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
        console.print(
            f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%  "
            f"(test at best val round {summary['best_val_round']}: "
            f"{100 * (summary['test_accuracy_at_best_val'] or 0):.2f}%)  run directory: {out}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedhello.demo import run_demo

    return run_demo(args.out, strategies=args.strategies, rounds=args.rounds)


def cmd_validate(args: argparse.Namespace) -> int:
    from fedhello.config import load_config
    from fedhello.federation.simulation import check_budgets

    cfg = load_config(args.config, args.set)
    n_layers = check_budgets(cfg)
    print(f"{args.config}: ok ({cfg.strategy.name}, {n_layers} layers, budgets {cfg.clients.budgets})")
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

    v = sub.add_parser("validate", help="check a config without loading weights or data")
    v.add_argument("--config", required=True)
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=cmd_validate)

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
    except KeyboardInterrupt:
        print("interrupted: the last finished round is checkpointed; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
