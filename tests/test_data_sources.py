import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import datasets
from datasets import ClassLabel, Dataset, Features, Value

from fedhello.config import DataConfig
from fedhello.data import DEMO_LABEL_NAMES, carve, load_splits, make_demo_dataset, make_demo_splits
from fedhello.errors import DataError

# the `shared` folder beside the repository (repo root = parents[1] of this file)
BANKING77 = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "banking77").resolve()


# ----------------------------------------------------------------------------- helpers


def write_csv(path: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_parquet(path: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_parquet(path, index=False)


TRAIN_STR = [
    {"text": "t0", "label": "beta"},
    {"text": "t1", "label": "alpha"},
    {"text": "t2", "label": "gamma"},
    {"text": "t3", "label": "alpha"},
    {"text": "t4", "label": "beta"},
]
TEST_STR = [
    {"text": "u0", "label": "gamma"},
    {"text": "u1", "label": "zeta"},  # unknown: dropped
    {"text": "u2", "label": "alpha"},
]
TRAIN_INT = [
    {"text": "t0", "label": 10},
    {"text": "t1", "label": 2},
    {"text": "t2", "label": 33},
    {"text": "t3", "label": 2},
]
TEST_INT = [{"text": "u0", "label": 33}, {"text": "u1", "label": 7}, {"text": "u2", "label": 10}]


def cols(ds: Dataset) -> tuple[list[str], list[int]]:
    return ds["text"], ds["label"]


# ----------------------------------------------------------------------------- demo


def test_demo_dataset_deterministic_and_shaped():
    a = make_demo_dataset(300, 7)
    b = make_demo_dataset(300, 7)
    c = make_demo_dataset(300, 8)
    assert a == b
    assert a != c
    texts, labels = a
    assert len(texts) == len(labels) == 300
    assert set(labels) == set(DEMO_LABEL_NAMES)
    assert len(DEMO_LABEL_NAMES) == 6
    assert all(5 <= len(t.split()) <= 15 for t in texts)
    # roughly balanced (balanced before noise / ambiguity relabelling)
    assert min(Counter(labels).values()) >= 30
    # not trivially separable: the same word appears in several classes
    card_classes = {y for t, y in zip(texts, labels) if "card" in t.lower().split()}
    assert len(card_classes) >= 4


def test_demo_splits_sizes_and_distinct_seeds():
    (tr_x, tr_y), (te_x, te_y) = make_demo_splits(1200, 0)
    assert (len(tr_x), len(tr_y), len(te_x), len(te_y)) == (900, 900, 300, 300)
    assert make_demo_splits(1200, 0) == ((tr_x, tr_y), (te_x, te_y))
    # test drawn with another seed: not a copy of the first training rows
    assert te_x != tr_x[:300]
    (tr2, _), _ = make_demo_splits(1200, 1)
    assert tr2 != tr_x


def test_load_splits_demo():
    s = load_splits(DataConfig(format="demo", demo_samples=400), seed=3)
    assert s.train.column_names == ["text", "label"]
    assert s.test.column_names == ["text", "label"]
    assert s.train.features == Features({"text": Value("string"), "label": Value("int64")})
    assert (len(s.train), len(s.test)) == (300, 100)
    assert s.label_names == sorted(DEMO_LABEL_NAMES)
    assert s.dropped_test == 0
    (tr_x, tr_y), _ = make_demo_splits(400, 3)
    assert s.train["text"] == tr_x
    assert [s.label_names[i] for i in s.train["label"]] == tr_y


# ----------------------------------------------------------------------------- local files


@pytest.mark.parametrize(
    "fmt,writer,ext",
    [("csv", write_csv, "csv"), ("jsonl", write_jsonl, "jsonl"), ("jsonl", write_jsonl, "json"),
     ("parquet", write_parquet, "parquet")],
)
def test_local_string_labels(tmp_path, fmt, writer, ext):
    writer(tmp_path / f"train.{ext}", TRAIN_STR)
    writer(tmp_path / f"test.{ext}", TEST_STR)
    for f in (fmt, "auto"):
        s = load_splits(DataConfig(format=f, path=str(tmp_path)), seed=0)
        assert s.label_names == ["alpha", "beta", "gamma"]
        assert cols(s.train) == (["t0", "t1", "t2", "t3", "t4"], [1, 0, 2, 0, 1])
        assert cols(s.test) == (["u0", "u2"], [2, 0])
        assert s.dropped_test == 1
        assert s.train.column_names == ["text", "label"]


@pytest.mark.parametrize(
    "fmt,writer,ext", [("csv", write_csv, "csv"), ("jsonl", write_jsonl, "jsonl"), ("parquet", write_parquet, "parquet")]
)
def test_local_int_labels_sorted_numerically(tmp_path, fmt, writer, ext):
    writer(tmp_path / f"train.{ext}", TRAIN_INT)
    writer(tmp_path / f"test.{ext}", TEST_INT)
    s = load_splits(DataConfig(format=fmt, path=str(tmp_path)), seed=0)
    assert s.label_names == ["2", "10", "33"]
    assert cols(s.train) == (["t0", "t1", "t2", "t3"], [1, 0, 2, 0])
    assert cols(s.test) == (["u0", "u2"], [2, 1])
    assert s.dropped_test == 1


def test_label_column_candidates_and_text_column(tmp_path):
    rows = [{"utterance": f"x{i}", "intent": ["a", "b"][i % 2], "label": 9} for i in range(4)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:2])
    cfg = DataConfig(format="csv", path=str(tmp_path), text_column="utterance", label_column=["category", "intent", "label"])
    s = load_splits(cfg, seed=0)
    assert s.label_names == ["a", "b"]
    assert cols(s.train) == (["x0", "x1", "x2", "x3"], [0, 1, 0, 1])
    # a plain string picks exactly that column: "label" has a single class here
    with pytest.raises(DataError, match=r"has 1 class; need at least 2"):
        load_splits(cfg.model_copy(update={"label_column": "label"}), seed=0)


def test_custom_split_names(tmp_path):
    write_jsonl(tmp_path / "fit.jsonl", TRAIN_STR)
    write_jsonl(tmp_path / "holdout.jsonl", TEST_STR)
    s = load_splits(DataConfig(format="auto", path=str(tmp_path), split_train="fit", split_test="holdout"), seed=0)
    assert (len(s.train), len(s.test), s.label_names) == (5, 2, ["alpha", "beta", "gamma"])


def test_classlabel_parquet_maps_to_names(tmp_path):
    feats = Features({"sentence": Value("string"), "y": ClassLabel(names=["zebra", "apple", "mango"])})
    Dataset.from_dict({"sentence": ["s0", "s1", "s2", "s3"], "y": [0, 1, 2, 0]}, features=feats).to_parquet(
        str(tmp_path / "train.parquet")
    )
    Dataset.from_dict({"sentence": ["q0", "q1"], "y": [2, 1]}, features=feats).to_parquet(
        str(tmp_path / "test.parquet")
    )
    s = load_splits(DataConfig(format="parquet", path=str(tmp_path), text_column="sentence", label_column="y"), 0)
    assert s.label_names == ["apple", "mango", "zebra"]
    assert cols(s.train) == (["s0", "s1", "s2", "s3"], [2, 0, 1, 2])
    assert cols(s.test) == (["q0", "q1"], [1, 0])


def test_hub_branch_through_local_folder(tmp_path, monkeypatch):
    # load_dataset(<folder>) goes through the same code as a hub name
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    data = tmp_path / "ds"
    data.mkdir()
    write_csv(data / "train.csv", TRAIN_STR)
    write_csv(data / "test.csv", TEST_STR)
    s = load_splits(DataConfig(format="hub", name=str(data)), seed=0)
    assert s.label_names == ["alpha", "beta", "gamma"]
    assert (len(s.train), len(s.test), s.dropped_test) == (5, 2, 1)
    with pytest.raises(DataError, match=r"has no split 'validation' \(splits: train, test\)"):
        load_splits(DataConfig(format="hub", name=str(data), split_test="validation"), seed=0)


def test_max_samples_seeded_subset(tmp_path):
    rows = [{"text": f"t{i}", "label": f"c{i % 3}"} for i in range(50)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:20])
    cfg = DataConfig(format="csv", path=str(tmp_path), max_train_samples=10, max_test_samples=5)
    s = load_splits(cfg, seed=4)
    rng = np.random.default_rng(4)
    want_train = np.sort(rng.choice(50, size=10, replace=False))
    want_test = np.sort(rng.choice(20, size=5, replace=False))
    assert s.train["text"] == [f"t{i}" for i in want_train]
    assert s.test["text"] == [f"t{i}" for i in want_test]
    assert load_splits(cfg, seed=4).train["text"] == s.train["text"]
    assert load_splits(cfg, seed=5).train["text"] != s.train["text"]
    # larger than the data: everything
    s = load_splits(cfg.model_copy(update={"max_train_samples": 500}), seed=4)
    assert len(s.train) == 50


