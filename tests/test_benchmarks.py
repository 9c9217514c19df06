"""The benchmark suite's code paths on a tiny random BERT (no timing assertions)."""

import json
import math

import pytest

from fedhello.bench.common import SavedActivations, base_raw
from fedhello.bench.report import check_targets, table
from fedhello.bench.run import run_suite, write_results
from fedhello.bench.settings import Settings
from fedhello.bench.suite import freeze_configs
from fedhello.cli import main
from helpers import torch_threads

pytestmark = pytest.mark.bench

FREEZE_KEYS = {"top_half", "bottom_half", "bottleneck", "lr0_all"}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result(tiny_bert):
    with torch_threads(None):  # the suite sets its own thread count
        return run_suite(Settings(model=str(tiny_bert), size="tiny", threads=1, max_length=24), log=lambda m: None)


def test_bench_json_has_every_figure(result):
    for key in ("machine", "engine_overhead_ratio", "freeze_time_ratio", "freeze_peak_memory_ratio",
                "fim_speedup", "fim_max_rel_error", "length_grouping_speedup", "scale", "upload_bytes_per_group"):
        assert key in result, key
    assert result["machine"]["device"] in ("cpu", "cuda")
    assert set(result["freeze_time_ratio"]) == FREEZE_KEYS
    assert set(result["freeze_peak_memory_ratio"]) == FREEZE_KEYS
    for key in ("engine_overhead_ratio", "fim_speedup", "length_grouping_speedup"):
        assert _positive(result[key]), key
    for d in (result["freeze_time_ratio"], result["freeze_peak_memory_ratio"]):
        assert all(_positive(v) for v in d.values())
    json.dumps(result)  # serialisable


def test_fisher_vectorised_matches_the_loop(result):
    assert 0 <= result["fim_max_rel_error"] < 1e-5
    f = result["fisher"]
    assert f["samples"] == 12 and len(f["scores_loop"]) == 3
    assert all(x > 0 for x in f["scores_loop"])
    # length buckets pad less than random batches of the same samples
    assert f["padded_tokens_per_sample_bucketed"] <= f["padded_tokens_per_sample_unbucketed"]


def test_freezing_saves_activations_by_depth(result):
    saved = result["freezing"]["saved_activation_bytes"]
    # frozen lower layers keep no activations for backward; lr-0 freezing keeps them all
    assert saved["top_half"] < saved["bottom_half"] <= saved["all"]
    assert saved["lr0_all"] == saved["all"]
    layers = result["freezing"]["layers"]
    assert layers["top_half"] == [2] and layers["bottom_half"] == [0] and layers["bottleneck"] == [0]
    assert saved["bottleneck"] == saved["bottom_half"]  # same layers, same activations


def test_communication_by_group(result):
    up = result["upload_bytes_per_group"]
    budgets = base_raw(Settings(), 3)["clients"]["budgets"]
    assert budgets == [2, 3]
    assert set(up) == {"0", "1", "fedit"}
    # 4 LoRA tensors (q/v, A/B) of 16 x 32 per layer + the head of the demo's 6 intents, float32
    head = 4 * (6 * 32 + 6)
    per_layer = 4 * 4 * 16 * 32
    assert up["0"] == 2 * per_layer + head
    assert up["1"] == up["fedit"] == 3 * per_layer + head
    assert all(g["download_bytes"] == up["fedit"] for g in result["communication"]["groups"])


def test_scale_rows(result):
    rows = result["scale"]
    assert [r["clients"] for r in rows] == [10, 40]
    for r in rows:
        assert _positive(r["rss_mb"]) and _positive(r["round_time_s"])
        assert r["per_round"] == 10


def test_grouping_and_table(result):
    lg = result["length_grouping"]
    assert lg["padded_tokens_per_real_token_grouped"] <= lg["padded_tokens_per_real_token_shuffled"]
    acc = result["length_grouping_accuracy"]
    assert all(0 <= acc[k] <= 1 for k in ("grouped", "shuffled", "shuffled_seed1"))
    text = table(result)
    assert "engine_overhead_ratio" in text and "fim_max_rel_error" in text
    assert check_targets(result)["fim_max_rel_error"] is True


def test_freeze_configs_of_minilm_depth():
    c = freeze_configs(6)
    assert c["top_half"] == [3, 4, 5] and c["bottom_half"] == [0, 1, 2]
    assert c["bottleneck"] == [0, 1, 5] and c["all"] == list(range(6))


def test_saved_activations_counts_bytes():
    import torch

    w = torch.randn(4, 5, requires_grad=True)
    x = torch.randn(3, 4)
    with SavedActivations() as sa:
        (x @ w).sum()
    assert sa.nbytes == x.numel() * 4  # matmul saves x (for w's gradient); w needs no gradient of x


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "o"), "--only", "nope"]) == 2
    assert "unknown part 'nope'" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "o"), "--data", str(tmp_path), "--only", "scale"]) == 2
    assert "no train.csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_result_files_and_bench_report(result, tmp_path, capsys):
    text = write_results(result, tmp_path / "o")
    assert (tmp_path / "o" / "bench.txt").read_text() == text + "\n"
    assert main(["bench-report", str(tmp_path / "o" / "bench.json")]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| figure | value | target | met |") and "`fim_max_rel_error`" in md
    assert main(["bench-report", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_the_whole_suite_runs_with_data(tiny_bert, tmp_path):
    """`fedhello bench --data FOLDER` runs every part and probe (the scale probe's demo config
    once inherited data.path from --data, which config validation refuses)."""
    import csv

    data = tmp_path / "b77"
    data.mkdir()
    intents = ["card_arrival", "lost_card", "top_up", "refund"]
    words = "my card has not arrived yet please help me with the top up refund i lost it today".split()
    for name, n in (("train.csv", 160), ("test.csv", 40)):
        with open(data / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            for i in range(n):
                w.writerow([" ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 9)), intents[i % 4]])
    with torch_threads(None):  # the bench sets its own thread count
        rc = main(["bench", "--out", str(tmp_path / "o"), "--data", str(data), "--size", "tiny",
                   "--model", str(tiny_bert), "--threads", "1"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    for key in ("engine_overhead_ratio", "freeze_time_ratio", "fim_speedup", "length_grouping_speedup",
                "length_grouping_accuracy", "scale", "upload_bytes_per_group"):
        assert key in res, key
    assert [r["clients"] for r in res["scale"]] == [10, 40]
    assert res["fisher"]["samples"] == 12
