"""Head protocols: the class-means head, frozen and local heads, local-loss corrections, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhello.config import build_config
from fedhello.errors import ConfigError
from fedhello.federation.client import FitTask
from fedhello.run.experiment import prepare, run_experiment
from fedhello.federation.simulation import SimulationRunner
from fedhello.model.head import class_means_head, local_loss, masked_mean
from fedhello.run.rundir import RunDir


def raw(model_path, **kw) -> dict:
    out = {
        "seed": 3, "rounds": 2, "device": "cpu",
        "model": {"name": str(model_path), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 240, "val_fraction": 0.1},
        "partition": {"name": "pathological", "classes_per_client": 2},
        "clients": {"num_clients": 6, "per_round": 3, "fractions": [0.5, 0.5], "budgets": [1, 3]},
        "strategy": {"name": "fedra", "fim_samples": 10},
        "train": {"batch_size": 8, "lr": 0.01, "max_steps": 2},
        "eval": {"every": 1, "batch_size": 64},
    }
    for k, v in kw.items():
        out[k] = dict(out.get(k, {}), **v) if isinstance(v, dict) else v
    return out


@pytest.fixture(scope="module")
def mean_exp(tiny_bert):
    return prepare(build_config(raw(tiny_bert, model={"pooling": "mean"})))


def hand_features(exp, indices) -> tuple[np.ndarray, np.ndarray]:
    """The masked mean of the last hidden states, computed without the pooling hook."""
    model = exp.model
    enc = model.base_model.model.bert
    data = exp.train
    feats = []
    with torch.no_grad():
        model.eval()
        for i in indices:
            ids = torch.tensor([data.features["input_ids"][i]])
            mask = torch.ones_like(ids)
            tt = torch.tensor([data.features["token_type_ids"][i]])
            h = enc.embeddings(input_ids=ids, token_type_ids=tt)
            for layer in enc.encoder.layer:
                out = layer(h)
                h = out[0] if isinstance(out, tuple) else out
            feats.append(h.mean(dim=1)[0].double().numpy())
    return np.stack(feats), data.labels[indices]


def test_class_means_head_from_skewed_clients_equals_centralized_and_hand_computed(mean_exp):
    exp = mean_exp
    assert exp.backbone.pooling == "mean"
    state = exp.global_state()
    C = exp.num_classes()
    # pathological skew: every client holds 2 of the classes
    assert all(len(s["classes"]) == 2 for s in exp.stats)
    per_client = SimulationRunner(exp).class_stats(range(len(exp.partitions)), state)
    sums = sum(r[0] for r in per_client)
    counts = sum(r[1] for r in per_client)
    norm_sum = sum(r[2] for r in per_client)
    everything = np.concatenate(exp.partitions)
    c_sums, c_counts, c_norm = exp.class_stats(state, np.sort(everything))
    np.testing.assert_array_equal(counts, c_counts)
    # float64 sums of float32 features: equal up to the float32 forward passes of
    # differently padded batches (relative 1e-6)
    np.testing.assert_allclose(sums, c_sums, rtol=1e-5, atol=1e-5)
    assert norm_sum == pytest.approx(c_norm, rel=1e-6)
    # by hand: class means of the masked-mean features, normalised, at logit scale 16
    feats, labels = hand_features(exp, np.sort(everything))
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=C))
    rbar = np.linalg.norm(feats, axis=1).mean()
    head = exp.head_from_stats(sums, counts, norm_sum)
    (wname, w), = [(n, t) for n, t in head.items() if n.endswith("weight")]
    for c in range(C):
        mu = feats[labels == c].mean(axis=0)
        np.testing.assert_allclose(w[c].double().numpy(), 16.0 * mu / (np.linalg.norm(mu) * rbar), rtol=2e-5, atol=1e-6)
    (bname, b), = [(n, t) for n, t in head.items() if n.endswith("bias")]
    assert torch.equal(b, torch.zeros(C))


def test_pooled_length_sorted_statistics_equal_per_client_statistics(mean_exp):
    """The statistics round forwards every client's data at once in length-sorted batches;
    each client's float64 sums, counts and norm sum equal its own per-client pass."""
    exp = mean_exp
    lengths = exp.train.lengths
    assert len(np.unique(lengths)) >= 5  # varied lengths: the two batchings pad differently
    state = exp.global_state()
    ids = [4, 0, 5, 2, 1, 3]  # any order: results come back in this order
    pooled = exp.class_stats_many(state, ids)
    assert len(pooled) == len(ids)
    for cid, (s, c, n) in zip(ids, pooled):
        s0, c0, n0 = exp.class_stats(state, exp.partitions[cid])
        np.testing.assert_array_equal(c, c0)
        assert c.sum() == len(exp.partitions[cid])
        np.testing.assert_allclose(s, s0, rtol=1e-5, atol=1e-6)
        assert n == pytest.approx(n0, rel=1e-6)
        assert s.dtype == np.float64
    # a pass over fewer clients is the same per client (the chunks of a large federation)
    (s1, c1, n1), = exp.class_stats_many(state, [2])
    np.testing.assert_array_equal(c1, pooled[3][1])
    np.testing.assert_allclose(s1, pooled[3][0], rtol=1e-5, atol=1e-6)