def test_label_set_fixed_by_subsampled_train(tmp_path):
    # class "rare" only in a row the subset leaves out -> not a label, test row dropped
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(30)] + [{"text": "r", "label": "rare"}]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", [{"text": "q", "label": "rare"}, {"text": "p", "label": "a"}])
    seed = next(s for s in range(100) if 30 not in np.random.default_rng(s).choice(31, size=10, replace=False))
    s = load_splits(DataConfig(format="csv", path=str(tmp_path), max_train_samples=10), seed=seed)
    assert s.label_names == ["a", "b"]
    assert (s.test["text"], s.dropped_test) == (["p"], 1)


def test_missing_values_are_dropped(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,\n,y\nc,y\n")
    (tmp_path / "test.csv").write_text("text,label\nd,x\ne,\n")
    s = load_splits(DataConfig(format="csv", path=str(tmp_path)), seed=0)
    assert cols(s.train) == (["a", "c"], [0, 1])
    assert (s.dropped_train, s.dropped_test, s.test["text"]) == (2, 1, ["d"])


@pytest.mark.skipif(not BANKING77.is_dir(), reason=f"Banking77 copy not present at {BANKING77} (only on the dev machine)")
def test_banking77_copy_loads():
    s = load_splits(DataConfig(format="auto", path=str(BANKING77), label_column=["label", "category"]), seed=0)
    assert (len(s.train), len(s.test), len(s.label_names), s.dropped_test) == (10003, 3080, 77, 0)
    assert s.train[0] == {"text": "I am still waiting on my card?", "label": s.label_names.index("card_arrival")}
    assert sorted(s.label_names) == s.label_names


# ----------------------------------------------------------------------------- errors


def test_error_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    for fmt in ("csv", "auto"):
        with pytest.raises(DataError, match="does not exist") as e:
            load_splits(DataConfig(format=fmt, path=str(missing)), 0)
        assert str(missing) in str(e.value) and "\n" not in str(e.value)


def test_error_path_is_a_file(tmp_path):
    f = tmp_path / "train.csv"
    write_csv(f, TRAIN_STR)
    with pytest.raises(DataError, match="is not a directory") as e:
        load_splits(DataConfig(format="csv", path=str(f)), 0)
    assert str(f) in str(e.value)


def test_error_missing_split_file(tmp_path):
    write_csv(tmp_path / "train.csv", TRAIN_STR)
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), 0)
    assert str(e.value) == f"missing split file {tmp_path / 'test.csv'}"
    write_jsonl(tmp_path / "train.jsonl", TRAIN_STR)
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="jsonl", path=str(tmp_path)), 0)
    assert str(e.value) == f"missing split file {tmp_path / 'test.jsonl'} (or {tmp_path / 'test.json'})"


