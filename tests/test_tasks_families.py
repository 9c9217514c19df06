"""Model families of every task: default LoRA targets, and a LayerMap of exactly num_hidden_layers LoRA layers."""

import pytest
from peft import LoraConfig, get_peft_model

from fedhello.model.backbone import HEAD_MODULES, default_target_modules, num_hidden_layers
from fedhello.model.layermap import LayerMap
from helpers import tiny_model as tiny

EXPECTED_TARGETS = {
    "bert-mc": [["query", "value"]],
    "roberta-mc": [["query", "value"]],
    "distilbert-mc": [["q_lin", "v_lin"]],
    "deberta-v2": [["query_proj", "value_proj"]],
    # transformers 5 names ViT/DeiT attention q_proj/v_proj, transformers 4 query/value
    "deit": [["q_proj", "v_proj"], ["query", "value"]],
    "vit": [["q_proj", "v_proj"], ["query", "value"]],
    "mistral": [["q_proj", "v_proj"]],
    "qwen2": [["q_proj", "v_proj"]],
    "llama": [["q_proj", "v_proj"]],
}


@pytest.mark.parametrize("family", sorted(EXPECTED_TARGETS))
def test_family_targets_and_layermap(family):
    n = 11  # blocks 1 and 10 both exist: substring matching would confuse them
    model = tiny(family, n)
    assert num_hidden_layers(model.config) == n
    targets = default_target_modules(model)
    assert targets in EXPECTED_TARGETS[family]
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=targets, modules_to_save=HEAD_MODULES))
    lm = LayerMap.from_model(peft, n)
    assert lm.num_layers == n
    names = dict(peft.named_parameters())
    for i, layer in enumerate(lm.layers):
        assert len(layer) == 4  # the two targets, A and B each
        for name in layer:
            assert ".lora_A." in name or ".lora_B." in name
            assert f".layer.{i}." in name or f".layers.{i}." in name
    # only LoRA tensors in the layers, all of them, and a trained head
    assert set(lm.lora_names) == {k for k in names if ".lora_" in k}
    assert lm.head and all(".modules_to_save." in h for h in lm.head)
    assert not set(lm.head) & set(lm.lora_names)


def test_override_targets_per_family():
    model = tiny("deberta-v2", 2)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["query_proj", "key_proj", "value_proj"],
                                            modules_to_save=HEAD_MODULES))
    lm = LayerMap.from_model(peft, 2)
    assert all(len(layer) == 6 for layer in lm.layers)
