"""fedhello sweep (grid, resume, failures, results table), report (plots from the directory alone), TensorBoard."""

import csv
import json
import shutil
import statistics

import pytest
import yaml

from fedhello.cli import main
from fedhello.config import load_config
from fedhello.report.hooks import RunReporter, write_sweep_reports
from fedhello.run import sweep as sweep_module
from fedhello.run.experiment import run_experiment
from fedhello.run.sweep import Cell, partition_overrides, run_sweep
from fedhello.run.rundir import RunDir
from helpers import DROP, small_raw

STRATEGIES = ["fedit", "fedra"]
PARTITIONS = ["iid", "pat-2"]
SEEDS = [0, 1]
RUN_PNGS = {"accuracy.png", "layers_heatmap.png", "layer_distribution.png", "group_costs.png"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def base_config(tiny_bert, path):
    raw = small_raw(tiny_bert, seed=DROP, strategy={"name": "fedit", "warmup_rounds": 1, "fim_every": 1, "fim_samples": 10},
                    train={"lr": 0.01}, eval={"every": 1, "batch_size": 64})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def sweep(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg_file = base_config(tiny_bert, tmp / "base.yaml")
    out = tmp / "sw"
    # one cell interrupted after its first round: the sweep must continue it, not restart it
    part = Cell("fedra", "pat-2", 1)
    cfg = load_config(cfg_file, [*partition_overrides("pat-2"), "strategy.name=fedra", "seed=1"])
    run_experiment(cfg, part.dir(out), stop_after=1)
    first = RunDir(part.dir(out)).read_metrics()[0]
    # ...and started before data.test_fraction existed: a key added since takes its default, not "different run"
    saved = yaml.safe_load((part.dir(out) / "config.yaml").read_text())
    assert saved["data"].pop("test_fraction") == 0.0
    (part.dir(out) / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    # the hooks the CLI passes: TensorBoard + plots per cell, the table and sweep plots after each cell
    res = run_sweep(cfg_file, STRATEGIES, PARTITIONS, SEEDS, out, reporter=RunReporter, after_cell=write_sweep_reports)
    return {"cfg": cfg_file, "out": out, "res": res, "partial": part, "first": first}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cells_of(out, strategy, partition):
    return [json.loads((out / partition / strategy / f"seed{s}" / "summary.json").read_text()) for s in SEEDS]


def test_sweep_runs_every_cell_and_tabulates_means_and_stds(sweep):
    out, res = sweep["out"], sweep["res"]
    assert len(res["ran"]) == 8 and not res["failed"] and not res["skipped"]
    rows = read_csv(out / "results.csv")
    assert [(r["strategy"], r["partition"]) for r in rows] == [(s, p) for p in PARTITIONS for s in STRATEGIES]
    for r in rows:
        sums = cells_of(out, r["strategy"], r["partition"])
        assert r["seeds"] == "2" and r["seed_ids"] == "0 1" and r["failed"] == "0" and r["rounds"] == "2"
        final = [s["final_test_accuracy"] for s in sums]
        best = [s["test_accuracy_at_best_val"] for s in sums]
        approx = lambda x: pytest.approx(x, rel=1e-5, abs=1e-7)  # noqa: E731  (csv keeps 6 digits)
        assert float(r["final_test_accuracy_mean"]) == approx(statistics.fmean(final))
        assert float(r["final_test_accuracy_std"]) == approx(statistics.stdev(final))
        assert float(r["best_val_test_accuracy_mean"]) == approx(statistics.fmean(best))
        assert float(r["best_val_test_accuracy_std"]) == approx(statistics.stdev(best))
        assert float(r["upload_mb_mean"]) == approx(statistics.fmean(s["total_upload_bytes"] / 1e6 for s in sums))
        assert r["trainable_params_per_group"] == "/".join(str(p) for p in sums[0]["trainable_params_per_group"])
        times = [c["train_time_s"] for s in SEEDS
                 for rec in RunDir(out / r["partition"] / r["strategy"] / f"seed{s}").read_metrics()
                 for c in rec["clients"]]
        assert float(r["mean_client_train_time_s"]) == approx(statistics.fmean(times))
    # default target: 90% of the best final mean of the partition; rounds counted from 1
    for part in PARTITIONS:
        prow = [r for r in rows if r["partition"] == part]
        target = 0.9 * max(statistics.fmean(s["final_test_accuracy"] for s in cells_of(out, r["strategy"], part))
                           for r in prow)
        for r in prow:
            assert float(r["target_accuracy"]) == pytest.approx(target, rel=1e-5)
            hits = []
            for s in SEEDS:
                recs = RunDir(out / part / r["strategy"] / f"seed{s}").read_metrics()
                hits += [next((x["round"] + 1 for x in recs if x["test_accuracy"] >= target - 1e-12), None)]
            reached = [h for h in hits if h is not None]
            assert r["reached_target"] == f"{len(reached)}/2"
            assert (float(r["rounds_to_target"]) if r["rounds_to_target"] else None) == (
                statistics.fmean(reached) if reached else None)
    md = (out / "results.md").read_text()
    for part in PARTITIONS:
        assert f"## {part}" in md
    assert md.count("| fedit | 2 |") == 2 and md.count("| fedra | 2 |") == 2
    assert {p.name for p in (out / "plots").glob("*.png")} == {"accuracy_iid.png", "accuracy_pat-2.png"}
    for s in STRATEGIES:  # every cell's own plots and adapter
        cell = out / "iid" / s / "seed0"
        assert {p.name for p in (cell / "plots").glob("*.png")} == RUN_PNGS
        assert (cell / "adapter" / "adapter_config.json").is_file()


def test_sweep_resumes_an_interrupted_cell(sweep):
    recs = RunDir(sweep["partial"].dir(sweep["out"])).read_metrics()
    assert [r["round"] for r in recs] == [0, 1]
    assert recs[0] == sweep["first"]  # round 0 kept from the interrupted process (its timing too)


def test_rerunning_the_sweep_runs_nothing(sweep, monkeypatch):
    out = sweep["out"]
    summaries = sorted(out.glob("*/*/seed*/summary.json"))
    before = {p: p.stat().st_mtime_ns for p in summaries}
    calls = []
    monkeypatch.setattr(sweep_module, "run_experiment", lambda *a, **k: calls.append(a))
    res = run_sweep(sweep["cfg"], STRATEGIES, PARTITIONS, SEEDS, out)
    assert calls == [] and res["ran"] == [] and len(res["skipped"]) == 8
    assert {p: p.stat().st_mtime_ns for p in summaries} == before


def test_dry_run_lists_cells_and_writes_nothing(sweep, tmp_path, capsys):
    out = tmp_path / "dry"
    rc = main(["sweep", "--config", str(sweep["cfg"]), "--strategies", "fedit,fedra", "--partitions",
               "iid,dir-0.5", "--seeds", "3", "--out", str(out), "--dry-run"])
    assert rc == 0 and not out.exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(lines) == 4 and "dir-0.5/fedra/seed3" in lines[-1] and all(" new " in line for line in lines)
    # the finished sweep: every cell reported done
    main(["sweep", "--config", str(sweep["cfg"]), "--strategies", "fedit,fedra", "--partitions", "iid,pat-2",
          "--seeds", "0,1", "--out", str(sweep["out"]), "--dry-run"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(lines) == 8 and all(" done " in line for line in lines)


def test_bad_grid_input_is_an_error_before_anything_runs(sweep, tmp_path, capsys):
    out = tmp_path / "bad"
    for bad in (["--partitions", "pat-x"], ["--strategies", "nope"], ["--seeds", "a"], ["--partitions", "dir-0"]):
        args = {"--strategies": "fedit", "--partitions": "iid", "--seeds": "0"}
        args[bad[0]] = bad[1]
        argv = ["sweep", "--config", str(sweep["cfg"]), "--out", str(out)] + [x for kv in args.items() for x in kv]
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith("error: ")
    assert not out.exists()


def test_a_failing_cell_is_recorded_and_the_others_complete(sweep, tmp_path):
    out = tmp_path / "fail"
    # fedhello needs a server calibration set larger than the data holds: that cell fails in its run
    # (fedit, which never uses it, then trains on the whole split)
    rc = main(["sweep", "--config", str(sweep["cfg"]), "--strategies", "fedhello,fedit", "--partitions", "iid",
               "--seeds", "0", "--out", str(out), "--set", "strategy.fim_samples=100000"])
    assert rc == 1
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == ["iid/fedhello/seed0"]
    assert "fim_samples" in failures["iid/fedhello/seed0"]["error"]
    assert (out / "iid" / "fedit" / "seed0" / "summary.json").is_file()
    rows = {r["strategy"]: r for r in read_csv(out / "results.csv")}
    assert rows["fedhello"]["failed"] == "1" and rows["fedhello"]["seeds"] == "0"
    assert rows["fedhello"]["final_test_accuracy_mean"] == ""
    assert rows["fedit"]["failed"] == "0" and rows["fedit"]["seeds"] == "1"
    assert rows["fedit"]["final_test_accuracy_std"] == ""  # one seed: no std
    assert "1 failed" in (out / "results.md").read_text()


def test_report_regenerates_plots_and_results_from_the_directory_alone(sweep, tmp_path):
    src = sweep["out"]
    dst = tmp_path / "copy"
    # only the files a report may use: no checkpoint, adapter, plots, event files or results
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
        "checkpoint.pt", "adapter", "plots", "tb", "results.csv", "results.md"))
    assert not list(dst.rglob("*.png"))
    assert main(["report", str(dst)]) == 0
    assert (dst / "results.csv").read_text() == (src / "results.csv").read_text()
    assert (dst / "results.md").read_text().splitlines()[1:] == (src / "results.md").read_text().splitlines()[1:]
    assert {p.name for p in (dst / "plots").glob("*.png")} == {"accuracy_iid.png", "accuracy_pat-2.png"}
    for cell in dst.glob("*/*/seed*"):
        assert {p.name for p in (cell / "plots").glob("*.png")} == RUN_PNGS, cell
        assert len(list((cell / "tb").glob("events.out.tfevents.*"))) == 1
    one = dst / "iid" / "fedra" / "seed0"
    shutil.rmtree(one / "plots")
    assert main(["report", str(one)]) == 0  # a single run directory
    assert {p.name for p in (one / "plots").glob("*.png")} == RUN_PNGS


def test_a_report_reads_the_sweep_directory_once(sweep, tmp_path, monkeypatch):
    from fedhello.report import hooks, plots, table
    dst = tmp_path / "once"
    shutil.copytree(sweep["out"], dst, ignore=shutil.ignore_patterns("checkpoint.pt", "adapter", "plots", "tb"))
    calls = []
    real = table.collect

    def counting(out):
        calls.append(out)
        return real(out)

    monkeypatch.setattr(table, "collect", counting)
    monkeypatch.setattr(plots, "collect", counting)
    monkeypatch.setattr(hooks, "collect", counting)
    reads = []
    real_read = RunDir.read_metrics

    def counting_read(self):
        reads.append(self.path)
        return real_read(self)

    monkeypatch.setattr(RunDir, "read_metrics", counting_read)
    assert main(["report", str(dst)]) == 0
    assert len(calls) == 1  # the table, the PARTIAL count and the sweep plots share one read
    # ...and each cell's metrics.jsonl is read once, for its plots and TensorBoard scalars too
    assert sorted(reads) == sorted(dst.glob("*/*/seed*")) and len(reads) == 8
    assert (dst / "results.csv").read_text() == (sweep["out"] / "results.csv").read_text()
    assert {p.name for p in (dst / "plots").glob("*.png")} == {"accuracy_iid.png", "accuracy_pat-2.png"}
    calls.clear()
    write_sweep_reports(dst)  # what the sweep calls after each cell
    assert len(calls) == 1


def test_the_table_of_an_unfinished_grid_says_partial(sweep, tmp_path):
    assert "PARTIAL" not in (sweep["out"] / "results.md").read_text()  # all 8 cells finished
    dst = tmp_path / "partial"
    shutil.copytree(sweep["out"], dst, ignore=shutil.ignore_patterns("checkpoint.pt", "adapter", "plots", "tb"))
    (dst / "pat-2" / "fedra" / "seed1" / "summary.json").unlink()  # one cell unfinished
    grid = json.loads((dst / "sweep.json").read_text())
    grid["seeds"] = [0, 1, 2]  # and a seed not started: 7 of 12
    (dst / "sweep.json").write_text(json.dumps(grid))
    assert main(["report", str(dst)]) == 0
    md = (dst / "results.md").read_text().splitlines()
    assert md[0] == "**PARTIAL**: 7 of 12 cells of the sweep's grid have finished; the table covers those."
    assert md[2] == "# Sweep results: partial"
    assert "| fedra | 1 (1 unfinished) |" in "\n".join(md)
    (dst / "sweep.json").write_text("{")  # no readable grid: no claim either way
    assert main(["report", str(dst)]) == 0
    assert (dst / "results.md").read_text().startswith("# Sweep results: partial")


def test_fisher_plot_where_scores_are_recorded(tiny_bert, tmp_path):
    from fedhello.report.plots import run_plots

    cfg = load_config(base_config(tiny_bert, tmp_path / "b.yaml"), ["strategy.name=fim-hla", "rounds=1"])
    run_experiment(cfg, tmp_path / "r")
    assert RunDir(tmp_path / "r").read_metrics()[0]["fim_scores"]
    names = {p.name for p in run_plots(tmp_path / "r")}
    assert names == RUN_PNGS | {"fim_scores.png"}


def _client(group, samples, seconds, upload, **extra):
    return {"id": 0, "group": group, "layers": [0], "num_samples": samples, "train_time_s": seconds,
            "upload_bytes": upload, **extra}


def test_group_costs_are_per_sample_so_more_data_does_not_look_slower():
    from fedhello.report.plots import group_costs

    # group 0: weak (1 layer) clients with much data, slower per client-round but cheaper per sample;
    # group 1: strong (3 layers) clients with little data
    records = [
        {"round": 0, "clients": [_client(0, 200, 4.0, 100), _client(1, 20, 1.0, 300)]},
        {"round": 1, "clients": [_client(0, 100, 3.0, 100), _client(1, 20, 1.2, 300)]},
    ]
    g0, g1 = group_costs(records, 2)
    assert g0["client_rounds"] == g1["client_rounds"] == 2
    # each record's 1000 * train_time_s / num_samples, then the group's mean
    assert g0["ms_per_sample"] == pytest.approx((20.0 + 30.0) / 2)
    assert g1["ms_per_sample"] == pytest.approx((50.0 + 60.0) / 2)
    assert g0["ms_per_sample"] < g1["ms_per_sample"]  # per client-round it would be the other way round
    assert (g0["upload_bytes"], g1["upload_bytes"]) == (100.0, 300.0)
    assert g0["peak_memory_bytes"] is None and g1["peak_memory_bytes"] is None  # CPU records: not recorded
    # GPU records carry peak_memory_bytes; a group never sampled has no figures at all
    gpu = [{"round": 0, "clients": [_client(1, 10, 0.5, 300, peak_memory_bytes=2_000_000),
                                    _client(1, 10, 0.5, 300, peak_memory_bytes=4_000_000)]}]
    g0, g1 = group_costs(gpu, 2)
    assert g0 == {"client_rounds": 0, "ms_per_sample": None, "upload_bytes": None, "peak_memory_bytes": None}
    assert g1["peak_memory_bytes"] == 3_000_000.0 and g1["ms_per_sample"] == pytest.approx(50.0)


def test_group_costs_plot_with_recorded_memory(sweep, tmp_path):
    from fedhello.report.plots import run_plots

    run = tmp_path / "r"
    shutil.copytree(sweep["out"] / "iid" / "fedra" / "seed0", run, ignore=shutil.ignore_patterns("plots"))
    lines = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for c in rec.get("clients", []):
            if c["group"] == 1:  # one group with memory, the other without
                c["peak_memory_bytes"] = 5_000_000
        lines.append(json.dumps(rec))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert {p.name for p in run_plots(run)} == RUN_PNGS


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir))
    ea.Reload()
    return ea


def test_tensorboard_scalars_match_the_records_without_duplicates_after_resume(sweep):
    run = sweep["partial"].dir(sweep["out"])  # interrupted after round 1, resumed by the sweep
    recs = RunDir(run).read_metrics()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    ea = _scalars(run / "tb")
    tags = set(ea.Tags()["scalars"])
    assert tags >= {"accuracy/test", "accuracy/val", "loss/train", "time/round_s", "upload/mb", "upload/cumulative_mb"}
    for tag, key in (("accuracy/test", "test_accuracy"), ("accuracy/val", "val_accuracy"),
                     ("loss/train", "train_loss"), ("time/round_s", "round_time_s")):
        ev = ea.Scalars(tag)
        assert [e.step for e in ev] == [r["round"] for r in recs] == [0, 1], tag  # numbered as in metrics.jsonl
        assert [e.value for e in ev] == pytest.approx([r[key] for r in recs], rel=1e-6)
    up = [sum(c["upload_bytes"] for c in r["clients"]) / 1e6 for r in recs]
    assert [e.value for e in ea.Scalars("upload/mb")] == pytest.approx(up, rel=1e-6)
    assert [e.value for e in ea.Scalars("upload/cumulative_mb")] == pytest.approx([up[0], up[0] + up[1]], rel=1e-6)
