"""Every task end to end: 2 rounds on a tiny random-weight model with data the test writes.

text-pair-classification on RoBERTa (CSV), text-classification on a Llama-style
decoder whose tokenizer has no padding token (JSONL), multiple-choice on BERT
(parquet), image-classification on ViT with its own image processor (a folder of
PNGs of scikit-learn's 8x8 digits).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.run.experiment import prepare, run_experiment
from fedhello.model import resolve_model_path
from fedhello.run.rundir import RunDir
from helpers import copy_tokenizer

SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def save(model, path: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    import transformers as T

    path = tmp_path_factory.mktemp("tiny-roberta")
    torch.manual_seed(0)
    cfg = T.RobertaConfig(vocab_size=30522, num_hidden_layers=2, max_position_embeddings=72, pad_token_id=0,
                          type_vocab_size=2, **SMALL)
    save(T.RobertaForSequenceClassification(cfg), path)
    copy_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A Llama-style decoder classifier; its tokenizer has an end-of-sequence token but no padding token."""
    import transformers as T

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=30522, num_hidden_layers=3, num_key_value_heads=2, max_position_embeddings=64,
                        pad_token_id=None, **SMALL)
    save(T.LlamaForSequenceClassification(cfg), path)
    tok = T.AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tok.pad_token = None
    tok.eos_token = "[SEP]"
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.save_pretrained(path)
    assert T.AutoTokenizer.from_pretrained(path).pad_token is None
    return path


@pytest.fixture(scope="module")
def tiny_bert_mc(tmp_path_factory) -> Path:
    import transformers as T

    path = tmp_path_factory.mktemp("tiny-bert-mc")
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, num_hidden_layers=2, max_position_embeddings=64, **SMALL)
    save(T.BertForMultipleChoice(cfg), path)
    copy_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    import transformers as T

    path = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=16, patch_size=4, num_channels=3, num_hidden_layers=4, **SMALL)
    save(T.ViTForImageClassification(cfg), path)
    T.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def base(model: Path, task: str, data: dict, **kw) -> dict:
    raw = {
        "seed": 1,
        "rounds": 2,
        "task": task,
        "model": {"name": str(model), "max_length": 48},
        "lora": {"r": 4, "alpha": 8},
        "data": dict({"val_fraction": 0.2}, **data),
        "partition": {"name": "iid"},
        "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 2]},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 8, "lr": 0.01},
        "eval": {"every": 1, "batch_size": 16},
        "head": {"train": "federated", "init": "random"},  # uploads below count the head
    }
    for k, v in kw.items():
        raw[k] = dict(raw[k], **v) if isinstance(v, dict) else v
    return raw


def check_run(out: Path, cfg, n_classes: int, lora_per_layer: int, head: int) -> tuple[list[dict], dict]:
    """The run directory's contract for any task."""
    rd = RunDir(out)
    recs = rd.read_metrics()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in recs] == [0, 1]
    names = ["accuracy", "macro_f1", "micro_f1"] + (["f1_positive"] if n_classes == 2 else [])
    for r in recs:
        for split in ("val", "test"):
            for m in names:
                assert 0 <= r[f"{split}_{m}"] <= 1, (split, m)
            # single-label classification: pooled F1 equals accuracy
            assert r[f"{split}_micro_f1"] == pytest.approx(r[f"{split}_accuracy"])
            assert (f"{split}_f1_positive" in r) == (n_classes == 2)
        for c in r["clients"]:
            budget = cfg.clients.budgets[c["group"]]
            assert c["upload_bytes"] == 4 * (budget * lora_per_layer + head)
    for m in names:
        assert summary[f"final_test_{m}"] == recs[-1][f"test_{m}"]
    sel = f"val_{cfg.eval.select_metric}"
    best = max(recs, key=lambda r: r[sel])
    assert summary["best_val_round"] == best["round"] and summary["select_metric"] == cfg.eval.select_metric
    assert summary["test_accuracy_at_best_val"] == best["test_accuracy"]
    return recs, summary


# ------------------------------------------------------------------------------- text pairs


def pair_rows(n: int, rng) -> list[dict]:
    words = ["cat", "dog", "bird", "fish", "tree", "car", "house", "river"]
    rows = []
    for _ in range(n):
        a = " ".join(rng.choice(words, 4))
        same = bool(rng.random() < 0.5)
        b = a if same else " ".join(rng.choice(words, 4))
        rows.append({"q1": a, "q2": b, "dup": "yes" if same else "no"})
    return rows


