"""``fedhello validate``: check a config fully without loading weights or data.

Checked:

1. keys and types (the pydantic config, unknown keys are errors) and the task vs.
   data keys coherence of :func:`fedhello.tasks.check_task_data`;
2. the model: its config file is read from a local folder, ``minilm``, or the local
   Hugging Face cache (never the network). A hub name not found there is looked up
   in :data:`KNOWN_MODELS`, a small built-in table of the models the shipped
   configs name; an unknown hub name skips the model checks with a printed note;
3. budgets against the model's layer count; task against the model kind (vision
   vs. text); ``model.max_length`` against the model's position embeddings; the
   device exists on this machine;
4. LoRA: the model's skeleton is built on PyTorch's ``meta`` device (no memory, no
   weights) from its config (or the family's default config with the table's layer
   count), LoRA is applied with ``lora.target_modules`` (or the family default) and
   the LayerMap must find exactly ``num_hidden_layers`` blocks;
5. data: local paths and their split files/folders exist; local files and the demo
   data are then loaded and partitioned as a run does it (every data check of
   ``run``: ragged files, classes, sample counts; dropped rows become a note); a
   hub dataset is named only (a note says it is not checked offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fedhello.config import check_budgets
from fedhello.errors import ConfigError
from fedhello.tasks import get_task

# hub name -> (model_type, num_hidden_layers): the models of the shipped configs and
# common alternatives, so that their budgets validate offline.
KNOWN_MODELS: dict[str, tuple[str, int]] = {
    "google/vit-base-patch16-224-in21k": ("vit", 12),
    "google/vit-base-patch16-224": ("vit", 12),
    "google/vit-large-patch16-224-in21k": ("vit", 24),
    "facebook/deit-base-patch16-224": ("deit", 12),
    "facebook/deit-small-patch16-224": ("deit", 12),
    "google-bert/bert-base-uncased": ("bert", 12),
    "bert-base-uncased": ("bert", 12),
    "google-bert/bert-large-uncased": ("bert", 24),
    "nlpaueb/legal-bert-base-uncased": ("bert", 12),
    "sentence-transformers/all-MiniLM-L6-v2": ("bert", 6),
    "FacebookAI/roberta-base": ("roberta", 12),
    "roberta-base": ("roberta", 12),
    "FacebookAI/xlm-roberta-base": ("xlm-roberta", 12),
    "xlm-roberta-base": ("xlm-roberta", 12),
    "distilbert/distilbert-base-uncased": ("distilbert", 6),
    "distilbert-base-uncased": ("distilbert", 6),
    "microsoft/deberta-v3-base": ("deberta-v2", 12),
    "Qwen/Qwen2.5-0.5B": ("qwen2", 24),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": ("llama", 22),
    "meta-llama/Llama-3.2-1B": ("llama", 16),
    "mistralai/Mistral-7B-v0.1": ("mistral", 32),
}

# position embeddings of the table's models where the family's default config differs
# (model.max_length is checked against them)
KNOWN_POSITIONS: dict[str, int] = {
    "FacebookAI/roberta-base": 514,
    "roberta-base": 514,
    "FacebookAI/xlm-roberta-base": 514,
    "xlm-roberta-base": 514,
    "meta-llama/Llama-3.2-1B": 131072,
}

VISION_TYPES = {"vit", "deit", "beit", "swin", "convnext", "dinov2", "clip_vision_model", "siglip_vision_model"}


@dataclass
class Report:
    """What :func:`validate_config` found: the layer count, where it was read and notes."""
    num_layers: int | None = None
    model_source: str = ""  # "local", "cache", "built-in table" or "" (unchecked)
    notes: list[str] = field(default_factory=list)


def _local_model_config(name: str):
    """The AutoConfig of a local folder / ``minilm`` / a cached hub name, or None."""
    from transformers import AutoConfig

    from fedhello.model.backbone import resolve_model_path

    path = resolve_model_path(name)
    if os.path.isdir(path):
        try:
            return AutoConfig.from_pretrained(path), "local"
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.name: no readable model config in {path}: {str(err).splitlines()[0]}") from None
    if Path(path).is_absolute() or path.startswith((".", "~")):
        raise ConfigError(f"model.name: {path} is not a model folder")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True), "cache"
    except Exception:  # noqa: BLE001 - not cached: fall back to the table
        return None, ""


def _is_vision(mconf) -> bool:
    return mconf.model_type in VISION_TYPES or hasattr(mconf, "image_size")


def _check_lora(cfg, mconf, n_layers: int) -> None:
    """Build the model skeleton on the meta device, apply LoRA, build the LayerMap."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging

    from fedhello.model.backbone import default_target_modules, model_class
    from fedhello.model.layermap import LayerMap

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    mconf.num_labels = 2
    if getattr(mconf, "pad_token_id", None) is None:
        mconf.pad_token_id = 0
    with torch.device("meta"):
        model = model_class(cfg.task).from_config(mconf)
        targets = list(cfg.lora.target_modules or default_target_modules(model))
        try:
            peft = get_peft_model(
                model,
                LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=targets, modules_to_save=list(get_task(cfg.task).head_modules) or None),
            )
        except ValueError as err:
            raise ConfigError(f"lora.target_modules {targets}: {err}".splitlines()[0]) from None
    LayerMap.from_model(peft, n_layers)


