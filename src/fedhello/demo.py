"""``fedhello demo``: a short offline federated fine-tuning of MiniLM, several strategies."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import yaml

from fedhello.config import build_config

DEFAULT_STRATEGIES = ["fedhello", "fedra", "fedit"]


def demo_config(strategy: str, rounds: int | None = None):
    """The demo's config (the packaged ``demo.yaml``) for ``strategy``.

    With ``rounds``, the run has that many rounds instead, and a warm-up that
    would not end before the last round is cut to ``rounds // 2``.
    """
    raw = yaml.safe_load(resources.files("fedhello.resources").joinpath("demo.yaml").read_text())
    raw.setdefault("strategy", {})["name"] = strategy
    if rounds is not None:
        raw["rounds"] = rounds
        # fedhello's warm-up must end before the last round (config check): shorten it with the run
        strat = raw["strategy"]
        if strat.get("warmup_rounds", 0) >= rounds:
            strat["warmup_rounds"] = rounds // 2
    return build_config(raw)


def run_demo(out: str | Path = "runs/demo", strategies: str | None = None, rounds: int | None = None) -> int:
    """Run the offline demo: one short non-IID run per strategy, then a comparison table.

    ``strategies`` is a comma-separated list (default: those of
    :data:`DEFAULT_STRATEGIES` that are registered); each run goes to
    ``out/<strategy>``, replacing whatever is there. ``rounds`` overrides the demo's
    round count. Prints each strategy's final test accuracy, test accuracy at the
    best validation round, upload and time; returns the exit status (0).
    """
    from rich.console import Console
    from rich.table import Table

    from fedhello.allocation import available_strategies
    from fedhello.console import make_console, round_line
    from fedhello.report.hooks import RunReporter
    from fedhello.run.experiment import run_experiment

    console = make_console()
    names = [s.strip() for s in strategies.split(",")] if strategies else [
        s for s in DEFAULT_STRATEGIES if s in available_strategies()
    ]
    out = Path(out)
    rows = []
    t_all = time.perf_counter()
    for name in names:
        cfg = demo_config(name, rounds)
        run_dir = out / name
        console.print(
            f"[bold]{name}[/bold]: {cfg.clients.num_clients} clients ({cfg.clients.per_round} per round), "
            f"budgets {cfg.clients.budgets} of 6 layers, {cfg.partition.name} non-IID, {cfg.rounds} rounds"
        )
        t0 = time.perf_counter()
        summary = run_experiment(
            cfg, run_dir, overwrite=True, on_round=lambda rec, c=cfg: console.print("  " + round_line(rec, c.rounds)),
            reporter=RunReporter,
        )
        rows.append((name, summary, time.perf_counter() - t0, run_dir))
    table = Table(title="fedhello demo (test accuracy of the final global model)")
    for col in ("strategy", "final acc", "acc @ best val", "upload MB", "time s"):
        table.add_column(col)
    for name, s, secs, _ in rows:
        table.add_row(
            name,
            f"{100 * s['final_test_accuracy']:.1f}%",
            f"{100 * s['test_accuracy_at_best_val']:.1f}%",
            f"{s['total_upload_bytes'] / 1e6:.2f}",
            f"{secs:.0f}",
        )
    out_console = Console(highlight=False, soft_wrap=True)
    out_console.print(table)
    out_console.print("acc @ best val: test accuracy of the round with the best validation accuracy")
    for name, _, _, run_dir in rows:
        out_console.print(f"run directory ({name}): {run_dir}")
    out_console.print(f"plots: {out}/<strategy>/plots/*.png; curves: tensorboard --logdir {out}")
    console.print(f"demo finished in {time.perf_counter() - t_all:.0f}s")
    return 0
