"""Bad input gets one clear line naming the key or file, exit status 2, before training."""

import subprocess
import sys

import pytest
import yaml

from fedhello.cli import main
from fedhello.config import build_config, load_config
from fedhello.errors import ConfigError
from helpers import DROP, small_raw


def write_cfg(tmp_path, raw, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_overrides_are_yaml_and_dotted():
    cfg = build_config({}, ["clients.budgets=[3,4,6]", "rounds=7", "strategy.name=fedra", "partition.alpha=0.1",
                            "clients.fractions=[1/3,1/3,1/3]", "data.format=csv", "data.path=some/dir"])
    assert cfg.clients.budgets == [3, 4, 6]
    assert cfg.rounds == 7 and cfg.strategy.name == "fedra" and cfg.partition.alpha == 0.1
    assert cfg.clients.fractions == pytest.approx([1 / 3] * 3)
    assert cfg.data.path == "some/dir"


def test_required_dotted_keys_exist():
    keys = ["rounds", "seed", "strategy.name", "data.path", "data.max_train_samples", "data.max_test_samples",
            "partition.name", "partition.classes_per_client", "partition.alpha", "clients.num_clients",
            "clients.per_round", "clients.fractions", "clients.budgets", "eval.every"]
    d = build_config({}).to_dict()
    for k in keys:
        cur = d
        for part in k.split("."):
            assert part in cur, k
            cur = cur[part]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.nme=x"], "unknown config key 'model.nme'"),
        (["strategy.name=nope"], "unknown strategy 'nope'"),
        (["clients.fractions=[0.5,0.4,0.2]"], "clients.fractions must sum to 1"),
        (["clients.per_round=20", "clients.num_clients=10"], "clients.per_round (20) is larger than clients.num_clients (10)"),
        (["clients.budgets=[1,2]"], "clients.fractions has 3 entries but clients.budgets has 2"),
        (["partition.name=shards"], "partition.name"),
        (["rounds=0"], "rounds"),
    ],
)
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config({}, overrides)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


DEMO = {"data": {"format": "demo", "demo_samples": 200}, "rounds": 1, "clients": {"num_clients": 4, "per_round": 2}}


