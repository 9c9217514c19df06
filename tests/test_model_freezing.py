import numpy as np
import pytest
import torch

import fedhello.federation.client as client_mod
from fedhello.config import build_config
from fedhello.data.batching import encode
from fedhello.federation.client import FitTask, LocalTrainer
from fedhello.model import build_backbone, get_state, set_trainable


def backbone(path, **lora):
    cfg = build_config({"model": {"name": str(path)}, "lora": lora, "clients": {"budgets": [1, 2, 3]}})
    return cfg, build_backbone(cfg, num_labels=3)


def test_layermap_matches_exact_block_index(tiny_bert12):
    _, b = backbone(tiny_bert12)
    lm = b.layermap
    assert lm.num_layers == 12
    for i, names in enumerate(lm.layers):
        # q and v, A and B: 4 tensors per block, all of block i exactly
        assert len(names) == 4
        assert all(f".layer.{i}." in n and ".lora_" in n for n in names)
    # the reference's substring defect: layer 1 must not catch layers 10 and 11
    assert not any(".layer.10." in n or ".layer.11." in n for n in lm.layers[1])
    assert lm.head == (
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    )
    assert lm.names_for([1], include_head=False) == list(lm.layers[1])


def test_set_trainable_freezes_for_real(tiny_bert):
    _, b = backbone(tiny_bert)
    params = set_trainable(b.model, b.layermap, [2])
    names = {n for n, p in b.model.named_parameters() if p.requires_grad}
    assert names == set(b.layermap.layers[2]) | set(b.layermap.head)
    assert len(params) == len(names)
    # FFA-LoRA: A matrices frozen too
    set_trainable(b.model, b.layermap, [0, 2], ffa=True)
    names = {n for n, p in b.model.named_parameters() if p.requires_grad}
    assert names == {n for n in b.layermap.names_for([0, 2]) if ".lora_A." not in n}


def test_local_training_leaves_frozen_layers_bit_identical(tiny_bert, monkeypatch):
    cfg, b = backbone(tiny_bert)
    texts = [f"sample number {i} says {'yes' if i % 3 else 'no'} " * (1 + i % 4) for i in range(24)]
    data = encode(b.tokenizer, texts, [i % 3 for i in range(24)], 32)
    # LoRA B starts at zero; make every tensor non-trivial so changes are visible
    with torch.no_grad():
        for n, p in b.model.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.02)
    start = get_state(b.model, b.layermap.all_names)

    captured = {}
    real = client_mod.make_optimizer

    def spy(params, name, lr, wd):
        opt = real(params, name, lr, wd)
        captured["opt"] = opt
        return opt

    monkeypatch.setattr(client_mod, "make_optimizer", spy)
    trainer = LocalTrainer(b.model, b.layermap, data, cfg.train, "cpu")
    upd = trainer.fit(FitTask(client_id=7, round=0, layers=[0, 2], lr=1e-2, seed=1), start, np.arange(24))

    now = dict(b.model.named_parameters())
    frozen = b.layermap.layers[1]
    for n in frozen:
        assert torch.equal(now[n].detach(), start[n]), n
        assert now[n].grad is None
    trained = b.layermap.names_for([0, 2])
    assert all(not torch.equal(now[n].detach(), start[n]) for n in trained)
    # the optimizer held state for exactly the trained tensors
    opt = captured["opt"]
    ids = {id(p) for group in opt.param_groups for p in group["params"]}
    assert ids == {id(now[n]) for n in trained}
    assert {id(p) for p in opt.state} == ids
    # the update carries exactly the allocated layers and the head
    assert set(upd.tensors) == set(trained)
    assert upd.num_samples == 24 and upd.layers == [0, 2]
    assert upd.upload_bytes == sum(start[n].numel() * 4 for n in trained)
    # nothing stays trainable between clients
    assert not any(p.requires_grad for p in b.model.parameters())