def test_class_means_head_zero_row_for_an_unseen_class():
    sums = np.array([[3.0, 4.0], [0.0, 0.0]])
    w, b = class_means_head(sums, np.array([1.0, 0.0]), norm_sum=10.0, scale=2.0)
    # mean (3, 4), norm 5, mean feature norm 10: 2 * (3, 4) / (5 * 10)
    assert torch.allclose(w, torch.tensor([[0.12, 0.16], [0.0, 0.0]], dtype=torch.float64))
    assert torch.equal(b, torch.zeros(2, dtype=torch.float64))


def head_names(exp):
    return list(exp.layermap.head)


def test_frozen_head_bit_identical_and_never_uploaded(tmp_path, tiny_bert):
    cfg = build_config(raw(tiny_bert, rounds=3, head={"train": "frozen", "init": "class-means"}))
    run_experiment(cfg, tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    recs = rd.read_metrics()
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["global_state"]
    exp = prepare(cfg)
    lm = exp.layermap
    # the head after 3 rounds is exactly the class-means head set before round 0
    runner = SimulationRunner(exp)
    st = exp.global_state()
    stats = runner.class_stats(range(cfg.clients.num_clients), st)
    head = exp.head_from_stats(sum(s[0] for s in stats), sum(s[1] for s in stats), sum(s[2] for s in stats))
    for n in lm.head:
        assert torch.equal(ck[n], head[n].to(ck[n].dtype)), n
    # no client uploaded it: every upload is exactly its LoRA layers' bytes
    params = dict(exp.model.named_parameters())
    for r in recs:
        for c in r["clients"]:
            lora = sum(params[n].numel() * 4 for n in lm.names_for(c["layers"], include_head=False))
            assert c["upload_bytes"] == lora
    # a frozen head is no trainable parameter of any client
    per_layer = sum(params[n].numel() for n in lm.layers[0])
    assert rd.read_json("clients.json")["trainable_params_per_group"] == [b * per_layer for b in cfg.clients.budgets]
    info = recs[0]["head_init"]
    assert info["clients"] == cfg.clients.num_clients and info["failed_clients"] == []
    C, D = head[[n for n in head if n.endswith("weight")][0]].shape
    assert info["upload_bytes"] == cfg.clients.num_clients * (C * D * 8 + C * 8 + 8)
    summary = rd.read_json("summary.json")
    assert summary["head_init_upload_bytes"] == info["upload_bytes"]
    assert summary["total_upload_bytes"] == info["upload_bytes"] + sum(
        c["upload_bytes"] for r in recs for c in r["clients"])
    # the exported adapter carries that head
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    w = [t for n, t in saved.items() if "classifier" in n and n.endswith("weight")]
    assert len(w) == 1 and torch.equal(w[0], head[[n for n in head if n.endswith("weight")][0]].float())


def test_local_head_trains_but_never_leaves_the_client(tiny_bert):
    cfg = build_config(raw(tiny_bert, head={"train": "local", "init": "random"}))
    exp = prepare(cfg)
    st = exp.global_state()
    trainer = exp.trainer()
    upd = trainer.fit(FitTask(client_id=0, round=0, layers=[0], lr=0.05, seed=1), st, exp.partitions[0])
    params = dict(exp.model.named_parameters())
    lm = exp.layermap
    # trained locally: the model's head moved away from the global head ...
    assert any(not torch.equal(params[n].detach(), st[n]) for n in lm.head)
    # ... and is not in the update
    assert set(upd.tensors) == set(lm.names_for([0], include_head=False))
    assert upd.upload_bytes == sum(st[n].numel() * 4 for n in lm.names_for([0], include_head=False))


def test_federated_head_is_uploaded(tiny_bert):
    exp = prepare(build_config(raw(tiny_bert, head={"train": "federated", "init": "random"})))
    upd = exp.trainer().fit(FitTask(0, 0, [1], 0.05, 1), exp.global_state(), exp.partitions[0])
    assert set(upd.tensors) == set(exp.layermap.names_for([1], include_head=True))


def test_fedlc_absent_classes_get_no_gradient_and_match_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 0, 0])
    counts = torch.tensor([3.0, 0.0, 2.0, 0.0])
    loss = local_loss(logits, labels, "fedlc", counts, fedlc_tau=0.7)
    loss.backward()
    assert torch.equal(logits.grad[:, [1, 3]], torch.zeros(5, 2))
    assert logits.grad[:, [0, 2]].abs().sum() > 0
    z = logits.detach()[:, [0, 2]] - 0.7 * torch.tensor([3.0, 2.0]).pow(-0.25)
    expect = torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 1, 0, 0]))
    assert float(loss.detach()) == pytest.approx(float(expect), rel=1e-6)


