"""Progress of long steps reaches the hook passed down from the caller; the console's bars stay quiet
off a terminal or with --quiet; the demo's "before fine-tuning" figure and comparison plot."""

import io
import json

import pytest
from rich.console import Console

from fedhello.config import build_config
from fedhello.console import RichProgress
from fedhello.federation.progress import CLIENTS, EVALUATION, ROUNDS, STATISTICS
from fedhello.run.experiment import run_experiment
from helpers import DROP, merged, small_raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, phase, total, done=0):
        self.events.append(("start", phase, total, done))

    def advance(self, phase, n=1):
        self.events.append(("advance", phase, n))

    def end(self, phase):
        self.events.append(("end", phase))


def tiny_cfg(tiny_bert, **over):
    raw = small_raw(tiny_bert, seed=1, rounds=3, data={"demo_samples": 100}, clients={"num_clients": 5},
                    train={"lr": DROP, "max_steps": 1}, eval={"every": 2}, head={"init": "class-means"})
    return build_config(merged(raw, over, replace=True))


def test_run_reports_every_long_step_to_the_hook(tiny_bert, tmp_path):
    rec = Recorder()
    cfg = tiny_cfg(tiny_bert)
    run_experiment(cfg, tmp_path / "run", progress=rec, stop_after=2)
    ev = rec.events
    # the statistics round: all 5 clients' worth of samples (one pooled pass advances by each
    # batch's share of clients), before the rounds bar starts
    assert ev[0] == ("start", STATISTICS, 5, 0)
    k = next(i for i, e in enumerate(ev) if e == ("end", STATISTICS))
    assert all(e[:2] == ("advance", STATISTICS) and e[2] >= 1 for e in ev[1:k])
    assert sum(e[2] for e in ev[1:k]) == 5
    ev = ev[k + 1:]
    assert ev[0] == ("start", ROUNDS, 3, 0)
    per_round = [("start", CLIENTS, 2, 0), ("advance", CLIENTS, 1), ("advance", CLIENTS, 1), ("end", CLIENTS)]
    # round 0 is not evaluated (eval.every 2), round 1 is
    assert ev[1:6] == per_round + [("advance", ROUNDS, 1)]
    assert ev[6:13] == per_round + [("start", EVALUATION, None, 0), ("end", EVALUATION), ("advance", ROUNDS, 1)]
    assert ev[13:] == [("end", ROUNDS)]
    # resumed: the rounds bar starts with the finished rounds done; no statistics round again
    rec2 = Recorder()
    run_experiment(cfg, tmp_path / "run", progress=rec2)
    assert rec2.events[0] == ("start", ROUNDS, 3, 2) and not [e for e in rec2.events if e[1] == STATISTICS]


def test_console_bars_only_on_a_terminal_and_not_quiet():
    off_terminal = Console(file=io.StringIO())
    assert not RichProgress(off_terminal).enabled
    term = Console(file=io.StringIO(), force_terminal=True)
    assert RichProgress(term).enabled and not RichProgress(term, quiet=True).enabled
    buf = io.StringIO()
    with RichProgress(Console(file=buf), quiet=False) as p:  # not a terminal: every call does nothing
        p.start(ROUNDS, 3)
        p.advance(ROUNDS)
        p.end(ROUNDS)
    assert buf.getvalue() == ""
    with RichProgress(term) as p:
        p.start(ROUNDS, 3, 1)
        p.advance(ROUNDS)
        assert p.bars.tasks[0].completed == 2 and p.bars.tasks[0].total == 3
        p.end(ROUNDS)
        assert not p.bars.tasks


def test_demo_before_finetuning_is_the_model_every_strategy_starts_from(tiny_bert):
    from fedhello.demo import before_finetuning
    from fedhello.federation.server import Server
    from fedhello.federation.simulation import SimulationRunner
    from fedhello.run.experiment import prepare

    cfg = tiny_cfg(tiny_bert)
    exp = prepare(cfg)
    server = Server.for_experiment(exp, SimulationRunner(exp))
    server.initialise_head()
    want = exp.evaluator()(server.state.global_state)["test"]["accuracy"]
    assert before_finetuning(cfg) == pytest.approx(want, abs=1e-9)


def test_compare_plot_of_runs_side_by_side(tmp_path):
    from fedhello.report.plots import compare_runs

    runs = {}
    for name, accs in (("fedit", [0.5, 0.7]), ("fedra", [0.4, 0.6])):
        d = tmp_path / name
        d.mkdir()
        recs = [{"round": t, "test_accuracy": a, "clients": [{"upload_bytes": 1000}]} for t, a in enumerate(accs)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        runs[name] = d
    out = compare_runs(runs, tmp_path / "compare.png", before=0.3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
