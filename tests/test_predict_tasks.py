"""``fedhello predict`` and the model card's loading snippet for multiple-choice and image adapters.

A tiny run of each task (random-weight BERT multiple-choice, ViT on 16x16 PNG digits); the
scores ``predict`` gives must be the logits the run's own evaluation computes for the same
inputs (the engine's collated batch through the model with the final global state), and
the model card's snippet (transformers + PEFT only) must give them too.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.data.batching import collate
from fedhello.model import resolve_model_path, set_state
from fedhello.report.export import predict_logits
from fedhello.run.experiment import prepare, run_experiment
from fedhello.run.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def tiny_run(model: Path, task: str, data: dict, out: Path):
    cfg = build_config({
        "seed": 3, "rounds": 1, "task": task,
        "model": {"name": str(model), "max_length": 40},
        "lora": {"r": 4, "alpha": 8},
        "data": dict({"val_fraction": 0.2}, **data),
        "partition": {"name": "iid"},
        "clients": {"num_clients": 2, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 2]},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 8, "lr": 0.05, "max_steps": 2},
        "head": {"train": "federated", "init": "random"},
    })
    run_experiment(cfg, out)
    exp = prepare(cfg)
    state = RunDir(out).load_checkpoint()["global_state"]
    set_state(exp.model, state)
    exp.model.eval()
    return exp


def engine_logits(exp, idx) -> torch.Tensor:
    """What the run's evaluation computes for samples ``idx`` of the test split."""
    batch = {k: v for k, v in collate(exp.test, idx).items() if k != "labels"}
    with torch.no_grad():
        return exp.model(**batch).logits.float()


def card_snippet(adapter: Path, **values) -> dict:
    """Run the model card's python block with its inputs replaced; its variables."""
    (code,) = re.findall(r"```python\n(.*?)```", (adapter / "README.md").read_text(), flags=re.S)
    code, n = re.subn(r'^ADAPTER = ".*"$', f"ADAPTER = {str(adapter)!r}", code, flags=re.M)
    assert n == 1
    for name, v in values.items():
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {v!r}", code, flags=re.M)
        assert n == 1, name
    scope: dict = {}
    exec(compile(code, "model-card", "exec"), scope)  # noqa: S102 - the card's own snippet
    return scope


def one_error(capsys) -> str:
    """The one ``error:`` line of a refused command, which printed no result."""
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and cap.out == "", cap
    return err[0]


# ------------------------------------------------------------------------------- multiple choice


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    import transformers as T

    root = tmp_path_factory.mktemp("mc")
    model = root / "tiny-bert-mc"
    torch.manual_seed(0)
    T.BertForMultipleChoice(T.BertConfig(vocab_size=30522, num_hidden_layers=2, max_position_embeddings=64,
                                         **SMALL)).save_pretrained(model)
    T.AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(model)
    rng = np.random.default_rng(4)
    colors = ["red", "blue", "green", "black", "white", "pink"]

    def rows(n):
        out = []
        for _ in range(n):
            c, k = rng.permutation(colors)[:3], int(rng.integers(0, 3))
            out.append({"passage": f"the box is {c[k]} and small", "question": "what colour is the box?",
                        "a": c[0], "b": c[1], "c": c[2], "answer": int(k)})
        return out

    d = root / "data"
    d.mkdir()
    pd.DataFrame(rows(24)).to_parquet(d / "train.parquet", index=False)
    pd.DataFrame(rows(6)).to_parquet(d / "test.parquet", index=False)
    exp = tiny_run(model, "multiple-choice", {
        "format": "parquet", "path": str(d), "text_column": "passage", "text_pair_column": "question",
        "choices_columns": ["a", "b", "c"], "label_column": "answer"}, root / "run")
    return exp, root / "run", pd.read_parquet(d / "test.parquet")


def test_multiple_choice_predict_gives_the_evaluation_logits_and_the_card_snippet_too(mc_run, capsys):
    exp, out, test = mc_run
    info = json.loads((out / "adapter" / "fedhello.json").read_text())
    assert info["task"] == "multiple-choice"
    # the test split keeps the file's row order: sample i is row i
    assert [int(x) for x in exp.test.labels] == test["answer"].tolist()
    want = engine_logits(exp, [0, 1])
    for i in (0, 1):
        row = test.iloc[i]
        opts = [row.a, row.b, row.c]
        got, names = predict_logits(out, [row.passage], [row.question], choices=opts)
        assert names == opts and got.shape == (1, 3)
        assert torch.allclose(got[0], want[i], atol=1e-5, rtol=0)
    row = test.iloc[1]
    args = ["predict", "--run", str(out), "--device", "cpu", "--text", row.passage, "--pair", row.question]
    assert main(args + ["--choice", row.a, "--choice", row.b, "--choice", row.c]) == 0
    k, option, prob, passage, question = capsys.readouterr().out.strip().split("\t")
    best = int(want[1].argmax())
    assert (int(k), option, passage, question) == (best, [row.a, row.b, row.c][best], row.passage, row.question)
    assert float(prob) == pytest.approx(float(torch.softmax(want[1], -1).max()), abs=1e-3)
    # outside fedhello: the model card's snippet scores the options the same way
    scope = card_snippet(out / "adapter", passage=row.passage, question=row.question, options=[row.a, row.b, row.c])
    assert torch.allclose(scope["logits"][0], want[1], atol=1e-5, rtol=0)
    assert capsys.readouterr().out.strip() == [row.a, row.b, row.c][best]  # what the snippet prints
    # misuse: one error line each
    assert main(args + ["--choice", row.a]) == 2
    assert "--choice" in one_error(capsys)
    assert main(["predict", "--run", str(out), "--image", "x.png"]) == 2
    assert "--image is for image-classification adapters" in one_error(capsys)