def test_fedrs_scales_absent_class_logits_and_their_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    counts = torch.tensor([4.0, 2.0, 0.0, 0.0, 0.0])
    local_loss(logits, labels, "fedrs", counts, fedrs_alpha=0.3).backward()
    scale = torch.tensor([1.0, 1.0, 0.3, 0.3, 0.3])
    z = (logits.detach() * scale).requires_grad_(True)
    torch.nn.functional.cross_entropy(z, labels).backward()
    torch.testing.assert_close(logits.grad[:, 2:], 0.3 * z.grad[:, 2:])
    torch.testing.assert_close(logits.grad[:, :2], z.grad[:, :2])
    # alpha 0: absent classes' logits are zeroed, so they get no gradient at all
    g = logits.detach().clone().requires_grad_(True)
    local_loss(g, labels, "fedrs", counts, fedrs_alpha=0.0).backward()
    assert torch.equal(g.grad[:, 2:], torch.zeros(6, 3))


def test_masked_mean_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_pooling_resolution(tiny_bert):
    from fedhello.model.head import resolve_pooling, sentence_embedding_pooling

    from fedhello.model import resolve_model_path

    minilm = resolve_model_path("minilm")
    assert sentence_embedding_pooling(minilm) == "mean"
    assert resolve_pooling("auto", minilm, "bert") == "mean"
    assert resolve_pooling("auto", str(tiny_bert), "bert") == "model"  # not a sentence-embedding folder
    with pytest.raises(ConfigError, match="model.pooling"):
        resolve_pooling("mean", str(tiny_bert), "vit")


@pytest.mark.parametrize("key,value", [
    ("head.train", "banana"), ("head.init", "zeros"), ("head.scale", 0), ("model.pooling", "max"),
    ("train.loss", "focal"), ("train.fedrs_alpha", 1.5), ("train.fedlc_tau", -1),
    ("strategy.prob_floor", 1.0), ("strategy.fim_scale", "sqrt"),
])
def test_bad_values_of_the_new_keys_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        build_config({}, [f"{key}={value}"])


def test_class_means_refused_for_multiple_choice():
    with pytest.raises(ConfigError, match="head.init"):
        build_config({"task": "multiple-choice", "data": {"format": "csv", "path": "x", "choices_columns": ["a", "b"]}},
                     ["head.init=class-means"])
