"""What a new user meets first: the README's command lines work as printed, keys are discoverable
(config show, --version, Hugging Face names), sweep --dry-run validates every cell, data.path is stored
absolute, allocate and run agree on the warm-up."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from fedhello.cli import main
from fedhello.config import ExperimentConfig, build_config, load_config
from fedhello.report.keys import config_keys

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "fedhello" / "resources" / "demo.yaml"


def readme_commands() -> list[list[str]]:
    """Every ``fedhello ...`` line of the README's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "fedhello":
                out.append(words[1:])
    return out


def as_check(argv: list[str], data: Path, tmp: Path) -> list[str] | None:
    """The README command as a check that needs no training: run -> validate, sweep -> --dry-run."""
    argv = [re.sub(r"PATH/TO/banking77", str(data), a) for a in argv]
    cmd = argv[0]
    if cmd in ("allocate", "validate"):
        return argv
    if cmd in ("run", "deploy-local"):
        if "FILE" in argv or "--resume" in argv:
            return None  # a template line (FILE, DIR), or one that continues an existing run
        keep, skip = [], {"--out", "--nodes", "--round-timeout", "--budgets"}
        it = iter(argv[1:])
        for a in it:
            if a in skip:
                next(it)
            elif a != "--overwrite":
                keep.append(a)
        return ["validate", *keep]
    if cmd == "sweep":
        i = argv.index("--out")
        argv = [*argv[:i + 1], str(tmp / "sweep"), *argv[i + 2:], "--seeds", "0", "--dry-run"]
        j = argv.index("--strategies")  # every partition of the grid, with its first strategy (kept fast)
        return [*argv[:j + 1], argv[j + 1].split(",")[0], *argv[j + 2:]]
    return None  # report, bench, demo: they need a finished run or minutes


def banking77_like(root: Path) -> Path:
    """A small folder in Banking77's layout (train.csv, test.csv; text,category; 77 classes)."""
    import pandas as pd

    root.mkdir()
    for split, n in (("train", 40), ("test", 3)):
        rows = [{"text": f"question {i} about topic {c}", "category": f"intent_{c}"} for c in range(77) for i in range(n)]
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


def test_every_readme_command_line_runs_or_validates(tmp_path, capsys, monkeypatch):
    banking77 = banking77_like(tmp_path / "b77")
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    cmds = readme_commands()
    checked = [c for c in (as_check(a, banking77, tmp_path) for a in cmds) if c is not None]
    assert {c[0] for c in checked} >= {"allocate", "validate", "sweep"} and len(checked) >= 8
    assert any("rounds=4" in " ".join(c) for c in checked)  # the short Banking77 run
    for argv in checked:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, (argv, err)


def test_version_and_config_show(capsys, tmp_path):
    from fedhello import __version__

    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0 and capsys.readouterr().out.strip() == f"fedhello {__version__}"
    keys = list(config_keys())
    names = [k for k, *_ in keys]
    assert len(names) == len(set(names)) and {"rounds", "train.lr", "strategy.warmup_rounds", "head.scale"} <= set(names)
    assert all(desc for *_, desc in keys)  # every key is described
    assert main(["config", "show", "--config", str(DEMO), "--set", "train.lr=0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(keys)
    lr = next(line for line in lines if line.split()[1] == "train.lr")
    default = ExperimentConfig.model_fields["train"].default_factory().lr
    assert lr.startswith("* train.lr") and "= 0.5" in lr and f"(default {default})" in lr
    seed = next(line for line in lines if line.split()[0] == "seed")  # unchanged: no star, no default
    assert "default" not in seed.split("Seeds")[0]


@pytest.mark.parametrize("key,want", [("train.learning_rate", "train.lr"), ("train.num_train_epochs", "train.epochs"),
                                      ("train.per_device_train_batch_size", "train.batch_size"),
                                      ("lora.lora_alpha", "lora.alpha"), ("num_rounds", "rounds")])
def test_hugging_face_names_get_a_did_you_mean(key, want, capsys):
    assert main(["validate", "--config", str(DEMO), "--set", f"{key}=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: unknown config key '{key}' (did you mean '{want}'? fedhello's name for it)"


def test_sweep_dry_run_shows_refused_cells(tmp_path, capsys):
    # the demo data has 6 classes: pat-7 cannot be made, pat-2 can
    code = main(["sweep", "--config", str(DEMO), "--strategies", "fedra", "--partitions", "pat-2,pat-7",
                 "--out", str(tmp_path / "sw"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [x for x in err.splitlines() if x.startswith("[")]
    assert len(lines) == 2 and "refused" not in lines[0] and "new" in lines[0]
    assert "refused: " in lines[1] and "classes_per_client" in lines[1]
    assert err.strip().splitlines()[-1] == "error: 1 cells would be refused: pat-7/fedra/seed0"
    assert not (tmp_path / "sw").exists()


def test_data_path_is_stored_absolute_and_old_relative_runs_still_match(tmp_path, monkeypatch):
    from fedhello.run.experiment import holds_config
    from fedhello.run.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.format=csv", "data.path=data/b77"])
    assert cfg.data.path == str(tmp_path / "data" / "b77")
    run = tmp_path / "run"
    run.mkdir()
    old = cfg.to_dict()
    old["data"]["path"] = "data/b77"  # as an older fedhello stored it
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert holds_config(RunDir(run), cfg)  # the same command from the same directory continues it
    monkeypatch.chdir(run)
    assert not holds_config(RunDir(run), cfg)  # from elsewhere the relative path names another folder
    assert build_config({"data": {"format": "csv", "path": "x"}}).data.path == "x"  # the library leaves it


def test_allocate_refuses_what_run_refuses(capsys):
    argv = ["allocate", "--strategy", "fedhello", "--layers", "6", "--budgets", "2,4,6", "--rounds", "3"]
    assert main(argv + ["--scores", "1,2,3,4,5,6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --warmup-rounds (strategy.warmup_rounds, default 50): 50 is more than --rounds (3): "
                   "fedhello would never use its Fisher scores (lower it, e.g. to half the rounds, or run rgd-hla)")
    assert main(["validate", "--config", str(DEMO), "--set", "rounds=3"]) == 2  # demo warm-up 4 > 3
    assert "'strategy.warmup_rounds': 4 is more than rounds (3)" in capsys.readouterr().err
    # with the warm-up within the rounds, the scores are used after it
    assert main(argv + ["--scores", "1,2,3,4,5,100", "--warmup-rounds", "1", "--json"]) == 0
    import json

    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert "fim_tiers" not in rounds[0].get("info", {}) and "fim_tiers" in rounds[1]["info"]


def test_deploy_local_keeps_its_logs_in_the_run_directory(tmp_path):
    from fedhello.flower.deploy import DEPLOY_LOGS, keep_logs

    wd, out = tmp_path / "wd", tmp_path / "run"
    wd.mkdir()
    out.mkdir()
    (wd / "superlink.log").write_text("link\n")
    (wd / "node0.log").write_text("node\n")
    assert keep_logs(wd, out) is None and not (out / DEPLOY_LOGS).exists()  # no run there: nothing written
    (out / "config.yaml").write_text("seed: 0\n")
    dest = keep_logs(wd, out)
    assert dest == out / DEPLOY_LOGS and sorted(p.name for p in dest.iterdir()) == ["node0.log", "superlink.log"]
    assert (dest / "superlink.log").read_text() == "link\n"
