"""The final global adapter in PEFT format: loadable with PeftModel.from_pretrained, and fedhello predict."""

import json

import pytest
import torch

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.run.experiment import run_experiment
from fedhello.model import build_backbone, set_state
from fedhello.run.rundir import RunDir

TEXTS = ["my card was declined at the shop", "how do I top up my account", "the exchange rate looks wrong"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished_run(tiny_bert, tmp_path_factory):
    cfg = build_config({
        "seed": 2,
        "rounds": 2,
        "model": {"name": str(tiny_bert), "max_length": 32},
        "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.15},
        "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 3]},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 8, "lr": 0.05, "max_steps": 3},
    })
    out = tmp_path_factory.mktemp("export") / "run"
    run_experiment(cfg, out)
    return cfg, out


def logits_of(model, tok, texts):
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits


def test_adapter_loads_with_peft_and_reproduces_the_final_global_model(finished_run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, out = finished_run
    adapter = out / "adapter"
    labels = json.loads((out / "labels.json").read_text())
    assert json.loads((adapter / "labels.json").read_text()) == labels
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(tiny_bert) and "classifier" in acfg["modules_to_save"]
    # plain transformers + PEFT, nothing of fedhello
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=len(labels), ignore_mismatched_sizes=True  # the folder has a 2-class head
    )
    loaded = PeftModel.from_pretrained(base, str(adapter))
    got = logits_of(loaded, tok, TEXTS)
    # the run's own model with the final global state
    own = build_backbone(cfg, len(labels), "cpu")
    initial = logits_of(own.model, own.tokenizer, TEXTS)
    final_state = RunDir(out).load_checkpoint()["global_state"]
    set_state(own.model, final_state)
    want = logits_of(own.model, own.tokenizer, TEXTS)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(initial, want, atol=1e-3)  # training moved the model: the check has teeth
    # every federated tensor (LoRA of every layer + the head) is in the adapter
    from safetensors.torch import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert len(saved) == len(final_state)
    lora_b = [k for k in final_state if ".lora_B." in k and final_state[k].abs().sum() > 0]
    assert lora_b  # some layer was trained, so B != 0 somewhere


def test_predict_prints_the_label_and_probability(finished_run, capsys):
    cfg, out = finished_run
    labels = json.loads((out / "labels.json").read_text())
    assert main(["predict", "--run", str(out), "--text", TEXTS[0], "--text", TEXTS[1], "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    own = build_backbone(cfg, len(labels), "cpu")
    set_state(own.model, RunDir(out).load_checkpoint()["global_state"])
    probs = torch.softmax(logits_of(own.model, own.tokenizer, TEXTS[:2]), dim=-1)
    for line, text, p in zip(lines, TEXTS, probs):
        label, prob, echoed = line.split("\t")
        assert label == labels[int(p.argmax())] and echoed == text
        assert float(prob) == pytest.approx(float(p.max()), abs=1e-3)


def test_predict_without_an_adapter_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "--text", "hello"]) == 2
    assert "no exported adapter" in capsys.readouterr().err


def test_predict_refuses_an_unknown_task_and_another_task_s_inputs(finished_run, tmp_path, capsys):
    import shutil

    _, out = finished_run
    info = json.loads((out / "adapter" / "fedhello.json").read_text())
    assert info["task"] == "text-classification"  # every export says its task
    # a text adapter is not given images or options (tests/test_predict_tasks.py: those tasks)
    for extra, name in ((["--image", "x.png"], "--image"), (["--choice", "a", "--choice", "b"], "--choice")):
        assert main(["predict", "--run", str(out), "--text", "hello", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{name} is for" in err[0]
    other = tmp_path / "run"
    shutil.copytree(out / "adapter", other / "adapter")
    info["task"] = "summarization"
    (other / "adapter" / "fedhello.json").write_text(json.dumps(info))
    assert main(["predict", "--run", str(other), "--text", "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fedhello.json: unknown task 'summarization'" in err[0]


def test_report_reexports_the_same_adapter_from_the_checkpoint(finished_run):
    from safetensors.torch import load_file

    from fedhello.report import export_from_checkpoint

    _, out = finished_run
    before = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    export_from_checkpoint(out)
    after = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(out.glob(".adapter*"))  # staging directories removed
