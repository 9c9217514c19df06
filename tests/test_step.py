"""The one training step and its counted CPU training memory (fedhello.model.step), and the
profile built on it (fedhello.run.profile)."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fedhello.cli import main
from fedhello.config import build_config
from fedhello.federation.client import FitTask
from fedhello.model.step import TrainingMemory, train_step
from fedhello.allocation.resources import LayerCosts
from fedhello.run.experiment import prepare
from fedhello.run.profile import layer_sets, measure_costs
from helpers import DROP, merged, small_raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F32, I64 = 4, 8


class _Out:
    def __init__(self, logits):
        self.logits = logits


class Mlp(nn.Module):
    """Linear(4,8) ReLU Linear(8,8) ReLU Linear(8,3): modules 0, 2 and 4 are trainable layers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return _Out(self.net(x))


def step_parts(train: list[int], batch: int = 5) -> dict:
    torch.manual_seed(0)
    m = Mlp()
    for p in m.parameters():
        p.requires_grad_(False)
    params = [p for i in train for p in m.net[i].parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=0.1)
    mem = TrainingMemory(m)
    b = {"x": torch.randn(batch, 4), "labels": torch.arange(batch) % 3}
    total = train_step(m, opt, b, memory=mem).memory_bytes
    assert total == sum(mem.last.values()) == mem.peak_bytes
    return mem.last


# the cross-entropy (log_softmax + nll_loss) saves its log-probabilities (batch x 3 floats),
# the targets (batch int64) and nll_loss's total weight (one float)
LOSS = 5 * 3 * F32 + 5 * I64 + F32


def test_saved_bytes_equal_the_hand_count():
    # last layer only: its input (the second ReLU's output, 5 x 8) for its weight's gradient;
    # its weight is saved too (a transposed view), but a parameter is resident: not counted
    assert step_parts([4])["saved_bytes"] == 5 * 8 * F32 + LOSS
    # middle layer: its input (5 x 8); the second ReLU saves its output (5 x 8); the frozen last
    # layer saves only its weight (resident) for its input's gradient
    assert step_parts([2])["saved_bytes"] == 2 * 5 * 8 * F32 + LOSS
    # first and middle layer: the batch (5 x 4), the first ReLU's output -- saved by the ReLU and
    # as the middle layer's input: one storage, counted once -- and the second ReLU's output
    assert step_parts([0, 2])["saved_bytes"] == 5 * 4 * F32 + 2 * 5 * 8 * F32 + LOSS
    # the first layer alone saves as much: the cost follows the lowest trained layer
    assert step_parts([0])["saved_bytes"] == step_parts([0, 2])["saved_bytes"]


def test_parameters_gradients_and_adamw_state_are_counted():
    p = step_parts([0, 4])
    n = (4 * 8 + 8) + (8 * 3 + 3)  # weights and biases of the two trained layers
    assert p["param_bytes"] == p["grad_bytes"] == n * F32
    # AdamW: two moments per parameter and one float step counter per parameter tensor
    assert p["optimizer_bytes"] == 2 * n * F32 + 4 * F32


def tiny_raw(model, **over) -> dict:
    raw = small_raw(model, seed=0, rounds=1, data={"demo_samples": 60, "val_fraction": 0.2}, partition={"name": "iid"},
                    clients={"num_clients": 2, "budgets": [1, 2]}, train={"batch_size": 4, "lr": 0.01, "max_steps": DROP})
    return merged(raw, over, replace=True)


def test_trainer_records_the_memory_that_follows_the_lowest_layer(tiny_bert):
    exp = prepare(build_config(tiny_raw(tiny_bert)))
    trainer, g = exp.trainer(), exp.global_state()
    idx = exp.partitions[0]
    mem = {tuple(l): trainer.fit(FitTask(0, 0, l, 0.01, seed=3), g, idx).train_memory_bytes
           for l in ([0], [2], [0, 2], [1, 2])}
    assert all(v > 0 for v in mem.values())
    assert mem[(0,)] > mem[(2,)]  # the backward reaches layer 0: more activations kept
    # {0, 2} and {1, 2} add layer 2's own tensors to {0} and {1}: the lowest layer decides the rest
    assert mem[(0, 2)] > mem[(0,)] and mem[(0, 2)] > mem[(1, 2)] > mem[(2,)]
    # the same client, layers and seed: the same batches, the same count
    assert trainer.fit(FitTask(0, 0, [0], 0.01, seed=3), g, idx).train_memory_bytes == mem[(0,)]


