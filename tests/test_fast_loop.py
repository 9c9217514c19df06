"""The cheap research loop: phase timings, evaluation of the test set only where it is
reported (eval.test: selected), and the same final results as a full evaluation."""

from __future__ import annotations

import json

import pytest

from fedhello.config import build_config
from fedhello.errors import FedHelloError
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir

PHASES = {"head_init", "train", "aggregate", "evaluate", "checkpoint"}


def raw(model_path, **kw) -> dict:
    out = {
        "seed": 1, "rounds": 5, "device": "cpu",
        "model": {"name": str(model_path), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 200, "val_fraction": 0.2},
        "partition": {"name": "iid"},
        "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 3]},
        "strategy": {"name": "fedra", "fim_samples": 10},
        "train": {"batch_size": 8, "lr": 0.05, "max_steps": 2},
        "eval": {"every": 1, "batch_size": 16},
    }
    for k, v in kw.items():
        out[k] = dict(out.get(k, {}), **v) if isinstance(v, dict) else v
    return out


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
