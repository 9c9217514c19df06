"""`fedhello validate` checks a config fully offline; task/data keys are coherent; task data loads."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fedhello.cli import main
from fedhello.config import DataConfig, build_config, load_config
from fedhello.data import load_splits
from fedhello.errors import ConfigError, DataError
from fedhello.run.validate import KNOWN_MODELS, validate_config

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "configs" / "cifar100-vit.yaml"


def validate(capsys, *argv) -> tuple[int, str, str]:
    code = main(["validate", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip()


def test_shipped_paper_configs_validate_offline(capsys):
    for name in ("cifar100-vit", "ledgar-bert", "sst2-bert", "qnli-bert", "qqp-bert", "belebele-eng-xlmr"):
        path = ROOT / "configs" / f"{name}.yaml"
        code, out, err = validate(capsys, "--config", str(path))
        assert code == 0, err
        assert out.startswith(f"{path}: ok (") and "12 layers" in out and "budgets [6, 9, 12]" in out
        assert "not checked offline" in out  # the hub dataset is named, not fetched
    cfg = load_config(CIFAR)
    assert (cfg.rounds, cfg.clients.num_clients, cfg.clients.per_round, cfg.lora.r) == (500, 100, 10, 16)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.task) == (128, 0.01, "image-classification")
    assert load_config(ROOT / "configs" / "ledgar-bert.yaml").eval.select_metric == "macro_f1"


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["clients.budgets=[6,9,13]"], "budget 13 is larger than the model's 12 layers"),
        (["lora.target_modules=[query_lin]"], "lora.target_modules ['query_lin']"),
        (["task=text-classification", "data.format=csv", "data.path=x"], "needs a text model"),
        (["model.name=google-bert/bert-base-uncased"], "image-classification needs a vision model"),
        (["data.format=csv"], "'data.format': 'csv' cannot hold image-classification data"),
        (["eval.select_metric=auc"], "eval.select_metric"),
        (["data.choices_columns=[a,b]"], "only used by task multiple-choice"),
        (["data.format=imagefolder", "data.path={tmp}/missing"], "does not exist"),
    ],
)
def test_validate_errors_name_the_key(tmp_path, capsys, sets, needle):
    argv = ["--config", str(CIFAR)]
    for s in sets:
        argv += ["--set", s.format(tmp=tmp_path)]
    code, out, err = validate(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_validate_unknown_hub_model_is_a_note(capsys):
    code, out, _ = validate(capsys, "--config", str(CIFAR), "--set", "model.name=someone/unknown-vit")
    assert code == 0 and "layers unchecked" in out and "note: model someone/unknown-vit" in out


@pytest.mark.parametrize("name", ["distilbert/distilbert-base-uncased", "microsoft/deberta-v3-base", "Qwen/Qwen2.5-0.5B"])
def test_validate_known_text_families(name):
    raw = yaml.safe_load((ROOT / "configs" / "sst2-bert.yaml").read_text())
    cfg = build_config(raw, [f"model.name={name}", "clients.budgets=[2,4,6]"])
    rep = validate_config(cfg)
    assert rep.num_layers == KNOWN_MODELS[name][1] and rep.model_source == "built-in table"


def test_validate_local_model_and_data(tmp_path, capsys, tiny_bert):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.csv").write_text("a,b,label\nx,y,0\n")
    raw = {"task": "text-pair-classification", "model": {"name": str(tiny_bert)},
           "data": {"format": "csv", "path": str(d), "text_column": "a", "text_pair_column": "b"},
           "clients": {"budgets": [1, 2, 3]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    code, _, err = validate(capsys, "--config", str(p))
    assert code == 2 and "no file for split 'test'" in err
    (d / "test.csv").write_text("a,b,label\nx,y,0\n")
    # the data is read as a run reads it: one class is refused like `run` refuses it
    code, _, err = validate(capsys, "--config", str(p))
    assert code == 2 and "label column 'label' has 1 class" in err
    (d / "train.csv").write_text("a,b,label\n" + "".join(f"x{i},y{i},{i % 2}\n" for i in range(40)) + "p, ,1\n")
    code, out, _ = validate(capsys, "--config", str(p))
    assert code == 0 and "3 layers (local)" in out
    assert "note: data: dropped 1 of 41 training rows (whitespace-only text 1)" in out
    code, _, err = validate(capsys, "--config", str(p), "--set", "clients.budgets=[1,2,4]")
    assert code == 2 and "budget 4 is larger than the model's 3 layers" in err


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"task": "text-pair-classification", "data": {"format": "csv"}}, "data.text_pair_column"),
        ({"task": "text-classification", "data": {"format": "csv", "text_pair_column": "b"}}, "data.text_pair_column"),
        ({"task": "multiple-choice", "data": {"format": "csv"}}, "data.choices_columns"),
        ({"task": "multiple-choice", "data": {"format": "csv", "choices_columns": ["a", "a"]}}, "distinct"),
        ({"task": "multiple-choice", "data": {"format": "demo", "choices_columns": ["a", "b"]}}, "data.format"),
        ({"task": "image-classification", "data": {"format": "jsonl"}}, "data.format"),
        ({"task": "text-classification", "data": {"format": "imagefolder"}}, "data.format"),
        ({"task": "translation"}, "task"),
        ({"eval": {"select_metric": "f1_positive"}, "task": "multiple-choice",
          "data": {"format": "csv", "choices_columns": ["a", "b", "c"]}}, "f1_positive needs a binary task"),
    ],
)
def test_task_data_coherence(raw, needle):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------- data of the tasks


def test_carved_test_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"p": f"passage {i}", "q": "q?", "o1": "x", "o2": "y", "ans": 1 + i % 2} for i in range(50)]
    pd.DataFrame(rows).to_csv(tmp_path / "all.csv", index=False)
    cfg = DataConfig(format="csv", path=str(tmp_path), split_train="all", test_fraction=0.2, text_column="p",
                     text_pair_column="q", choices_columns=["o1", "o2"], choices_label_base=1, label_column="ans")
    s = load_splits(cfg, seed=3, task="multiple-choice")
    assert (len(s.train), len(s.test)) == (40, 10)
    assert not set(s.train["text"]) & set(s.test["text"])
    assert load_splits(cfg, seed=3, task="multiple-choice").test["text"] == s.test["text"]
    assert load_splits(cfg, seed=4, task="multiple-choice").test["text"] != s.test["text"]
    # 1-based answers become option indices; every row's options kept in order
    for t, y in zip(s.train["text"], s.train["label"]):
        assert y == (int(t.split()[1]) % 2)
    assert s.train[0]["choices"] == ["x", "y"] and s.label_names == ["o1", "o2"]


def test_text_pairs_int_labels_and_missing_rows(tmp_path):
    pd.DataFrame({"a": ["x", "y", None, "w"], "b": ["one", "two", "three", None], "y": [5, 7, 5, 7]}).to_csv(
        tmp_path / "train.csv", index=False)
    pd.DataFrame({"a": ["x", "z"], "b": ["1", "2"], "y": [7, 9]}).to_csv(tmp_path / "test.csv", index=False)
    cfg = DataConfig(format="auto", path=str(tmp_path), text_column="a", text_pair_column="b", label_column="y")
    s = load_splits(cfg, seed=0, task="text-pair-classification")
    assert s.train.column_names == ["text", "text_pair", "label"]
    assert (s.train["text"], s.train["text_pair"], s.train["label"]) == (["x", "y"], ["one", "two"], [0, 1])
    assert s.label_names == ["5", "7"] and (s.dropped_train, s.dropped_test) == (2, 1)
    assert (s.test["text"], s.test["label"]) == (["x"], [1])
    with pytest.raises(DataError, match="data.text_pair_column: column 'bb'"):
        load_splits(cfg.model_copy(update={"text_pair_column": "bb"}), seed=0, task="text-pair-classification")


def test_imagefolder_errors_and_labels(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for split, classes in (("train", ["cat", "dog"]), ("test", ["cat", "dog", "eel"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((5, 7, 3), 40 * i, dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    cfg = DataConfig(format="imagefolder", path=str(root))
    s = load_splits(cfg, seed=0, task="image-classification")
    assert s.label_names == ["cat", "dog"] and s.train["label"] == [0, 0, 1, 1]
    assert (len(s.test), s.dropped_test) == (4, 2)  # the unknown class eel is dropped
    assert s.train[0]["image"].size == (7, 5)
    with pytest.raises(DataError, match="missing split folder"):
        load_splits(cfg.model_copy(update={"split_test": "val"}), seed=0, task="image-classification")
