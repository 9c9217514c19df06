"""Shared test helpers: the small experiment every engine test starts from, tiny random models of
every family, and one way to limit torch threads.

Tests import it as ``from helpers import ...`` (pytest puts tests/ on the import path).
"""

from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager
from pathlib import Path

DROP = object()  # a section value that removes the key from the small experiment

# The small experiment: the tiny 3-layer BERT on demo data, 4 clients in two budget groups.
# Each test file states only where its experiment differs (``small_raw(model, rounds=1, ...)``).
SMALL = {
    "seed": 2,
    "rounds": 2,
    "model": {"max_length": 32},
    "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.15},
    "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [1, 3]},
    "strategy": {"name": "fedra"},
    "train": {"batch_size": 8, "lr": 0.05, "max_steps": 2},
}


def merged(raw: dict, over: dict, *, replace: bool = False) -> dict:
    """``raw`` with ``over`` applied: a dict value is merged into the section of that name
    (``replace=True``: it replaces the section); ``DROP`` removes a key. ``raw`` is not changed."""
    out = copy.deepcopy(raw)
    for key, value in over.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and not replace and isinstance(out.get(key), dict):
            section = out[key]
            for k, v in value.items():
                if v is DROP:
                    section.pop(k, None)
                else:
                    section[k] = copy.deepcopy(v)
        else:
            out[key] = copy.deepcopy(value)
    return out


def small_raw(model, /, **over) -> dict:
    """The raw config of the small experiment on ``model`` (a model folder), sections merged
    with ``over`` as :func:`merged` does."""
    return merged(merged(SMALL, {"model": {"name": str(model)}}), over)


# --------------------------------------------------------------------------- threads


@contextmanager
def torch_threads(n: int | None = 1):
    """Run the block with ``n`` torch threads (None: leave the count) and restore the count after:
    tiny models on a shared CPU run faster without thread contention, and float reductions (so
    pinned numbers) do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- tiny models

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(dst: Path) -> None:
    """MiniLM's tokenizer files into the model folder ``dst``."""
    from fedhello.model import resolve_model_path

    src = Path(resolve_model_path("minilm"))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def make_tiny_bert(path: Path, num_layers: int = 3) -> Path:
    """A random-weight BERT classifier with MiniLM's tokenizer, saved as a model folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    copy_tokenizer(path)
    return path


def make_tiny_llama_lm(path: Path, num_layers: int = 2) -> Path:
    """A random-weight Llama causal LM (hidden 32) with MiniLM's tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    copy_tokenizer(path)
    return path


TINY = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)


def tiny_model(family: str, n: int):
    """A tiny random model of ``family`` with ``n`` blocks, in memory (seeded)."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    if family == "bert-mc":
        return T.BertForMultipleChoice(T.BertConfig(vocab_size=50, num_hidden_layers=n, **TINY))
    if family == "roberta-mc":
        return T.RobertaForMultipleChoice(T.RobertaConfig(vocab_size=50, num_hidden_layers=n, **TINY))
    if family == "roberta":
        return T.RobertaForSequenceClassification(
            T.RobertaConfig(vocab_size=50, num_hidden_layers=n, num_labels=3, **TINY))
    if family == "distilbert-mc":
        return T.DistilBertForMultipleChoice(T.DistilBertConfig(vocab_size=50, dim=16, n_layers=n, n_heads=2, hidden_dim=32))
    if family == "distilbert":
        return T.DistilBertForSequenceClassification(
            T.DistilBertConfig(vocab_size=50, dim=16, n_layers=n, n_heads=2, hidden_dim=32, num_labels=3))
    if family == "deberta-v2":
        return T.DebertaV2ForSequenceClassification(
            T.DebertaV2Config(vocab_size=50, num_hidden_layers=n, num_labels=3, **TINY))
    if family == "deit":
        return T.DeiTForImageClassification(
            T.DeiTConfig(image_size=8, patch_size=4, num_hidden_layers=n, num_labels=3, **TINY))
    if family == "vit":
        return T.ViTForImageClassification(
            T.ViTConfig(image_size=8, patch_size=4, num_hidden_layers=n, num_labels=3, **TINY))
    if family in ("mistral", "qwen2", "llama"):
        cls = {"mistral": (T.MistralConfig, T.MistralForSequenceClassification),
               "qwen2": (T.Qwen2Config, T.Qwen2ForSequenceClassification),
               "llama": (T.LlamaConfig, T.LlamaForSequenceClassification)}[family]
        return cls[1](cls[0](vocab_size=50, num_hidden_layers=n, num_key_value_heads=2, num_labels=3,
                             pad_token_id=0, **TINY))
    raise AssertionError(family)
