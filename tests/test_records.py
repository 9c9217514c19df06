"""Typed run records: metric-neutral summary names, and run directories written before them."""

import json
import shutil
from pathlib import Path

import pytest

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.federation.records import read_summary, to_json
from fedhello.federation.server import summarize
from fedhello.report.table import results_rows

OLD_SWEEP = Path(__file__).parent / "data" / "old-sweep"


def rec(t, val_acc, val_f1, test_acc, test_f1):
    return {"round": t, "train_loss": 1.0, "val_accuracy": val_acc, "val_macro_f1": val_f1,
            "test_accuracy": test_acc, "test_macro_f1": test_f1, "round_time_s": 1.0,
            "clients": [{"upload_bytes": 10}], "failed_clients": []}


def test_the_summary_says_which_round_it_reports_under_any_select_metric():
    # round 1 is best by validation accuracy, round 2 by validation macro-F1
    records = [rec(0, 0.5, 0.2, 0.40, 0.10), rec(1, 0.9, 0.3, 0.80, 0.25), rec(2, 0.7, 0.6, 0.65, 0.55)]
    by_f1 = summarize(build_config({"eval": {"select_metric": "macro_f1"}}), records)
    assert by_f1["select_metric"] == "macro_f1" and by_f1["best_val_round"] == 2
    assert by_f1["val_accuracy_at_best_val"] == 0.7 and by_f1["test_accuracy_at_best_val"] == 0.65
    assert by_f1["val_macro_f1_at_best_val"] == 0.6 and by_f1["test_macro_f1_at_best_val"] == 0.55
    by_acc = summarize(build_config({}), records)
    assert by_acc["best_val_round"] == 1 and by_acc["val_accuracy_at_best_val"] == 0.9
    assert by_acc["test_accuracy_at_best_val"] == 0.8 and by_acc["val_macro_f1_at_best_val"] == 0.3
    # no name claims a "best validation accuracy" that another metric chose
    assert not [k for k in by_f1 if k.startswith("best_val_") and k != "best_val_round"]
    assert by_f1["total_upload_bytes"] == 30
    assert json.loads(to_json({"x": float("nan"), "y": [float("inf"), 1.5]})) == {"x": None, "y": [None, 1.5]}


def test_a_summary_written_before_the_renaming_reads_with_todays_names():
    old = json.loads((OLD_SWEEP / "iid" / "fedhello" / "seed5" / "summary.json").read_text())
    assert "best_val_accuracy" in old and "val_accuracy_at_best_val" not in old
    new = read_summary(old)
    assert new["val_accuracy_at_best_val"] == old["best_val_accuracy"]
    assert new["val_macro_f1_at_best_val"] == old["best_val_macro_f1"]
    assert new["best_val_round"] == old["best_val_round"] == 2
    assert new["test_accuracy_at_best_val"] == old["test_accuracy_at_best_val"]
    assert "best_val_accuracy" not in new and "best_val_macro_f1" not in new


def test_report_rebuilds_the_table_of_a_sweep_written_by_the_earlier_code(tmp_path, tiny_bert):
    sweep = tmp_path / "old-sweep"
    shutil.copytree(OLD_SWEEP, sweep)
    cell = sweep / "iid" / "fedhello" / "seed5"
    cfg = cell / "config.yaml"
    cfg.write_text(cfg.read_text().replace("TINY_BERT", str(tiny_bert)))
    assert main(["report", str(sweep)]) == 0
    (row,) = results_rows(sweep)
    assert (row["strategy"], row["partition"], row["seeds"], row["rounds"]) == ("fedhello", "iid", 1, 3)
    assert row["select_metric"] == "accuracy"
    assert row["final_test_accuracy_mean"] == pytest.approx(2 / 15)
    assert row["best_val_test_accuracy_mean"] == pytest.approx(2 / 15)
    md = (sweep / "results.md").read_text()
    assert "acc @ best val (accuracy)" in md and "| fedhello | 1 | 13.3 | 13.3 |" in md
    assert {p.name for p in (cell / "plots").glob("*.png")} >= {"accuracy.png", "layers_heatmap.png"}
