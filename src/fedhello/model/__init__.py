"""Backbone + LoRA, the LayerMap, and get/set of federated state by layer."""

from fedhello.model.backbone import Backbone, build_backbone, load_model_config, num_hidden_layers, resolve_model_path
from fedhello.model.layermap import LayerMap
from fedhello.model.state import State, freeze_all, get_state, set_state, set_trainable, state_nbytes

__all__ = [
    "Backbone",
    "LayerMap",
    "State",
    "build_backbone",
    "freeze_all",
    "get_state",
    "load_model_config",
    "num_hidden_layers",
    "resolve_model_path",
    "set_state",
    "set_trainable",
    "state_nbytes",
]