def test_error_auto_finds_nothing(tmp_path):
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="auto", path=str(tmp_path)), 0)
    msg = str(e.value)
    assert msg.startswith("data.path: no training file (train.csv, train.jsonl, train.json, train.parquet)")
    assert str(tmp_path) in msg
    with pytest.raises(DataError, match="needs data.path .* or data.name"):
        load_splits(DataConfig(format="auto"), 0)
    with pytest.raises(DataError, match="data.path must be set for data.format parquet"):
        load_splits(DataConfig(format="parquet"), 0)
    with pytest.raises(DataError, match="data.name must be set for data.format hub"):
        load_splits(DataConfig(format="hub"), 0)


def test_error_hub_unreachable():
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="hub", name="nobody/surely-not-a-dataset"), 0)
    assert str(e.value).startswith("data.name: cannot load hub dataset nobody/surely-not-a-dataset:")
    assert "\n" not in str(e.value)


def test_error_missing_text_column(tmp_path):
    write_csv(tmp_path / "train.csv", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    write_csv(tmp_path / "test.csv", [{"sentence": "a", "label": "x"}])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), 0)
    assert str(e.value) == (
        f"data.text_column: column 'text' not found in {tmp_path / 'train.csv'} (columns: sentence, label)"
    )


def test_error_missing_label_column(tmp_path):
    write_csv(tmp_path / "train.csv", TRAIN_STR)
    write_csv(tmp_path / "test.csv", [{"text": "u", "category": "alpha"}])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), 0)
    assert str(e.value) == (
        f"data.label_column: column 'label' not found in {tmp_path / 'test.csv'} (columns: text, category)"
    )
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path), label_column=["intent", "y"]), 0)
    assert str(e.value) == (
        f"data.label_column: none of the columns 'intent', 'y' found in {tmp_path / 'train.csv'} "
        f"(columns: text, label)"
    )