def _check_data(cfg, rep: Report) -> None:
    from fedhello.data.sources import LOCAL_FORMATS, data_folder

    d = cfg.data
    if d.format == "demo":
        return
    if d.format == "hub" or (d.format == "auto" and not d.path):
        if not d.name:
            raise ConfigError(f"config key 'data.name': data.format {d.format} needs a hub dataset name or data.path")
        rep.notes.append(f"hub dataset {d.name}{'/' + d.subset if d.subset else ''} is not checked offline")
        return
    if not d.path:
        raise ConfigError(f"config key 'data.path': data.format {d.format} needs data.path")
    root = data_folder(d.path, "config key 'data.path'", ConfigError)
    splits = [d.split_train] if d.test_fraction > 0 else [d.split_train, d.split_test]
    images = "imagefolder" in get_task(cfg.task).formats
    if d.format == "imagefolder" or (d.format == "auto" and images and (root / d.split_train).is_dir()):
        for s in splits:
            if not (root / s).is_dir():
                raise ConfigError(f"config key 'data.path': missing split folder {root / s}")
        return
    fmts = [d.format] if d.format in LOCAL_FORMATS else list(LOCAL_FORMATS)
    for s in splits:
        if not any((root / f"{s}.{e}").is_file() for f in fmts for e in LOCAL_FORMATS[f][1]):
            raise ConfigError(f"config key 'data.path': no file for split '{s}' in {root}")


def validate_config(cfg) -> Report:
    """Every offline check of a (pydantic-valid) config; raises ConfigError on the first problem."""
    from transformers import AutoConfig

    from fedhello.run.experiment import pick_device
    from fedhello.model.backbone import check_max_length, check_pooling, num_hidden_layers, resolve_model_path

    rep = Report()
    mconf, rep.model_source = _local_model_config(cfg.model.name)
    if mconf is None and cfg.model.name in KNOWN_MODELS:
        model_type, n = KNOWN_MODELS[cfg.model.name]
        mconf = AutoConfig.for_model(model_type, num_hidden_layers=n)
        if cfg.model.name in KNOWN_POSITIONS:
            mconf.max_position_embeddings = KNOWN_POSITIONS[cfg.model.name]
        rep.model_source = "built-in table"
    if mconf is None:
        rep.notes.append(
            f"model {cfg.model.name} is neither local, cached nor in the built-in table: "
            "budgets and LoRA targets are not checked"
        )
    else:
        n = num_hidden_layers(mconf)
        rep.num_layers = n
        check_budgets(cfg.clients.budgets, n, key="config key 'clients.budgets'")
        vision = _is_vision(mconf)
        if get_task(cfg.task).vision and not vision:
            raise ConfigError(f"config key 'task': {cfg.task} needs a vision model, {cfg.model.name} is {mconf.model_type}")
        if not get_task(cfg.task).vision and vision:
            raise ConfigError(f"config key 'task': {cfg.task} needs a text model, {cfg.model.name} is {mconf.model_type}")
        check_max_length(cfg, mconf)
        check_pooling(cfg, resolve_model_path(cfg.model.name), mconf.model_type)
        _check_lora(cfg, mconf, n)
    pick_device(cfg.device)  # the device must exist here (cuda on a machine without CUDA is an error)
    _check_data(cfg, rep)
    if cfg.data.format != "hub" and (cfg.data.format != "auto" or cfg.data.path):
        # local files and the demo data are read and partitioned exactly as a run does it
        # (no model weights): every data refusal of `run` happens here too
        from fedhello.data.sources import drops_line
        from fedhello.run.experiment import prepare_data

        data = prepare_data(cfg)
        note = drops_line(data.splits)
        if note:
            rep.notes.append(note)
        if cfg.clients.cost_profile and rep.num_layers:  # limits priced by a given profile: as a run checks them
            from fedhello.run.limits import check_limits

            check_limits(cfg, rep.num_layers, data.groups, [len(p) for p in data.partitions])
    return rep
