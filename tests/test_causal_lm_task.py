"""A task added from outside the package: the test-only causal-LM task (tests/causal_lm_task.py),
registered here, runs one federated round end to end through the engine ``fedhello run`` uses."""

import json
import math

import numpy as np
import pytest
import torch

from causal_lm_task import NAME, CausalLM
from fedhello.config import build_config
from fedhello.errors import ConfigError
from fedhello.federation.client import evaluate
from fedhello.model.fisher import fisher_layer_scores_loop
from fedhello.run.experiment import prepare, run_experiment
from fedhello.run.rundir import RunDir
from fedhello.tasks import TASKS, register_task, unregister_task
from helpers import make_tiny_llama_lm, torch_threads

PHRASES = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot today", "we like green tea"]


@pytest.fixture(scope="module")
def causal_task():
    task = register_task(CausalLM())
    yield task
    unregister_task(NAME)


@pytest.fixture(scope="module")
def tiny_llama_lm(tmp_path_factory):
    return make_tiny_llama_lm(tmp_path_factory.mktemp("tiny-llama-lm"), num_layers=4)


def write_texts(folder, rng):
    folder.mkdir()
    for split, n in (("train", 48), ("test", 8)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"body": f"{PHRASES[i % 4]} {' '.join(rng.choice(['and', 'so', 'then'], 2))}"}) + "\n")


def raw_config(model, data) -> dict:
    return {
        "seed": 3,
        "rounds": 1,
        "task": NAME,
        "model": {"name": str(model), "max_length": 24},
        "lora": {"r": 4, "alpha": 8},
        "data": {"format": "jsonl", "path": str(data), "text_column": "body", "val_fraction": 0.25},
        "partition": {"name": "iid"},
        "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 2]},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 4, "lr": 0.05},
        "eval": {"batch_size": 8},
    }


def test_causal_lm_task_runs_one_federated_round(tmp_path, causal_task, tiny_llama_lm):
    assert TASKS[NAME] is causal_task
    write_texts(tmp_path / "data", np.random.default_rng(0))
    cfg = build_config(raw_config(tiny_llama_lm, tmp_path / "data"))
    assert cfg.head.init == "random"  # no per-class head: the class-means default steps aside
    with pytest.raises(ConfigError, match="macro_f1 is not a metric of task causal-lm-test"):
        build_config(dict(raw_config(tiny_llama_lm, tmp_path / "data"), eval={"select_metric": "macro_f1"}))
    with torch_threads(1):
        exp = prepare(cfg)
        assert exp.label_names == ["text"] and exp.layermap.num_layers == 4 and exp.layermap.head == ()
        assert exp.train.task is causal_task and len(exp.val) == 12 and len(exp.test) == 8
        batch = exp.train.collate([0, 1])
        assert (batch["labels"] == batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).all()
        before = exp.global_state()
        first = evaluate(exp.model, exp.val, np.arange(len(exp.val)), 8, "cpu")
        summary = run_experiment(cfg, tmp_path / "run")
    recs = RunDir(tmp_path / "run").read_metrics()
    assert [r["round"] for r in recs] == [0]
    rec = recs[0]
    # one round: 2 clients aggregated, each uploading q and v LoRA A and B (4 x 32 each) of its layers, no head
    assert len(rec["clients"]) == 2
    for c in rec["clients"]:
        assert c["upload_bytes"] == 4 * len(c["layers"]) * 4 * (4 * 32)
        assert len(c["layers"]) == cfg.clients.budgets[c["group"]]
    # the metrics are the task's: next-token accuracy and a finite perplexity above 1
    for split in ("val", "test"):
        assert 0 <= rec[f"{split}_accuracy"] <= 1
        assert 1 < rec[f"{split}_perplexity"] < math.inf
    assert summary["final_test_accuracy"] == rec["test_accuracy"] and summary["select_metric"] == "accuracy"
    # one round of next-token training lowers the validation loss of the random model
    assert math.isfinite(first["loss"]) and rec["val_loss"] < first["loss"]
    assert rec["val_perplexity"] < first["perplexity"]
    # exactly the LoRA tensors of the trained layers changed (budgets 1 and 2 of 4 layers: some stay)
    after = RunDir(tmp_path / "run").load_checkpoint()["global_state"]
    trained = {layer for c in rec["clients"] for layer in c["layers"]}
    assert 0 < len(trained) < 4
    assert set(after) == set(before)
    for i, names in enumerate(exp.layermap.layers):
        for n in names:
            changed = not torch.equal(after[n], before[n])
            assert changed == (i in trained), (n, i, trained)
    info = json.loads((tmp_path / "run" / "adapter" / "fedhello.json").read_text())
    acfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert info["task"] == NAME and acfg["task_type"] == "CAUSAL_LM" and not acfg.get("modules_to_save")


def test_causal_lm_fisher_is_the_task_s_log_likelihood(tmp_path, causal_task, tiny_llama_lm):
    write_texts(tmp_path / "data", np.random.default_rng(1))
    cfg = build_config(raw_config(tiny_llama_lm, tmp_path / "data"))
    with torch_threads(1):
        exp = prepare(cfg)
        # B = 0 at the start gives A no gradient: score a state with every B set
        state = {n: (torch.full_like(t, 0.01) if ".lora_B." in n else t) for n, t in exp.global_state().items()}
        batches = list(exp.forward_batches(state, exp.val, np.arange(6)))
        fast = exp.fisher(state, exp.val, np.arange(6))  # the engine's scorer asks the task
        slow = fisher_layer_scores_loop(exp.model, exp.layermap, batches, log_likelihood=causal_task.log_likelihood)
    assert fast.shape == (4,) and (fast > 0).all()
    np.testing.assert_allclose(fast, slow, rtol=1e-4)


def test_the_config_knows_a_task_while_it_is_registered(tmp_path):
    class Other(CausalLM):
        name = "causal-lm-other"

    raw = dict(raw_config(tmp_path, tmp_path), task=Other.name)
    with pytest.raises(ConfigError, match="unknown task 'causal-lm-other'"):
        build_config(raw)
    register_task(Other())
    try:
        assert build_config(raw).task == "causal-lm-other"
    finally:
        unregister_task(Other.name)
    with pytest.raises(ConfigError, match="unknown task"):
        build_config(raw)
