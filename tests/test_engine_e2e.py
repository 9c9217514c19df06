"""End-to-end runs of the in-process engine on the real MiniLM backbone (small data)."""

import json

import pytest
import torch

from fedhello.config import build_config
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir

BASE = {
    "seed": 3,
    "rounds": 2,
    "model": {"name": "minilm", "max_length": 32},
    "data": {"format": "demo", "demo_samples": 160, "val_fraction": 0.15},
    "partition": {"name": "pathological", "classes_per_client": 2},
    "clients": {"num_clients": 6, "per_round": 3, "fractions": [0.5, 0.5], "budgets": [2, 6]},
    "strategy": {"name": "fedra"},
    "train": {"batch_size": 8, "lr": 0.003},
    "eval": {"every": 1, "batch_size": 64},
    # the contract below counts the head in every upload: the federated head protocol
    "head": {"train": "federated", "init": "random"},
}


def test_two_round_run_matches_the_contract(tmp_path):
    cfg = build_config(BASE)
    out = tmp_path / "run"
    summary = run_experiment(cfg, out)
    rd = RunDir(out)
    assert build_config(rd.read_config_dict()) == cfg
    recs = rd.read_metrics()
    assert [r["round"] for r in recs] == [0, 1]
    groups = json.loads((out / "clients.json").read_text())["groups"]
    part = json.loads((out / "partition.json").read_text())
    for r in recs:
        for key in ("train_loss", "val_accuracy", "test_accuracy", "round_time_s", "clients", "failed_clients"):
            assert key in r
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1
        assert len(r["clients"]) == 3
        for c in r["clients"]:
            assert set(c) >= {"id", "group", "layers", "num_samples", "upload_bytes", "train_time_s"}
            budget = cfg.clients.budgets[c["group"]]
            assert c["group"] == groups[c["id"]]
            assert len(c["layers"]) == budget == len(set(c["layers"]))
            assert c["num_samples"] == part["clients"][c["id"]]["num_samples"]
            # 4 LoRA tensors (q/v, A/B) of 16x384 per layer + head (classes x 384 + classes), float32
            n_cls = len(json.loads((out / "labels.json").read_text()))
            assert c["upload_bytes"] == 4 * (budget * 4 * 16 * 384 + n_cls * 384 + n_cls)
    for key in ("strategy", "seed", "rounds", "final_test_accuracy", "val_accuracy_at_best_val",
                "test_accuracy_at_best_val", "total_time_s", "total_upload_bytes"):
        assert key in summary
    assert summary["rounds"] == 2 and summary["strategy"] == "fedra"
    assert summary["final_test_accuracy"] == recs[-1]["test_accuracy"]
    assert summary["total_upload_bytes"] == sum(c["upload_bytes"] for r in recs for c in r["clients"])
    assert json.loads((out / "summary.json").read_text())["final_test_accuracy"] == summary["final_test_accuracy"]
    # partitions are saved: disjoint index sets
    idx = [i for c in part["clients"] for i in c["indices"]]
    assert len(idx) == len(set(idx)) == part["num_train"]
    # no temporary files left behind
    assert not list(out.glob(".*.tmp"))


def test_resume_equals_uninterrupted(tmp_path):
    # the default head protocol: the class-means statistics round happens once, before round 0
    raw = dict(BASE, rounds=3, strategy={"name": "fedra"}, head={"train": "frozen", "init": "class-means"})
    cfg = build_config(raw)
    full = run_experiment(cfg, tmp_path / "full")
    part = run_experiment(cfg, tmp_path / "part", stop_after=1)
    assert part.get("incomplete") and not (tmp_path / "part" / "summary.json").exists()
    assert len(RunDir(tmp_path / "part").read_metrics()) == 1
    resumed = run_experiment(cfg, tmp_path / "part")  # same config, same directory: continues
    a, b = RunDir(tmp_path / "full").read_metrics(), RunDir(tmp_path / "part").read_metrics()
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("round_time_s", "phase_time_s")} for r in rs]  # noqa: E731
    for r in a + b:
        for c in r["clients"]:
            c.pop("train_time_s")
            c.pop("train_cpu_time_s")  # a timing too (the memory count is exact: compared)
        r.get("head_init", {}).pop("time_s", None)
    assert "head_init" in a[0] and "head_init" in b[0]
    assert strip(a) == strip(b)
    assert resumed["final_test_accuracy"] == full["final_test_accuracy"]
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["global_state"]
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["global_state"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_run_without_validation_split(tmp_path, tiny_bert):
    """val_fraction 0: no validation split; the run still completes and reports the final test accuracy."""
    raw = dict(BASE, rounds=1, model={"name": str(tiny_bert), "max_length": 24},
               data={"format": "demo", "demo_samples": 120, "val_fraction": 0.0},
               clients={"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 3]})
    summary = run_experiment(build_config(raw), tmp_path / "run")
    recs = RunDir(tmp_path / "run").read_metrics()
    assert len(recs) == 1 and 0 <= recs[0]["test_accuracy"] <= 1
    assert summary["final_test_accuracy"] == recs[0]["test_accuracy"]
    assert json.loads((tmp_path / "run" / "partition.json").read_text())["num_val"] == 0