@pytest.mark.parametrize("ext,content", [("csv", "text,label\n"), ("csv", ""), ("jsonl", "\n"), ("json", "[]")])
def test_error_empty_split(tmp_path, ext, content):
    fmt = "csv" if ext == "csv" else "jsonl"
    write = write_csv if ext == "csv" else write_jsonl
    write(tmp_path / f"train.{ext}", TRAIN_STR)
    (tmp_path / f"test.{ext}").write_text(content)
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format=fmt, path=str(tmp_path)), 0)
    assert str(e.value) == f"{tmp_path / f'test.{ext}'}: split is empty (no rows)"


def test_error_empty_parquet(tmp_path):
    write_parquet(tmp_path / "train.parquet", TRAIN_STR)
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(
        tmp_path / "test.parquet", index=False
    )
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="parquet", path=str(tmp_path)), 0)
    assert str(e.value) == f"{tmp_path / 'test.parquet'}: split is empty (no rows)"


def test_error_test_split_empty_after_dropping(tmp_path):
    write_csv(tmp_path / "train.csv", TRAIN_STR)
    write_csv(tmp_path / "test.csv", [{"text": "u", "label": "omega"}])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), 0)
    assert str(e.value) == (
        f"{tmp_path / 'test.csv'}: split is empty after dropping rows whose label is not a training label"
    )


def test_error_single_class(tmp_path):
    write_csv(tmp_path / "train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    write_csv(tmp_path / "test.csv", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), 0)
    assert str(e.value) == f"{tmp_path / 'train.csv'}: label column 'label' has 1 class; need at least 2"


def test_error_unreadable_file(tmp_path):
    (tmp_path / "train.parquet").write_text("this is not parquet\nreally not\n")
    write_parquet(tmp_path / "test.parquet", TEST_STR)
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="parquet", path=str(tmp_path)), 0)
    assert str(e.value).startswith(f"{tmp_path / 'train.parquet'}: cannot read it as parquet:")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- carve


def test_carve():
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 4 for i in range(20)]})
    rest, carved = carve(ds, 6, seed=1)
    perm = np.random.default_rng(1).permutation(20)
    assert carved["text"] == [f"t{i}" for i in sorted(perm[:6])]
    assert rest["text"] == [f"t{i}" for i in sorted(perm[6:])]
    assert carve(ds, 6, seed=1)[1]["text"] == carved["text"]
    assert carve(ds, 6, seed=2)[1]["text"] != carved["text"]
    rest0, carved0 = carve(ds, 0, seed=1)
    assert (len(rest0), len(carved0)) == (20, 0)
    with pytest.raises(DataError, match="cannot carve 20 rows out of a training split of 20 rows"):
        carve(ds, 20, seed=1)


