"""What a run directory guarantees, and bad run directories / adapters as one-line errors.

Safe loading (a pickled checkpoint is refused before any of it runs), bad
checkpoints refused before a round trains, the lock, the data fingerprint checked
on resume, ``--overwrite`` leaving nothing of the old run, leftovers cleaned,
unwritable and full disks, corrupt files given to ``report``, and ``predict`` on
tampered adapters.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.errors import FedHelloError
from fedhello.report.hooks import RunReporter
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir, atomic_torch_save
from helpers import merged, small_raw


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def raw_cfg(tiny_bert, data=None, **kw) -> dict:
    raw = small_raw(tiny_bert, device="cpu", model={"max_length": 24})
    return merged(raw, dict(kw, **({"data": data} if data else {})), replace=True)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def one_error(code, err, needle, started=False):
    """Exit 2 and one line ``error: ...`` holding ``needle``; ``started``: after the run's start line."""
    if started:
        assert len(err) == 2 and err[0].startswith("fedhello "), err
        err = err[1:]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (code, err)


@pytest.fixture(scope="module")
def half_run(tiny_bert, tmp_path_factory):
    """A 2-round run stopped after round 1 (a checkpoint to resume), and its config file."""
    root = tmp_path_factory.mktemp("half")
    cfg = build_config(raw_cfg(tiny_bert))
    run_experiment(cfg, root / "run", stop_after=1)
    return root / "run"