# ------------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    import transformers as T
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("img")
    model = root / "tiny-vit"
    torch.manual_seed(0)
    T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=4, num_channels=3, num_hidden_layers=2,
                                            **SMALL)).save_pretrained(model)
    T.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model)
    digits = load_digits()
    for c in (0, 1, 2):
        imgs = digits.images[digits.target == c]
        for split, part in (("train", imgs[:8]), ("test", imgs[8:10])):
            folder = root / "digits" / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(part):  # at the model's 16x16: no resize anywhere
                big = np.kron(im * 255 / 16, np.ones((2, 2))).astype(np.uint8)
                Image.fromarray(big, mode="L").save(folder / f"{i}.png")
    exp = tiny_run(model, "image-classification", {"format": "imagefolder", "path": str(root / "digits")},
                   root / "run")
    return exp, root / "run"


def test_image_predict_gives_the_evaluation_logits_and_the_card_snippet_too(image_run, capsys):
    from datasets import Image as ImageFeature

    exp, out = image_run
    files = [r["image"]["path"] for r in exp.test.ds.cast_column("image", ImageFeature(decode=False))]
    assert len(files) == 6 and all(Path(f).is_file() for f in files)
    want = engine_logits(exp, list(range(6)))
    got, labels = predict_logits(out, images=files)
    assert labels == ["digit0", "digit1", "digit2"]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert main(["predict", "--run", str(out), "--device", "cpu", "--image", files[0], "--image", files[5]]) == 0
    lines = [x.split("\t") for x in capsys.readouterr().out.strip().splitlines()]
    probs = torch.softmax(want, -1)
    assert [(lab, f) for lab, _, f in lines] == [(labels[int(probs[i].argmax())], files[i]) for i in (0, 5)]
    assert [float(p) for _, p, _ in lines] == pytest.approx([float(probs[i].max()) for i in (0, 5)], abs=1e-3)
    scope = card_snippet(out / "adapter", files=files)
    assert torch.allclose(scope["logits"], want, atol=1e-5, rtol=0)
    assert capsys.readouterr().out.strip() == str([labels[int(p.argmax())] for p in probs])  # what it prints


def test_image_predict_decodes_only_images_and_names_the_bad_file(image_run, tmp_path, capsys):
    _, out = image_run
    good = str(next((out.parent / "digits" / "test" / "digit0").glob("*.png")))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n")
    # an EPS file: Pillow would hand it to Ghostscript; predict decodes raster formats only
    eps = tmp_path / "figure.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    cases = [(str(notes), "cannot read it as an image"), (str(eps), "cannot read it as an image"),
             (str(tmp_path / "missing.png"), "No such file"), (str(tmp_path), "")]
    for bad, why in cases:
        assert main(["predict", "--run", str(out), "--device", "cpu", "--image", good, "--image", bad]) == 2
        line = one_error(capsys)
        assert f"--image {bad}:" in line and why in line  # and nothing printed for the good image
    assert main(["predict", "--run", str(out), "--text", "a digit"]) == 2
    assert "give image files with --image" in one_error(capsys)
    # a run directory without an adapter of any task: one line naming it
    shutil.rmtree(tmp_path / "empty", ignore_errors=True)
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--run", str(tmp_path / "empty"), "--image", good]) == 2
    assert "no exported adapter" in one_error(capsys)


# ------------------------------------------------------------------------------- closed pipe


def test_output_to_a_closed_pipe_ends_quietly(monkeypatch, capfd):
    """``fedhello config show | head``: the reader went away; no BrokenPipe traceback, exit 141."""
    import os
    import sys

    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["config", "show"]) == 141
        out.write("more\n")
        out.flush()  # stdout now goes nowhere: what Python flushes at exit raises nothing
    finally:
        monkeypatch.undo()
        out.close()
    assert capfd.readouterr().err == ""