# ----------------------------------------------------------------------------- dropped rows, ragged files


def test_dropped_rows_are_counted_by_reason_and_blank_texts_dropped(tmp_path):
    train = [
        {"text": "keep a", "label": "x"}, {"text": "keep b", "label": "y"}, {"text": "keep c", "label": "x"},
        {"text": "no label", "label": None}, {"text": "   ", "label": "y"}, {"text": "\t\n", "label": "x"},
        {"text": None, "label": "y"}, {"text": "blank label", "label": "  "},
    ]
    test = [{"text": "u0", "label": "x"}, {"text": " ", "label": "y"}, {"text": "u2", "label": "zeta"}]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    s = load_splits(DataConfig(format="jsonl", path=str(tmp_path)), seed=0)
    assert s.train["text"] == ["keep a", "keep b", "keep c"]
    assert s.drops == {"train": {"no_label": 2, "blank_text": 2, "no_input": 1},
                       "test": {"blank_text": 1, "unknown_label": 1}}
    assert (s.dropped_train, s.dropped_test) == (5, 2)
    from fedhello.data.sources import drops_line

    assert drops_line(s) == (
        "data: dropped 5 of 8 training rows (whitespace-only text 2, no text/input 1, no label 2) and "
        "2 of 3 test rows (whitespace-only text 1, label not among the training labels 1)"
    )


def test_text_pair_blank_second_text_is_dropped(tmp_path):
    rows = [{"a": "p", "b": "q", "label": 0}, {"a": "p", "b": "  ", "label": 1}, {"a": "r", "b": "s", "label": 1}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:1])
    s = load_splits(DataConfig(format="jsonl", path=str(tmp_path), text_column="a", text_pair_column="b"), seed=0,
                    task="text-pair-classification")
    assert len(s.train) == 2 and s.drops["train"] == {"blank_text": 1}


@pytest.mark.parametrize("line, fields", [("too,many,fields,here", 4), ("lonely", 1)])
def test_ragged_csv_names_the_file_and_line(tmp_path, line, fields):
    rows = ["text,label", "a,x", "b,y", line, "c,x"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    write_csv(tmp_path / "test.csv", TEST_STR)
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(format="csv", path=str(tmp_path)), seed=0)
    assert str(e.value) == (f"{tmp_path / 'train.csv'}: line 4 has {fields} fields, the header has 2 "
                            "(quote a text that holds a comma)")


def test_quoted_commas_and_newlines_are_not_ragged(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"a, b",x\n"multi\nline",y\nc,x\n')
    (tmp_path / "test.csv").write_text("text,label\nd,x\n")
    s = load_splits(DataConfig(format="csv", path=str(tmp_path)), seed=0)
    assert s.train["text"] == ["a, b", "multi\nline", "c"]


def test_fingerprint_changes_with_rows_and_labels(tmp_path):
    from fedhello.data.sources import fingerprint

    write_csv(tmp_path / "train.csv", TRAIN_STR)
    write_csv(tmp_path / "test.csv", TEST_STR)
    cfg = DataConfig(format="csv", path=str(tmp_path))
    a = fingerprint(load_splits(cfg, seed=0))
    assert a == fingerprint(load_splits(cfg, seed=0))  # stable
    # a change anywhere counts, the last row too (not only what a summary of the column shows)
    many = [{"text": f"t{i}", "label": ["alpha", "gamma"][i % 2]} for i in range(50)]
    write_csv(tmp_path / "train.csv", many)
    a = fingerprint(load_splits(cfg, seed=0))
    write_csv(tmp_path / "train.csv", many[:-1] + [dict(many[-1], text="changed")])
    b = fingerprint(load_splits(cfg, seed=0))
    assert (b["labels"], b["test"]) == (a["labels"], a["test"]) and b["train"] != a["train"]