def test_text_pair_classification_roberta_csv(tmp_path, tiny_roberta, capsys):
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    pd.DataFrame(pair_rows(60, rng)).to_csv(d / "train.csv", index=False)
    pd.DataFrame(pair_rows(20, rng)).to_csv(d / "test.csv", index=False)
    raw = base(tiny_roberta, "text-pair-classification",
               {"format": "csv", "path": str(d), "text_column": "q1", "text_pair_column": "q2", "label_column": "dup"},
               eval={"select_metric": "f1_positive", "positive_label": "yes"})
    cfg = build_config(raw)
    exp = prepare(cfg)
    # both texts reach the model: [CLS] a [SEP] b [SEP] with token types 0 then 1
    assert exp.label_names == ["no", "yes"] and exp.positive_class == 1
    tt = exp.train.features["token_type_ids"][0]
    assert tt[0] == 0 and tt[-1] == 1 and exp.train.features["input_ids"][0].count(102) == 2
    assert main(["run", "--config", str(write_yaml(tmp_path, raw)), "--out", str(tmp_path / "run")]) == 0
    assert "final test f1_positive" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["no", "yes"]
    # LoRA r=4 on query and value (32 wide): 4 tensors of 4x32; head: dense 32x32+32, out_proj 2x32+2
    check_run(tmp_path / "run", cfg, 2, lora_per_layer=4 * 4 * 32, head=32 * 32 + 32 + 2 * 32 + 2)


# ------------------------------------------------------------------------------- decoder LM