def test_profile_fits_memory_exactly_and_writes_profile_json(tiny_bert, tmp_path, capsys):
    exp = prepare(build_config(tiny_raw(tiny_bert)))
    before = exp.global_state()
    costs = measure_costs(exp, reps=1)
    after = exp.global_state()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the model is left as it was
    assert not any(p.requires_grad for p in exp.model.parameters())
    assert costs.meta["batch_size"] == 4 and costs.meta["seq_len"] == int(exp.train.lengths.max())
    # sets of one size and one lowest layer cost the same memory (blocks of one shape)
    assert costs.memory_bytes([0, 2]) == pytest.approx(costs.memory_bytes([0, 1]), rel=1e-12)
    assert costs.memory_bytes([0]) > costs.memory_bytes([1]) > costs.memory_bytes([2])
    # upload: each layer's LoRA A and B of query and value (r 16 default, hidden size of the model)
    lm = exp.layermap
    params = dict(exp.model.named_parameters())
    assert costs.upload == tuple(float(sum(params[n].nbytes for n in lm.names_for([l], include_head=False)))
                                 for l in range(lm.num_layers))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny_raw(tiny_bert)))
    out = tmp_path / "prof"
    assert main(["profile", "--config", str(cfg), "--out", str(out), "--reps", "0"]) == 2
    assert "--reps must be at least 1" in capsys.readouterr().err and not out.exists()
    assert main(["profile", "--config", str(cfg), "--out", str(out), "--set", "train.batch_size=-1"]) == 2
    assert "train.batch_size" in capsys.readouterr().err and not out.exists()
    assert main(["profile", "--config", str(cfg), "--out", str(out), "--reps", "1"]) == 0
    text = capsys.readouterr().out
    assert "held out" in text and "top 3" in text
    obj = json.loads((out / "profile.json").read_text())
    assert LayerCosts.load(out / "profile.json").num_layers == 3
    sets = layer_sets(3, [1, 2])
    assert [m["layers"] for m in obj["measurements"]] == [s[2] for s in sets]
    # memory is counted, and exactly linear in the layer set: the held-out sets are predicted exactly
    assert obj["heldout_error"]["memory"]["max"] < 1e-9


def test_layer_sets_fit_every_single_and_top_block_and_hold_out_the_patterns():
    sets = layer_sets(6, [3, 4, 6])
    fit = [s[2] for s in sets if s[0] == "fit"]
    held = [s[2] for s in sets if s[0] == "heldout"]
    assert fit == [[l] for l in range(6)] + [list(range(6 - k, 6)) for k in range(2, 7)]
    # uniform, triangle and bottleneck of budgets 3 and 4 (inverted triangle is a top block,
    # budget 6 is every layer: both already fitted)
    assert held == [[0, 3, 5], [0, 1, 2], [0, 1, 5], [0, 2, 3, 5], [0, 1, 2, 3], [0, 1, 4, 5]]
    assert len({tuple(s) for s in fit + held}) == len(fit) + len(held)
    assert np.all([s == sorted(s) for s in fit + held])


def test_trainer_reports_the_padded_tokens_of_the_batches_it_trained(tiny_bert):
    from fedhello.data.batching import train_batches

    exp = prepare(build_config(tiny_raw(tiny_bert, train={"batch_size": 4, "lr": 0.01, "epochs": 2})))
    idx = exp.partitions[0]
    upd = exp.trainer().fit(FitTask(0, 0, [1], 0.01, seed=5), exp.global_state(), idx)
    # replay the trainer's batches (seeded by the task): each is padded to its longest sample
    rng = np.random.default_rng(5)
    tokens = [len(b) * int(exp.train.lengths[b].max())
              for _ in range(2) for b in train_batches(exp.train.lengths, idx, 4, rng, True)]
    assert len(tokens) == 2 * -(-len(idx) // 4) and len(set(tokens)) > 1  # batches of different shapes
    assert (upd.train_batches, upd.train_tokens, upd.train_max_batch_tokens) == (len(tokens), sum(tokens), max(tokens))