@pytest.fixture
def half(half_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(half_run, out)
    return out


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    run_experiment(build_config(raw_cfg(tiny_bert)), out, reporter=RunReporter)  # plots too, as the CLI writes
    return out


# -- safe loading -------------------------------------------------------------------


class Payload:
    """Unpickling this creates a directory: code that ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_payload_is_refused_and_nothing_runs(half, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(half / "checkpoint.pt", weights_only=True)
    ckpt["strategy_state"] = {"x": Payload(marker)}
    torch.save(ckpt, half / "checkpoint.pt")
    metrics = (half / "metrics.jsonl").read_text()
    code, err = cli(capsys, "run", "--resume", half)
    one_error(code, err, "checkpoint.pt: refused: it holds objects other than tensors and plain data")
    code, err = cli(capsys, "report", half, "--adapter")
    one_error(code, err, "refused")
    assert not marker.exists()
    assert (half / "metrics.jsonl").read_text() == metrics


def test_checkpoints_hold_only_plain_data(tmp_path):
    path = tmp_path / "c.pt"
    atomic_torch_save(path, {"a": np.float64(1.5), "b": np.arange(3), "c": [np.int64(2), (np.float32(0.5),)],
                             "t": torch.ones(2), "n": None, "s": "x", "nan": float("nan")})
    got = torch.load(path, weights_only=True)
    assert got["a"] == 1.5 and type(got["a"]) is float
    assert got["b"] == [0, 1, 2] and type(got["c"][0]) is int and got["c"][1] == (0.5,)
    assert torch.equal(got["t"], torch.ones(2)) and got["n"] is None and np.isnan(got["nan"])


def _tamper(name):
    def missing_key(c):
        del c["records"]
        return c

    def wrong_shape(c):
        k = sorted(c["global_state"])[0]
        c["global_state"][k] = torch.zeros(3, 3)
        return c

    def nan(c):
        k = sorted(c["global_state"])[-1]
        c["global_state"][k] = c["global_state"][k].clone().fill_(float("nan"))
        return c

    def unknown(c):
        c["global_state"]["evil"] = torch.zeros(1)
        return c

    def too_many_rounds(c):
        c["round"], c["records"] = 5, c["records"] * 5
        return c

    return {"missing key": missing_key, "list": lambda c: [c], "wrong shape": wrong_shape, "NaN": nan,
            "unknown tensor": unknown, "too many rounds": too_many_rounds,
            "strategy state": lambda c: dict(c, strategy_state=[1])}[name]


BAD_CHECKPOINTS = [
    ("missing key", "key 'records' missing"),
    ("list", "it holds a list, not a dict"),
    ("wrong shape", "has shape (3, 3), the model's is"),
    ("NaN", "holds NaN or infinite values"),
    ("unknown tensor", "has an unknown tensor 'evil'"),
    ("strategy state", "'strategy_state' is not a dict"),
]


@pytest.mark.parametrize("case, needle", BAD_CHECKPOINTS)
def test_bad_checkpoints_are_refused(half_run, case, needle):
    from fedhello.federation.server import check_checkpoint
    from fedhello.model.state import check_state

    good = torch.load(half_run / "checkpoint.pt", weights_only=True)
    bad = _tamper(case)(torch.load(half_run / "checkpoint.pt", weights_only=True))
    with pytest.raises(FedHelloError) as e:
        check_checkpoint(bad, "ckpt")
        check_state(bad["global_state"], good["global_state"], "ckpt")
    assert needle in str(e.value) and str(e.value).startswith("ckpt: ")


@pytest.mark.parametrize("case, needle", [
    ("NaN", "holds NaN or infinite values"),  # it trained a round before
    ("list", "it holds a list, not a dict"),
    ("too many rounds", "5 rounds done, the config has rounds: 2"),
])
def test_bad_checkpoints_are_refused_before_a_round(half, capsys, case, needle):
    p = half / "checkpoint.pt"
    torch.save(_tamper(case)(torch.load(p, weights_only=True)), p)
    metrics = (half / "metrics.jsonl").read_text()
    code, err = cli(capsys, "run", "--resume", half)
    one_error(code, err, needle)
    assert (half / "metrics.jsonl").read_text() == metrics  # nothing trained


def test_a_truncated_checkpoint_is_an_error(half, capsys):
    p = half / "checkpoint.pt"
    p.write_bytes(p.read_bytes()[:100])
    one_error(*cli(capsys, "run", "--resume", half), "cannot read checkpoint")


# -- the lock ------------------------------------------------------------------------


def test_a_second_run_on_the_same_directory_is_refused(half, capsys):
    metrics = (half / "metrics.jsonl").read_text()
    with RunDir(half).locked():  # another process running in it
        code, err = cli(capsys, "run", "--resume", half)
    assert code == 2 and err == [f"error: --out {half} is in use by another run (pid {os.getpid()})"]
    assert (half / "metrics.jsonl").read_text() == metrics
    # released: the run continues and finishes
    assert cli(capsys, "run", "--resume", half)[0] == 0
    assert len(RunDir(half).read_metrics()) == 2


# -- resume checks the data -------------------------------------------------------------


def write_data(d, train_rows, test_rows):
    d.mkdir(exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows)):
        (d / f"{name}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))


TRAIN = [(f"word{i} other{i % 7}", "abc"[i % 3]) for i in range(60)]
TEST = [(f"test{i}", "abc"[i % 3]) for i in range(12)]


def test_resume_refuses_changed_data(tmp_path, capsys, tiny_bert):
    data = tmp_path / "data"
    write_data(data, TRAIN, TEST)
    cfg = build_config(raw_cfg(tiny_bert, data={"format": "csv", "path": str(data), "val_fraction": 0.1}))
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after=1)
    info = json.loads((out / "data.json").read_text())
    assert info["rows"] == {"train": 60, "test": 12} and set(info["fingerprint"]) == {"labels", "train", "test"}
    for (train, test), needle in [
        ((TRAIN[:-1] + [("changed text", TRAIN[-1][1])], TEST), "the training rows"),
        ((TRAIN, TEST[:-1]), "the test rows"),
        ((TRAIN + [("a new class", "d")], TEST), "the label set, the training rows"),
    ]:
        write_data(data, train, test)
        code, err = cli(capsys, "run", "--resume", out)
        one_error(code, err, f"the data changed since this run started ({needle} differ from data.json)")
        assert len(RunDir(out).read_metrics()) == 1
    write_data(data, TRAIN, TEST)  # the data it started with: the run continues
    assert cli(capsys, "run", "--resume", out)[0] == 0 and len(RunDir(out).read_metrics()) == 2


def test_dropped_rows_reported_in_console_and_data_json(tmp_path, capsys, tiny_bert):
    data = tmp_path / "data"
    write_data(data, TRAIN + [("   ", "a"), ("no label", "")], TEST)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert, data={"format": "csv", "path": str(data)})))
    code, err = cli(capsys, "run", "--config", cfg, "--out", tmp_path / "run")
    assert code == 0
    assert "data: dropped 2 of 62 training rows (whitespace-only text 1, no label 1)" in err
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["dropped"] == {"train": {"blank_text": 1, "no_label": 1}, "test": {}}
    # one round numbering (from 0): summary.json, metrics.jsonl, the final line and the round lines agree
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = [line for line in err if "test at best val round" in line]
    assert len(best) == 1 and f"test at best val round {summary['best_val_round']}:" in best[0]
    shown = [int(line.split()[1].split("/")[0]) for line in err if line.startswith("round ")]
    assert shown == [r["round"] for r in recs] == list(range(len(recs)))
    assert all(line.split()[1].endswith(f"/{len(recs) - 1}") for line in err if line.startswith("round "))


# -- overwrite, leftovers, directories that hold something else ---------------------------


def test_overwrite_leaves_nothing_of_the_old_run(finished, tmp_path, tiny_bert, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    old = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert {"adapter", "plots"} <= {p.parts[0] for p in old}
    # the new run is killed after its first round (stop_after): only its own files are there
    run_experiment(build_config(raw_cfg(tiny_bert, seed=9)), out, overwrite=True, stop_after=1)
    assert not (out / "adapter").exists() and not (out / "plots").exists() and not (out / "summary.json").exists()
    assert not any(p.name.startswith("events") for p in old if (out / p).exists())
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 9
    one_error(*cli(capsys, "predict", "--run", out, "--text", "hi"), "no exported adapter")


def test_leftover_temporary_files_are_removed(half, capsys):
    (half / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    (half / ".adapter.xyz").mkdir()
    assert cli(capsys, "run", "--resume", half)[0] == 0
    assert not (half / ".checkpoint.pt.abc123.tmp").exists() and not (half / ".adapter.xyz").exists()


def test_a_directory_with_other_files_is_not_a_run_directory(tmp_path, tiny_bert, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    for extra in ([], ["--overwrite"]):
        one_error(*cli(capsys, "run", "--config", cfg, "--out", out, *extra), "holds files but no run (e.g. notes.txt")
    assert (out / "notes.txt").read_text() == "keep me"


# -- unwritable and full -----------------------------------------------------------------


def test_an_unwritable_out_is_an_error(tmp_path, tiny_bert, capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    one_error(*cli(capsys, "run", "--config", cfg, "--out", "/proc/fedhello-no/run"), "cannot write /proc/fedhello-no/run")


def test_a_full_disk_is_an_error(tmp_path, tiny_bert, capsys, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    code, err = cli(capsys, "run", "--config", cfg, "--out", out)
    one_error(code, err, f"cannot write {out / 'config.yaml'}: {os.strerror(errno.ENOSPC)} (free some space",
              started=True)
    assert not list(out.glob(".*.tmp"))


# -- corrupt files given to run and report -------------------------------------------------


def test_invalid_yaml_config_in_a_run_directory(half, tmp_path, tiny_bert, capsys):
    (half / "config.yaml").write_text("rounds: [1,\n")
    one_error(*cli(capsys, "run", "--resume", half), "config.yaml: not a readable run config, not valid YAML (line 2)")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    one_error(*cli(capsys, "run", "--config", cfg, "--out", half), "already holds a different run")
    (half / "config.yaml").write_text("- a list\n")
    one_error(*cli(capsys, "run", "--resume", half), "not a run config (it must hold a mapping of keys)")


@pytest.mark.parametrize("text, line", [("{not json\n", 3), ("[1, 2]\n", 3), ("\n\n42\n", 5)])
def test_report_on_corrupt_metrics(finished, tmp_path, capsys, text, line):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(text)
    one_error(*cli(capsys, "report", out), f"metrics.jsonl: line {line} is not a round record")


# -- predict on tampered adapters --------------------------------------------------------------


def _safetensors(adapter, fn):
    from safetensors.torch import load_file, save_file

    p = adapter / "adapter_model.safetensors"
    save_file(fn(load_file(str(p))), str(p))


def _first(d, pred):
    return next(k for k in sorted(d) if pred(k))


TAMPER = {
    "garbage weights": (lambda a: (a / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10),
                        "adapter_model.safetensors: not a readable safetensors file"),
    "missing weights": (lambda a: (a / "adapter_model.safetensors").unlink(),
                        "adapter_model.safetensors: missing"),
    "missing head": (lambda a: _safetensors(a, lambda t: {k: v for k, v in t.items() if "classifier" not in k}),
                     "the weights lack 'base_model.model.classifier"),
    "wrong label count": (lambda a: (a / "labels.json").write_text(json.dumps(["only", "two"])),
                          "labels.json: 2 class names, fedhello.json says num_labels"),
    "labels not a list": (lambda a: (a / "labels.json").write_text('{"a": 1}'), "labels.json: not a list"),
    "no model in fedhello.json": (lambda a: (a / "fedhello.json").write_text(json.dumps({"max_length": 32})),
                                  "fedhello.json: no 'model'"),
    "wrong-shape LoRA": (lambda a: _safetensors(a, lambda t: dict(t, **{
        _first(t, lambda k: "lora_A" in k): torch.zeros(3, 3)})), "does not fit its base model"),
    "NaN weights": (lambda a: _safetensors(a, lambda t: dict(t, **{
        _first(t, lambda k: "lora_B" in k): torch.full_like(t[_first(t, lambda k: "lora_B" in k)], float("nan"))})),
        "holds NaN or infinite values"),
    "extra tensor": (lambda a: _safetensors(a, lambda t: dict(t, evil=torch.zeros(2))), "the weights hold 'evil'"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_predict_on_a_tampered_adapter(finished, tmp_path, capsys, case):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    tamper, needle = TAMPER[case]
    tamper(out / "adapter")
    code, err = cli(capsys, "predict", "--run", out, "--text", "my card was declined", "--device", "cpu")
    one_error(code, err, needle)
    assert capsys.readouterr().out == ""


def test_predict_on_the_untampered_adapter_still_works(finished, capsys):
    code = main(["predict", "--run", str(finished), "--text", "hello", "--device", "cpu"])
    assert code == 0
    label, prob, text = capsys.readouterr().out.strip().split("\t")
    assert 0 < float(prob) <= 1 and text == "hello"


def test_report_adapter_refuses_a_nan_checkpoint(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    p = out / "checkpoint.pt"
    torch.save(_tamper("NaN")(torch.load(p, weights_only=True)), p)
    with pytest.raises(FedHelloError, match="holds NaN or infinite values"):
        from fedhello.report import export_from_checkpoint

        export_from_checkpoint(out)


def test_run_files_get_the_usual_file_mode(tmp_path, monkeypatch):
    # written through a temporary file (owner-only as created), then renamed: the
    # result must have the mode any new file gets under the umask
    from fedhello.run import rundir

    monkeypatch.setattr(rundir, "_UMASK", 0o022)
    rundir.atomic_write_bytes(tmp_path / "results.md", b"x")
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == 0o644
    monkeypatch.setattr(rundir, "_UMASK", 0o027)
    rundir.atomic_write_bytes(tmp_path / "results.md", b"y")
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == 0o640


def test_deploy_local_refuses_a_bad_budget_list_in_one_line(tmp_path, capsys):
    code = main(["deploy-local", "--nodes", "2", "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "out"), "--budgets", "4,x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: --budgets: expected comma-separated integers, got '4,x'"]
    assert not (tmp_path / "out").exists()