def test_text_classification_llama_jsonl_pads_with_eos(tmp_path, tiny_llama):
    rng = np.random.default_rng(1)
    d = tmp_path / "data"
    d.mkdir()
    topics = {"sport": ["goal", "match", "team"], "food": ["bread", "soup", "apple"], "tech": ["chip", "code", "disk"]}
    for split, n in (("train", 60), ("test", 21)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                lab = list(topics)[i % 3]
                words = list(rng.choice(topics[lab], 2 + i % 4))
                f.write(json.dumps({"sentence": " ".join(words), "topic": lab}) + "\n")
    raw = base(tiny_llama, "text-classification",
               {"format": "jsonl", "path": str(d), "text_column": "sentence", "label_column": "topic"},
               eval={"select_metric": "macro_f1"})
    cfg = build_config(raw)
    exp = prepare(cfg)
    tok, model = exp.backbone.tokenizer, exp.model
    sep = tok.convert_tokens_to_ids("[SEP]")
    assert tok.pad_token_id == sep and model.config.pad_token_id == sep == exp.train.pad_token_id
    assert "token_type_ids" not in exp.train.features  # the decoder takes none
    assert exp.layermap.num_layers == 3
    # padding does not change a decoder's prediction: it reads the last real token
    from fedhello.data.batching import collate

    i_short, i_long = int(np.argmin(exp.test.lengths)), int(np.argmax(exp.test.lengths))
    with torch.no_grad():
        alone = model(**{k: v for k, v in collate(exp.test, [i_short]).items() if k != "labels"}).logits
        padded = model(**{k: v for k, v in collate(exp.test, [i_short, i_long]).items() if k != "labels"}).logits
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    run_experiment(cfg, tmp_path / "run")
    # q_proj 32->32 and v_proj 32->32 (2 kv heads of 16): 4 tensors of 4x32; head: score 3x32, no bias
    check_run(tmp_path / "run", cfg, 3, lora_per_layer=4 * 4 * 32, head=3 * 32)


# ------------------------------------------------------------------------------- multiple choice


def mc_rows(n: int, rng) -> list[dict]:
    colors = ["red", "blue", "green", "black", "white", "pink"]
    rows = []
    for _ in range(n):
        c = rng.permutation(colors)[:3]
        k = int(rng.integers(0, 3))
        rows.append({"passage": f"the box is {c[k]} and small", "question": "what colour is the box?",
                     "a": c[0], "b": c[1], "c": c[2], "answer": str(k + 1)})
    return rows


def test_multiple_choice_bert_parquet(tmp_path, tiny_bert_mc):
    rng = np.random.default_rng(2)
    d = tmp_path / "data"
    d.mkdir()
    train = mc_rows(48, rng)
    train.append(dict(train[0], answer="4"))  # no 4th option: dropped
    pd.DataFrame(train).to_parquet(d / "train.parquet", index=False)
    pd.DataFrame(mc_rows(18, rng)).to_parquet(d / "test.parquet", index=False)
    raw = base(tiny_bert_mc, "multiple-choice",
               {"format": "parquet", "path": str(d), "text_column": "passage", "text_pair_column": "question",
                "choices_columns": ["a", "b", "c"], "choices_label_base": 1, "label_column": "answer"},
               strategy={"name": "fim-hla", "fim_source": "server", "fim_samples": 6, "fim_every": 1})
    cfg = build_config(raw)
    exp = prepare(cfg)
    assert exp.label_names == ["a", "b", "c"]
    from fedhello.data.batching import collate

    batch = collate(exp.train, [0, 1, 2])
    assert batch["input_ids"].shape[:2] == (3, 3) and batch["labels"].shape == (3,)
    # every sample: 3 options "passage [SEP] question option"; the labelled option (1-based
    # answer minus 1) is the colour the passage names
    tok = exp.backbone.tokenizer
    for opts, y in zip(exp.train.features["input_ids"], exp.train.labels):
        words = [tok.decode(x, skip_special_tokens=True).split() for x in opts]
        assert len(words) == 3 and len({w[-1] for w in words}) == 3
        assert words[y][3] == words[y][-1] and all(w[3] != w[-1] for k, w in enumerate(words) if k != y)
    assert len(exp.train) + len(exp.val) + (len(exp.calib) if exp.calib is not None else 0) == 48
    run_experiment(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["a", "b", "c"]
    # head: classifier 1x32 + 1 (one score per option)
    recs, _ = check_run(tmp_path / "run", cfg, 3, lora_per_layer=4 * 4 * 32, head=32 + 1)
    assert len(recs[0]["fim_scores"]) == 2 and all(s > 0 for s in recs[0]["fim_scores"])


# ------------------------------------------------------------------------------- images


def write_digits(root: Path, per_class_train: int = 16, per_class_test: int = 6, classes=(0, 1, 2)) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        imgs = digits.images[digits.target == c]
        for split, part in (("train", imgs[:per_class_train]),
                            ("test", imgs[per_class_train : per_class_train + per_class_test])):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(part):
                Image.fromarray((im * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")


def test_image_classification_vit_imagefolder(tmp_path, tiny_vit):
    write_digits(tmp_path / "digits")
    # Fed-HeLLo with Fisher scores computed by the clients on their (un-augmented) images
    raw = base(tiny_vit, "image-classification", {"format": "imagefolder", "path": str(tmp_path / "digits")},
               strategy={"name": "fedhello", "warmup_rounds": 1, "fim_every": 1, "fim_source": "clients",
                         "fim_samples": 8})
    cfg = build_config(raw)
    exp = prepare(cfg)
    assert exp.label_names == ["digit0", "digit1", "digit2"]
    assert exp.backbone.image_processor is not None and exp.layermap.num_layers == 4
    from fedhello.data.batching import collate

    # evaluation: resized to the processor's 16x16 and normalised to [-1, 1]; deterministic
    a = collate(exp.test, [0, 1])
    assert a["pixel_values"].shape == (2, 3, 16, 16)
    assert a["pixel_values"].min() >= -1 and a["pixel_values"].max() <= 1
    assert torch.equal(a["pixel_values"], collate(exp.test, [0, 1])["pixel_values"])
    # training: augmented (random crop + flip), reproducible under the client's seed
    torch.manual_seed(5)
    t1 = collate(exp.train, [0, 1, 2, 3])["pixel_values"]
    torch.manual_seed(5)
    t2 = collate(exp.train, [0, 1, 2, 3])["pixel_values"]
    assert torch.equal(t1, t2) and t1.shape == (4, 3, 16, 16)
    assert not torch.equal(t1, collate(exp.train.without_augmentation(), [0, 1, 2, 3])["pixel_values"])
    code = main(["run", "--config", str(write_yaml(tmp_path, raw)), "--out", str(tmp_path / "run")])
    assert code == 0
    # q_proj/v_proj 32 wide, r=4: 4 tensors of 4x32; head: classifier 3x32 + 3
    recs, _ = check_run(tmp_path / "run", cfg, 3, lora_per_layer=4 * 4 * 32, head=3 * 32 + 3)
    assert recs[1]["fim_scores"] is not None and len(recs[1]["fim_scores"]) == 4
    assert all(s > 0 for s in recs[1]["fim_scores"])


def write_yaml(tmp_path: Path, raw: dict) -> Path:
    import yaml

    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p
