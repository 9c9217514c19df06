"""The README's loading snippet, run as printed, gives the logits of ``fedhello predict``; the export carries
its labels, base model and model card; text-pair adapters predict."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedhello.config import build_config
from fedhello.model import build_backbone, get_state, set_state
from fedhello.model.adapter import export_adapter
from fedhello.report.export import predict_logits
from fedhello.run.experiment import run_experiment
from fedhello.run.rundir import RunDir
from helpers import merged, small_raw

README = Path(__file__).resolve().parents[1] / "README.md"
TEXTS = ["my card was declined at the shop", "how do I top up my account", "the exchange rate looks wrong"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_snippet(adapter: Path, texts: list[str]) -> str:
    """The README's python block that loads an exported adapter, pointed at ``adapter`` and ``texts``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "PeftModel.from_pretrained" in b]
    code, n = re.subn(r'^ADAPTER = ".*"$', f"ADAPTER = {str(adapter)!r}", code, flags=re.M)
    assert n == 1
    code, n = re.subn(r"^texts = \[.*\]$", f"texts = {texts!r}", code, flags=re.M)
    assert n == 1
    return code


def small_cfg(model_path: Path, **over) -> dict:
    return merged(small_raw(model_path, model={"pooling": "mean"}, train={"max_steps": 3}), over, replace=True)


@pytest.fixture(scope="module")
def mean_run(tiny_bert, tmp_path_factory):
    cfg = build_config(small_cfg(tiny_bert))
    out = tmp_path_factory.mktemp("readme") / "run"
    summary = run_experiment(cfg, out)
    return cfg, out, summary


def test_readme_snippet_gives_the_logits_of_fedhello_predict(mean_run):
    cfg, out, _ = mean_run
    code = readme_snippet(out / "adapter", TEXTS)
    code += "\nimport sys\nassert not [m for m in sys.modules if m.startswith('fedhello')]\n"
    code += "print(json.dumps(logits.tolist()))\n"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)  # nothing of this checkout on the path: the snippet stands alone
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=out.parent,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    got = torch.tensor(json.loads(lines[-1]))
    want, labels = predict_logits(out, TEXTS)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # the labels travel with the model: the snippet printed the names of the argmax classes
    assert lines[-2] == str([labels[i] for i in want.argmax(-1).tolist()])
    # the pooling matters: the head over BERT's pooler output gives other logits
    from fedhello.model.adapter import load_exported

    model, tok, _, _ = load_exported(out)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hooks = list(model.get_base_model().bert._forward_hooks)
        model.get_base_model().bert._forward_hooks.clear()
        plain = model(**enc).logits
    assert hooks and not torch.allclose(plain, want, atol=1e-3)


def test_export_carries_labels_base_and_a_model_card(mean_run, tiny_bert):
    from transformers import AutoConfig

    cfg, out, summary = mean_run
    adapter = out / "adapter"
    labels = json.loads((out / "labels.json").read_text())
    conf = AutoConfig.from_pretrained(str(adapter))
    assert conf.num_labels == len(labels)
    assert conf.id2label == dict(enumerate(labels)) and conf.label2id == {n: i for i, n in enumerate(labels)}
    info = json.loads((adapter / "fedhello.json").read_text())
    assert info["base_model"] == info["base_model_path"] == str(tiny_bert) and info["pooling"] == "mean"
    assert (adapter / "tokenizer_config.json").is_file()
    card = (adapter / "README.md").read_text()
    assert "fedra" in card and "generated intent dataset" in card and f"{cfg.rounds} rounds" in card
    assert f"{100 * summary['final_test_accuracy']:.2f}%" in card


def test_minilm_export_names_the_hub_id_and_the_snippet_falls_back_to_the_local_copy(tmp_path):
    """all-MiniLM-L6-v2 (the real backbone, no training): the adapter names its hub id; offline the
    README snippet loads the package's local copy and matches predict."""
    from fedhello.model import resolve_model_path

    cfg = build_config(small_cfg(Path("minilm"), model={"name": "minilm", "max_length": 32}))
    bb = build_backbone(cfg, 3, "cpu")
    state = get_state(bb.model, bb.layermap.all_names)
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}  # LoRA B != 0 too
    (tmp_path / "run").mkdir()
    export_adapter(bb.model, state, tmp_path / "run", ["a", "b", "c"], cfg, bb.pooling, tokenizer=bb.tokenizer)
    adapter = tmp_path / "run" / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    info = json.loads((adapter / "fedhello.json").read_text())
    assert acfg["base_model_name_or_path"] == info["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["base_model_path"] == resolve_model_path("minilm") and bb.pooling == "mean"
    scope: dict = {}
    os.environ["HF_HUB_OFFLINE"] = "1"
    exec(compile(readme_snippet(adapter, TEXTS), "README.md", "exec"), scope)  # noqa: S102 - our own README
    want, _ = predict_logits(tmp_path / "run", TEXTS)
    assert torch.allclose(scope["logits"], want, atol=1e-5, rtol=0)
    set_state(bb.model, state)  # the training-time model (with its pooling hook) agrees too
    enc = bb.tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(bb.model.eval()(**enc).logits, want, atol=1e-5, rtol=0)


def test_text_pair_adapter_predicts_pairs(tiny_bert, tmp_path, capsys):
    from fedhello.cli import main

    rng = np.random.default_rng(0)
    words = ["cat", "dog", "bird", "fish", "tree", "car"]

    def rows(n):
        out = []
        for _ in range(n):
            a = " ".join(rng.choice(words, 3))
            same = bool(rng.random() < 0.5)
            out.append({"q1": a, "q2": a if same else " ".join(rng.choice(words, 3)), "dup": "yes" if same else "no"})
        return out

    d = tmp_path / "data"
    d.mkdir()
    pd.DataFrame(rows(48)).to_csv(d / "train.csv", index=False)
    pd.DataFrame(rows(16)).to_csv(d / "test.csv", index=False)
    cfg = build_config(small_cfg(
        tiny_bert, task="text-pair-classification", partition={"name": "iid"},
        data={"format": "csv", "path": str(d), "text_column": "q1", "text_pair_column": "q2", "label_column": "dup",
              "val_fraction": 0.2},
    ))
    out = tmp_path / "run"
    run_experiment(cfg, out)
    firsts, seconds = ["cat dog", "tree car fish"], ["cat dog", "bird"]
    got, labels = predict_logits(out, firsts, seconds)
    bb = build_backbone(cfg, 2, "cpu")
    set_state(bb.model, RunDir(out).load_checkpoint()["global_state"])
    enc = bb.tokenizer(firsts, seconds, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        want = bb.model.eval()(**enc).logits
    assert labels == ["no", "yes"] and torch.allclose(got, want, atol=1e-5, rtol=0)
    args = ["predict", "--run", str(out), "--device", "cpu"]
    assert main(args + ["--text", firsts[0], "--pair", seconds[0]]) == 0
    label, _, first, second = capsys.readouterr().out.strip().split("\t")
    assert (label, first, second) == (labels[int(want[0].argmax())], firsts[0], seconds[0])
    assert main(args + ["--text", firsts[0]]) == 2
    assert "--pair" in capsys.readouterr().err
