"""The cheap research loop: phase timings, evaluation of the test set only where it is
reported (eval.test: selected), and the same final results as a full evaluation."""

from __future__ import annotations

import json

import pytest

from fedhello.config import build_config
from fedhello.errors import FedHelloError
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir
from helpers import merged, small_raw

PHASES = {"head_init", "train", "aggregate", "evaluate", "checkpoint"}


def raw(model_path, **kw) -> dict:
    out = small_raw(model_path, seed=1, rounds=5, device="cpu", model={"max_length": 24},
                    data={"demo_samples": 200, "val_fraction": 0.2}, partition={"name": "iid"},
                    strategy={"fim_samples": 10}, eval={"every": 1, "batch_size": 16})
    return merged(out, kw)


@pytest.fixture(scope="module")
def full_run(tiny_bert, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("full") / "run"
    summary = run_experiment(build_config(raw(tiny_bert)), out)
    return summary, RunDir(out).read_metrics()


def test_phase_times_in_every_record_and_the_summary(full_run):
    summary, recs = full_run
    assert set(summary["phase_time_s"]) == PHASES
    for r in recs:
        assert set(r["phase_time_s"]) == PHASES
        assert all(v >= 0 for v in r["phase_time_s"].values())
        assert r["phase_time_s"]["train"] > 0 and r["phase_time_s"]["evaluate"] > 0
        assert r["phase_time_s"]["checkpoint"] > 0  # metrics.jsonl is written after the checkpoint
        # the loop's phases are the round's time (the checkpoint comes after it)
        inner = sum(v for k, v in r["phase_time_s"].items() if k not in ("head_init", "checkpoint"))
        assert inner == pytest.approx(r["round_time_s"], rel=1e-6)
    # head.init class-means (the default): the statistics round is round 0's head_init
    assert recs[0]["phase_time_s"]["head_init"] == recs[0]["head_init"]["time_s"] > 0
    assert all(r["phase_time_s"]["head_init"] == 0 for r in recs[1:])
    for k in PHASES:
        assert summary["phase_time_s"][k] == pytest.approx(sum(r["phase_time_s"][k] for r in recs))


def test_test_set_only_where_reported_gives_the_same_results(tiny_bert, tmp_path, full_run, one_torch_thread):
    summary, recs = full_run
    best = summary["best_val_round"]
    # the case that needs the kept state: the best validation round is not the last one
    assert best is not None and best < len(recs) - 1
    out = tmp_path / "sel"
    sel = run_experiment(build_config(raw(tiny_bert, eval={"test": "selected"})), out)
    srecs = RunDir(out).read_metrics()
    keys = [k for k in summary if k.startswith(("final_", "test_", "val_", "best_"))]
    assert keys and all(sel[k] == summary[k] for k in keys)
    for r, s in zip(recs, srecs):
        assert s["val_accuracy"] == r["val_accuracy"] and s["train_loss"] == r["train_loss"]
        if s["round"] in (best, len(recs) - 1):
            assert s["test_accuracy"] == r["test_accuracy"] and s["test_macro_f1"] == r["test_macro_f1"]
        else:
            assert s["test_accuracy"] is None and "test_macro_f1" not in s


def test_selected_test_survives_a_resume(tiny_bert, tmp_path, full_run, one_torch_thread):
    summary, _ = full_run
    cfg = build_config(raw(tiny_bert, eval={"test": "selected"}))
    out = tmp_path / "res"
    part = run_experiment(cfg, out, stop_after=summary["best_val_round"] + 1)
    assert part.get("incomplete")
    resumed = run_experiment(cfg, out)
    assert resumed["test_accuracy_at_best_val"] == summary["test_accuracy_at_best_val"]
    assert resumed["final_test_accuracy"] == summary["final_test_accuracy"]


def test_a_checkpoint_without_the_kept_state_is_refused(tiny_bert, tmp_path, one_torch_thread):
    import torch

    cfg = build_config(raw(tiny_bert, rounds=3, eval={"test": "selected"}))
    out = tmp_path / "bad"
    run_experiment(cfg, out, stop_after=1)
    ck = out / "checkpoint.pt"
    data = torch.load(ck, weights_only=True)
    assert data["best"]["round"] == 0
    del data["best"]
    torch.save(data, ck)
    with pytest.raises(FedHelloError, match="checkpoint key 'best'"):
        run_experiment(cfg, out)


def sweep_config(tiny_bert, path):
    import yaml

    path.write_text(yaml.safe_dump(raw(tiny_bert, rounds=2, data={"demo_samples": 120})))
    return path


def test_sweep_jobs_runs_cells_in_parallel_processes_and_resumes(tiny_bert, tmp_path, one_torch_thread):
    from fedhello.cli import main
    from fedhello.config import load_config
    from fedhello.run.sweep import Cell, partition_overrides

    cfg_file = sweep_config(tiny_bert, tmp_path / "base.yaml")
    out = tmp_path / "sw"
    # a cell killed after its first round: --jobs continues it from its checkpoint
    part = Cell("fedra", "iid", 1)
    cfg = load_config(cfg_file, [*partition_overrides("iid"), "strategy.name=fedra", "seed=1"])
    run_experiment(cfg, part.dir(out), stop_after=1)
    first = RunDir(part.dir(out)).read_metrics()[0]
    rc = main(["sweep", "--config", str(cfg_file), "--strategies", "fedra", "--partitions", "iid",
               "--seeds", "0,1", "--out", str(out), "--jobs", "2"])
    assert rc == 0
    for seed in (0, 1):
        d = Cell("fedra", "iid", seed).dir(out)
        assert json.loads((d / "summary.json").read_text())["rounds"] == 2
        assert (out / ".jobs" / f"iid-fedra-seed{seed}.log").is_file()
    assert RunDir(part.dir(out)).read_metrics()[0] == first  # continued, not restarted
    assert json.loads((out / "failures.json").read_text()) == {}
    table = (out / "results.md").read_text()
    assert "Where a cell's time goes" in table and "head_init" in table
    # run again: every cell is finished, nothing runs
    rc = main(["sweep", "--config", str(cfg_file), "--strategies", "fedra", "--partitions", "iid",
               "--seeds", "0,1", "--out", str(out), "--jobs", "2"])
    assert rc == 0


def test_parallel_cells_split_the_threads_and_record_failures(tiny_bert, tmp_path, monkeypatch):
    import sys

    from fedhello.config import load_config
    from fedhello.run import sweep as sw

    monkeypatch.setattr(sw.os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    assert sw.threads_per_job(2) == 3 and sw.threads_per_job(3) == 2 and sw.threads_per_job(8) == 1
    cfg_file = sweep_config(tiny_bert, tmp_path / "base.yaml")
    cells = [(sw.Cell("fedra", "iid", s), load_config(cfg_file, [f"seed={s}"])) for s in (0, 1, 2)]
    done = {"ran": [], "skipped": [], "failed": []}
    failures: dict = {}
    seen: list[list[str]] = []

    def command(cfg_file, cell_dir, overwrite):
        code = "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); print('boom'); sys.exit(3)"
        return [sys.executable, "-c", code]

    sw.run_parallel(cells, tmp_path / "out", 2, command, False, failures, done,
                    on_status=lambda st: seen.append([e["state"] for e in st]), poll_s=0.05)
    assert sorted(done["failed"]) == [c.key for c, _ in cells] and not done["ran"]
    assert all(f["error"] == "exit status 3: boom" for f in failures.values())
    log = (tmp_path / "out" / ".jobs" / "iid-fedra-seed0.log").read_text()
    assert "threads 3" in log
    assert max(st.count("running") for st in seen) == 2  # never more than --jobs at once
    assert json.loads((tmp_path / "out" / "failures.json").read_text()).keys() == failures.keys()


def test_sweep_eta_from_the_pace_of_this_sweep():
    from fedhello.run.sweep import cell_eta, sweep_eta

    now = 1000.0
    status = [
        {"state": "running", "rounds": 10, "rounds_done": 4, "rounds_at_start": 2, "started": 900.0, "finished": None},
        {"state": "done", "rounds": 10, "rounds_done": 10, "rounds_at_start": 0, "started": 500.0, "finished": 800.0},
        {"state": "waiting", "rounds": 10, "rounds_done": 0, "started": None, "finished": None},
    ]
    assert cell_eta(status[0], now) == pytest.approx(50.0 * 6)  # 2 rounds in 100 s, 6 left
    # 400 s for 12 rounds; 16 rounds left over 2 jobs
    assert sweep_eta(status, 2, now) == pytest.approx(400 / 12 * 16 / 2)
    assert sweep_eta(status[2:], 2, now) is None and cell_eta(status[2], now) is None


def test_bf16_autocast_is_one_switch_off_by_default(tiny_bert, one_torch_thread):
    import numpy as np
    import torch

    from fedhello.federation.client import FitTask, evaluate
    from fedhello.run.experiment import prepare

    assert build_config(raw(tiny_bert)).model.bf16 is False
    exp = prepare(build_config(raw(tiny_bert, model={"bf16": True})))
    batch = {k: v for k, v in exp.forward_batches(exp.global_state(), exp.test, np.arange(4)).__next__().items()
             if k != "labels"}
    seen = []
    h = exp.model.base_model.model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda m, a, o: seen.append(o.dtype))
    out = exp.model(**batch)
    h.remove()
    assert seen == [torch.bfloat16] and out.logits.dtype == torch.float32  # bf16 inside, float32 loss
    ev = evaluate(exp.model, exp.test, np.arange(len(exp.test)), 16, exp.device)
    assert 0 <= ev["accuracy"] <= 1 and np.isfinite(ev["loss"])
    up = exp.trainer().fit(FitTask(0, 0, [0, 1], 0.01, 0), exp.global_state(), exp.partitions[0])
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in up.tensors.values())
