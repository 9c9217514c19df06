"""Careless input gets one ``error:`` line and a non-zero exit, never a traceback or a silent change.

Cases: infinite and NaN float keys (one rule, config.py); an edited config.yaml on
``--resume`` (but a longer ``rounds``); pooling refused by ``validate`` as by ``run``;
data files that are not UTF-8; export and predict safety; ``deploy-local`` refusals
before any process starts, its Ctrl-C hint, a node lost in the class-statistics round.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.errors import ConfigError, DataError
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir
from helpers import merged, small_raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def raw_cfg(tiny_bert, **kw) -> dict:
    return merged(small_raw(tiny_bert, rounds=1, device="cpu", model={"max_length": 24}), kw, replace=True)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def one_error(code, err, needle):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# -- float keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train.lr", "head.scale", "lora.alpha", "aggregation.norm_bound",
                                 "attack.factor", "partition.alpha"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_key_refuses_inf_and_nan(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*finite"):
        build_config({}, [f"{key}={value}"])


def test_a_float_list_refuses_inf_too():
    with pytest.raises(ConfigError, match="config key 'clients.fractions"):
        build_config({}, ["clients.fractions=[.inf, 0.5]"])


def test_validate_and_run_refuse_inf_before_training(tmp_path, capsys, tiny_bert):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    code, err = cli(capsys, "validate", "--config", cfg, "--set", "train.lr=.inf")
    one_error(code, err, "config key 'train.lr'")
    code, err2 = cli(capsys, "run", "--config", cfg, "--out", tmp_path / "r", "--set", "train.lr=.inf")
    assert code == 2 and err2 == err and not (tmp_path / "r").exists()


def test_validate_refuses_mean_pooling_on_distilbert_as_run_does(tmp_path, capsys, tiny_bert):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    code, err = cli(capsys, "validate", "--config", cfg, "--set", "model.name=distilbert-base-uncased",
                    "--set", "model.pooling=mean")
    one_error(code, err, "config key 'model.pooling': mean pooling is supported for bert models, not distilbert")


# -- resume refuses an edited config ----------------------------------------------------------


def test_resume_refuses_an_edited_config_but_allows_more_rounds(tmp_path, capsys, tiny_bert):
    out = tmp_path / "run"
    run_experiment(build_config(raw_cfg(tiny_bert, rounds=2)), out, stop_after=1)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key, value in [("model", {**saved["model"], "pooling": "model"}), ("head", {**saved["head"], "train": "local"})]:
        edited = {**saved, key: value}
        (out / "config.yaml").write_text(yaml.safe_dump(edited))
        code, err = cli(capsys, "run", "--resume", out)
        sub = "pooling" if key == "model" else "train"
        one_error(code, err, f"config.yaml: config key '{key}.{sub}' changed since this run started")
        assert len(RunDir(out).read_metrics()) == 1
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "rounds": 3}))  # extending rounds is allowed
    assert cli(capsys, "run", "--resume", out)[0] == 0
    assert len(RunDir(out).read_metrics()) == 3


# -- data files that are not UTF-8 ------------------------------------------------------------


def test_non_utf8_jsonl_and_utf16_csv_name_the_file_and_encoding(tmp_path):
    from fedhello.data.sources import _read_local

    j = tmp_path / "train.jsonl"
    j.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    with pytest.raises(DataError, match=r"train.jsonl: line 2 is not valid UTF-8 \(byte 0xe9"):
        _read_local(j, "json")
    c = tmp_path / "train.csv"
    c.write_bytes("text,label\nhello,a\nworld,b\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"train.csv: the file is UTF-16-encoded text; save it as UTF-8"):
        _read_local(c, "csv")
    c.write_bytes("text,label\nhello,a\n".encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(DataError, match=r"train.csv: the file holds NUL bytes"):
        _read_local(c, "csv")


# -- export and predict -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("careless") / "run"
    old = os.umask(0o022)
    try:
        run_experiment(build_config(raw_cfg(tiny_bert)), out)
    finally:
        os.umask(old)
    return out


def test_adapter_files_follow_the_umask_like_other_run_files(finished):
    assert (finished / "adapter").stat().st_mode & 0o777 == 0o755
    assert (finished / "adapter" / "fedhello.json").stat().st_mode & 0o777 == 0o644


def test_report_adapter_on_a_full_disk_is_one_error_line(finished, capsys, monkeypatch):
    import fedhello.model.adapter as adapter

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(adapter, "export_adapter", full)
    code, err = cli(capsys, "report", finished, "--adapter")
    one_error(code, err, "adapter: No space left on device (free some space")


def copy_run(finished, tmp_path):
    other = tmp_path / "run"
    shutil.copytree(finished, other)
    return other


@pytest.mark.parametrize("edit, needle", [
    ({"pooling": "max"}, "unknown 'pooling' 'max'"),
    ({"max_length": 100000}, "'max_length' 100000 is more than the model's 128 positions"),
])
def test_predict_refuses_a_tampered_fedhello_json(finished, tmp_path, capsys, edit, needle):
    other = copy_run(finished, tmp_path)
    info = json.loads((other / "adapter" / "fedhello.json").read_text())
    (other / "adapter" / "fedhello.json").write_text(json.dumps({**info, **edit}))
    code, err = cli(capsys, "predict", "--run", other, "--text", "hello")
    one_error(code, err, needle)


def test_predict_refuses_an_adapter_with_another_runs_labels(finished, tmp_path, capsys):
    other = copy_run(finished, tmp_path)
    labels = json.loads((other / "labels.json").read_text())
    (other / "labels.json").write_text(json.dumps(list(reversed(labels))))
    code, err = cli(capsys, "predict", "--run", other, "--text", "hello")
    one_error(code, err, "the adapter's labels differ from the run's")


# -- deploy-local ------------------------------------------------------------------------------


@pytest.fixture
def no_processes(monkeypatch):
    from fedhello.flower import deploy

    def refuse(*a, **k):
        raise AssertionError("a process was started")

    monkeypatch.setattr(deploy.LocalFederation, "start_superlink", refuse)
    monkeypatch.setattr(deploy.LocalFederation, "start_supernode", refuse)


@pytest.mark.parametrize("extra, needle", [
    (["--budgets", "1,7"], "--budgets: 7 is not one of the config's clients.budgets [1, 3]"),
    (["--round-timeout", "-5"], "--round-timeout must be a positive number of seconds, got -5.0"),
])
def test_deploy_local_refuses_before_any_process_starts(tmp_path, capsys, tiny_bert, no_processes, extra, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw_cfg(tiny_bert)))
    code, err = cli(capsys, "deploy-local", "--nodes", "2", "--config", cfg, "--out", tmp_path / "out", *extra)
    one_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_deploy_local_interrupt_hint_names_its_resume(tmp_path, capsys, monkeypatch):
    from fedhello.flower import deploy

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "deploy_local", interrupted)
    monkeypatch.setattr("fedhello.config.load_config", lambda *a, **k: build_config({}))
    code = main(["deploy-local", "--nodes", "2", "--config", "c.yaml", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 130 and f"continue with deploy-local --resume {tmp_path / 'o'}" in err


def test_a_node_lost_in_the_statistics_round_is_recorded_once_by_client_id(tmp_path, tiny_bert):
    from fedhello.federation.client import ClientFailure
    from fedhello.federation.server import Server
    from fedhello.run.experiment import prepare

    exp = prepare(build_config(raw_cfg(tiny_bert)))

    class Runner:
        def class_stats(self, ids, state):
            C = exp.num_classes()
            return [ClientFailure(None, "node lost") if c == 1 else
                    (np.ones((C, 4)), np.ones(C), 4.0 * C) for c in ids]

        def available(self):
            return None

    s = Server.for_experiment(exp, Runner())
    s.head_init = lambda sums, counts, ns: {}
    info = s.initialise_head()
    assert info["failed_clients"] == [{"id": 1, "reason": "node lost"}] and info["clients"] == 3


@pytest.mark.parametrize("strategy", ["hetlora", "flexlora"])
def test_a_robust_rule_is_refused_for_strategies_with_their_own_merge(strategy):
    with pytest.raises(ConfigError, match="config key 'aggregation.robust': median is for layer-wise averaging"):
        build_config({}, [f"strategy.name={strategy}", "aggregation.robust=median"])
    assert build_config({}, [f"strategy.name={strategy}", "aggregation.norm_bound=3"]).aggregation.norm_bound == 3