@pytest.mark.parametrize(
    "raw, sets, needle",
    [
        (DEMO, ["bogus=1"], "unknown config key 'bogus'"),
        (DEMO, ["strategy.name=nope"], "unknown strategy 'nope'"),
        (DEMO, ["clients.budgets=[2,4,7]"], "budget 7 is larger than the model's 6 layers"),
        (DEMO, ["clients.fractions=[0.5,0.5,0.5]"], "clients.fractions must sum to 1"),
        (DEMO, ["clients.per_round=5"], "clients.per_round (5) is larger than clients.num_clients (4)"),
        (DEMO, ["partition.name=pathological", "partition.classes_per_client=50"], "partition.classes_per_client"),
    ],
)
def test_cli_errors_before_training(tmp_path, capsys, raw, sets, needle):
    cfg = write_cfg(tmp_path, raw)
    out = tmp_path / "run"
    argv = ["run", "--config", str(cfg), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (out / "metrics.jsonl").exists()


def test_cli_missing_data_file_and_column(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.csv").write_text("text,category\nhello there,a\ngood bye,b\n")
    cfg = write_cfg(tmp_path, {"data": {"format": "csv", "path": str(d), "label_column": "category"}})
    code, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "test.csv" in err[0], err
    (d / "test.csv").write_text("text,category\nhello,a\n")
    code, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"), "--set", "data.text_column=utterance")
    assert code == 2 and "utterance" in err[0], err
    code, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"), "--set", "data.label_column=intent")
    assert code == 2 and "intent" in err[0], err


def test_cli_refuses_a_different_run_in_out(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(build_config({"seed": 5}).to_dict()))
    cfg = write_cfg(tmp_path, DEMO)
    code, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(out))
    assert code == 2 and "already holds a different run" in err[0]
    # and nothing of the old run was touched
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 5


def test_console_script_exits_nonzero(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "fedhello.cli", "run", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_shipped_configs_validate(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / "configs").glob("*.yaml")) + [root / "src" / "fedhello" / "resources" / "demo.yaml"]
    assert len(configs) >= 2
    for cfg in configs:
        code = main(["validate", "--config", str(cfg)])
        out = capsys.readouterr().out
        assert code == 0 and out.startswith(f"{cfg}: ok"), (cfg, out)


def tiny_cfg(tmp_path, tiny_bert):
    return write_cfg(tmp_path, small_raw(
        tiny_bert, seed=0, model={"max_length": 24}, data={"val_fraction": DROP},
        clients={"fractions": DROP, "budgets": [1, 2, 3]}, strategy={"name": "fedit"}, train=DROP,
    ))


REFUSED = [
    (["seed=-1"], "config key 'seed'"),
    ([f"seed={2**70}"], "config key 'seed'"),
    ([f"seed={2**32}"], "less than 4294967296"),
    (["device=banana"], "config key 'device': 'banana' is not a device"),
    (["model.max_length=100000"], "config key 'model.max_length': 100000 is more than the 128 positions"),
    (["rounds=true"], "config key 'rounds': a boolean (true)"),
    (["clients.budgets=[true,2,3]"], "config key 'clients.budgets': a boolean"),
    (["lora.target_modules=[]"], "config key 'lora.target_modules': must name at least one module"),
    (["strategy.name=fedhello", "strategy.warmup_rounds=3"], "config key 'strategy.warmup_rounds': 3 is more than rounds (2)"),
    (["data.path=somewhere"], "config key 'data.path': set, but data.format is 'demo'"),
    (["data.name=some/dataset"], "config key 'data.name': set, but data.format is 'demo'"),
]


@pytest.mark.parametrize("sets, needle", REFUSED)
def test_validate_and_run_refuse_the_same_input(tmp_path, capsys, tiny_bert, sets, needle):
    """`validate` refuses everything `run` refuses, with the same one line, before any training."""
    cfg = tiny_cfg(tmp_path, tiny_bert)
    extra = [a for s in sets for a in ("--set", s)]
    code, err = run_cli(capsys, "validate", "--config", str(cfg), *extra)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    out = tmp_path / "run"
    code, err_run = run_cli(capsys, "run", "--config", str(cfg), "--out", str(out), *extra)
    assert code == 2 and err_run == err
    assert not out.exists()


def test_cuda_without_cuda_is_an_error(tmp_path, capsys, tiny_bert):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tiny_cfg(tmp_path, tiny_bert)
    for cmd in (["validate", "--config", str(cfg)], ["run", "--config", str(cfg), "--out", str(tmp_path / "r")]):
        code, err = run_cli(capsys, *cmd, "--set", "device=cuda")
        assert code == 2 and err == ["error: config key 'device': cuda is not available (PyTorch sees no CUDA "
                                     "device here): use cpu or auto"]
    code, err = run_cli(capsys, "predict", "--run", str(tmp_path), "--text", "hi", "--device", "cuda:0")
    assert code == 2 and err[0].startswith("error: --device: cuda:0 is not available")


def test_seed_limits_are_inclusive_below(tmp_path):
    assert build_config({}, ["seed=0"]).seed == 0
    assert build_config({}, [f"seed={2**32 - 1}"]).seed == 2**32 - 1


def test_max_length_limit_of_roberta_counts_its_offset():
    from transformers import RobertaConfig

    from fedhello.model.backbone import max_text_positions

    assert max_text_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512


def test_validate_reads_local_data_like_run(tmp_path, capsys, tiny_bert):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(30)) + "a,b,c\n")
    (d / "test.csv").write_text("text,label\nu,0\nv,1\n")
    cfg = tiny_cfg(tmp_path, tiny_bert)
    sets = ["--set", "data.format=csv", "--set", f"data.path={d}"]
    code, err = run_cli(capsys, "validate", "--config", str(cfg), *sets)
    assert code == 2 and err == [f"error: {d / 'train.csv'}: line 32 has 3 fields, the header has 2 "
                                 "(quote a text that holds a comma)"]
    assert run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"), *sets) == (2, err)
