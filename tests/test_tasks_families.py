"""Model families of every task: default LoRA targets, and a LayerMap of exactly num_hidden_layers LoRA layers."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedhello.model.backbone import HEAD_MODULES, default_target_modules, num_hidden_layers
from fedhello.model.layermap import LayerMap

SMALL = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)


def tiny(family: str, n: int):
    import transformers as T

    torch.manual_seed(0)
    if family == "bert-mc":
        return T.BertForMultipleChoice(T.BertConfig(vocab_size=50, num_hidden_layers=n, **SMALL))
    if family == "roberta-mc":
        return T.RobertaForMultipleChoice(T.RobertaConfig(vocab_size=50, num_hidden_layers=n, **SMALL))
    if family == "distilbert-mc":
        return T.DistilBertForMultipleChoice(T.DistilBertConfig(vocab_size=50, dim=16, n_layers=n, n_heads=2, hidden_dim=32))
    if family == "deberta-v2":
        return T.DebertaV2ForSequenceClassification(
            T.DebertaV2Config(vocab_size=50, num_hidden_layers=n, num_labels=3, **SMALL))
    if family == "deit":
        return T.DeiTForImageClassification(
            T.DeiTConfig(image_size=8, patch_size=4, num_hidden_layers=n, num_labels=3, **SMALL))
    if family == "vit":
        return T.ViTForImageClassification(
            T.ViTConfig(image_size=8, patch_size=4, num_hidden_layers=n, num_labels=3, **SMALL))
    if family in ("mistral", "qwen2", "llama"):
        cls = {"mistral": (T.MistralConfig, T.MistralForSequenceClassification),
               "qwen2": (T.Qwen2Config, T.Qwen2ForSequenceClassification),
               "llama": (T.LlamaConfig, T.LlamaForSequenceClassification)}[family]
        return cls[1](cls[0](vocab_size=50, num_hidden_layers=n, num_key_value_heads=2, num_labels=3,
                             pad_token_id=0, **SMALL))
    raise AssertionError(family)


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
