"""``fedhello demo``: a short offline federated fine-tuning of MiniLM, several strategies."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import yaml

from fedhello.config import build_config

DEFAULT_STRATEGIES = ["fedhello", "fedra", "fedit"]

# what each compared strategy does, said before the runs
WHAT = {
    "fedhello": "Fed-HeLLo: each client trains as many layers as its budget allows, chosen by a geometric prior "
                "(bottleneck) combined with Fisher-information tiers after the warm-up",
    "fedra": "each client trains as many layers as its budget allows, chosen at random every round",
    "fedit": "every client trains every layer, ignoring the budgets (the homogeneous baseline: "
             "it uploads the most)",
}


def before_finetuning(cfg) -> float:
    """Test accuracy of the global model before any round: the frozen backbone with its untrained LoRA
    and, under ``head.init: class-means``, the head every strategy starts from (set from the class
    statistics of all clients, as the run's statistics round does)."""
    from fedhello.run.experiment import prepare

    exp = prepare(cfg)
    state = exp.global_state()
    if cfg.head.init == "class-means":
        stats = [exp.class_stats(state, p) for p in exp.partitions]
        head = exp.head_from_stats(sum(s[0] for s in stats), sum(s[1] for s in stats), sum(s[2] for s in stats))
        state = {**state, **head}
    return float(exp.evaluator()(state)["test"]["accuracy"])


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


def run_demo(out: str | Path = "runs/demo", strategies: str | None = None, rounds: int | None = None,
             quiet: bool = False) -> int:
    """Run the offline demo: one short non-IID run per strategy, then a comparison table.

    ``strategies`` is a comma-separated list (default: those of
    :data:`DEFAULT_STRATEGIES` that are registered); each run goes to
    ``out/<strategy>``, replacing whatever is there. ``rounds`` overrides the demo's
    round count. Says what it compares, then prints each strategy's final test
    accuracy, test accuracy at the best validation round, upload and time, beside
    a "before fine-tuning" row, and writes ``out/compare.png`` (the strategies side
    by side); progress bars unless ``quiet`` or not on a terminal. Returns 0.
    """
    from rich.console import Console
    from rich.table import Table

    from fedhello.allocation import available_strategies
    from fedhello.console import RichProgress, make_console, round_line
    from fedhello.report.hooks import RunReporter
    from fedhello.report.plots import compare_runs
    from fedhello.run.experiment import run_experiment

    console = make_console()
    names = [s.strip() for s in strategies.split(",")] if strategies else [
        s for s in DEFAULT_STRATEGIES if s in available_strategies()
    ]
    out = Path(out)
    rows = []
    t_all = time.perf_counter()
    console.print("[bold]fedhello demo[/bold]: the same clients, data and budgets under each strategy:")
    for name in names:
        console.print(f"  {name}: {WHAT.get(name, 'see the README strategy table')}")
    for name in names:
        cfg = demo_config(name, rounds)
        run_dir = out / name
        console.print(
            f"[bold]{name}[/bold]: {cfg.clients.num_clients} clients ({cfg.clients.per_round} per round), "
            f"budgets {cfg.clients.budgets} of 6 layers, {cfg.partition.name} non-IID, {cfg.rounds} rounds"
        )
        t0 = time.perf_counter()
        with RichProgress(console, quiet=quiet) as progress:
            summary = run_experiment(
                cfg, run_dir, overwrite=True,
                on_round=lambda rec, c=cfg: console.print("  " + round_line(rec, c.rounds)),
                reporter=RunReporter, progress=progress,
            )
        rows.append((name, summary, time.perf_counter() - t0, run_dir))
    before = before_finetuning(demo_config(names[0], rounds)) if names else None
    plot = compare_runs({name: run_dir for name, _, _, run_dir in rows}, out / "compare.png", before)
    table = Table(title="fedhello demo (test accuracy of the final global model)")
    for col in ("strategy", "final acc", "acc @ best val", "upload MB", "time s"):
        table.add_column(col)
    if before is not None:
        table.add_row("before fine-tuning", f"{100 * before:.1f}%", "-", "-", "-")
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
    out_console.print("acc @ best val: test accuracy of the round with the best validation accuracy; "
                      "before fine-tuning: the starting model of every strategy (untrained LoRA"
                      + (", class-means head)" if rows and demo_config(names[0], rounds).head.init == "class-means" else ")"))
    out_console.print("upload MB: what the clients sent in all (fedit ignores the budgets: every client uploads "
                      "every layer, hence the most)")
    out_console.print(f"strategies side by side: {plot}")
    for name, _, _, run_dir in rows:
        out_console.print(f"run directory ({name}): {run_dir}")
    out_console.print(f"plots: {out}/<strategy>/plots/*.png; curves: tensorboard --logdir {out}")
    console.print(f"demo finished in {time.perf_counter() - t_all:.0f}s")
    return 0
