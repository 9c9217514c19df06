"""The LayerMap finds every family's blocks by exact index (tiny random models)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedhello.errors import ConfigError
from fedhello.model.backbone import default_target_modules
from fedhello.model.layermap import LayerMap
from helpers import tiny_model


HEADS = {"vit": "classifier", "roberta": "classifier", "distilbert": "classifier", "llama": "score"}


def tiny(family: str, n: int):
    return tiny_model(family, n), HEADS[family]


@pytest.mark.parametrize("family", ["vit", "roberta", "distilbert", "llama"])
def test_layermap_per_family(family):
    n = 11  # blocks 1 and 10 both exist: substring matching would confuse them
    model, head = tiny(family, n)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=default_target_modules(model),
                                            modules_to_save=[head]))
    lm = LayerMap.from_model(peft, n)
    assert lm.num_layers == n
    names = dict(peft.named_parameters())
    for i, layer in enumerate(lm.layers):
        assert len(layer) == 4  # q and v, A and B
        for name in layer:
            assert ".lora_" in name and (f".layer.{i}." in name or f".layers.{i}." in name)
            assert f".{i}." not in name.replace(f".layer.{i}.", "").replace(f".layers.{i}.", "")
            assert names[name].requires_grad
    # the head's modules (DistilBERT's pre_classifier too) are trained by every client
    assert lm.head and all(f"{head}.modules_to_save." in h for h in lm.head)
    # only LoRA tensors in the layers, nothing of the frozen backbone
    assert set(lm.lora_names) == {k for k in names if ".lora_" in k}


def test_unknown_architecture_names_module_paths():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = torch.nn.ModuleList([torch.nn.ModuleDict({"query": torch.nn.Linear(4, 4)}) for _ in range(2)])

    peft = get_peft_model(Odd(), LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ConfigError, match="stack.0.query"):
        LayerMap.from_model(peft)
