"""The classification head: pooling, class statistics, the class-means head, local losses.

How the head is treated decides whether anything learns under label skew. The
Fed-HeLLo authors (arXiv:2506.12213) never federate it: their text path keeps it
frozen at its random initialisation (as FedBABU does, arXiv:2106.06042), their ViT
path trains it locally and discards it. Averaging a trained head under pathological
skew biases it towards each round's classes (CCVR, arXiv:2106.05001; FedRS, "FedRS:
Federated Learning with Restricted Softmax for Label Distribution Non-IID Data",
KDD 2021; FedLC, arXiv:2209.00189). ``head.train`` names the three treatments
(``frozen``, ``local``, ``federated``); ``head.init: class-means`` sets the head
before round 0 from per-class feature sums and counts, which add up exactly
across clients whatever the skew (FedNCM, "Guiding The Last Layer in Federated
Learning with Pre-Trained Models", NeurIPS 2023, arXiv:2306.03937; Fed3R,
"Accelerating Heterogeneous Federated Learning with Closed-form Classifiers",
ICML 2024, arXiv:2406.01116).

The class-means head: with ``mu_c`` the mean feature of class c over all
clients and ``rbar`` the mean feature norm, ``W_c = scale * mu_c / (|mu_c| rbar)``
and ``b_c = 0``, so ``logit_c(x) = scale * (|x| / rbar) * cos(x, mu_c)``: the
nearest-class-mean classifier by cosine, as a linear layer at logit scale
``head.scale`` (16, a usual cosine-classifier scale: large enough that a
confident softmax is reachable, small enough that the loss still moves the
features).

Mean pooling (``model.pooling: mean``) replaces a BERT model's pooler output by
the attention-masked mean of its last hidden states, the pooling sentence
embedding models such as all-MiniLM-L6-v2 were trained with. It is a forward
hook on the encoder (:func:`attach_mean_pooling`), so the model's own forward,
the PEFT adapter and every caller stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from fedhello.errors import ConfigError

# model families whose sequence-classification head reads the encoder's pooled output
MEAN_POOLING_TYPES = ("bert",)


# --------------------------------------------------------------------------- pooling


def sentence_embedding_pooling(path: str) -> str | None:
    """The pooling a sentence-transformers model folder declares (``mean``, ``cls``), or None."""
    cfg = Path(path) / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        d = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if d.get("pooling_mode_mean_tokens"):
        return "mean"
    if d.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve_pooling(pooling: str, path: str, model_type: str) -> str:
    """``auto`` -> ``mean`` for a sentence-embedding model trained with mean pooling, else ``model``."""
    if pooling == "auto":
        mean = sentence_embedding_pooling(path) == "mean" and model_type in MEAN_POOLING_TYPES
        return "mean" if mean else "model"
    if pooling == "mean" and model_type not in MEAN_POOLING_TYPES:
        raise ConfigError(
            f"config key 'model.pooling': mean pooling is supported for {', '.join(MEAN_POOLING_TYPES)} "
            f"models, not {model_type} (use pooling: model)"
        )
    return pooling


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder (``bert``) inside a (PEFT-wrapped) ...ForSequenceClassification."""
    m = model
    for attr in ("base_model", "model"):  # PeftModel -> LoraModel -> the transformers model
        inner = getattr(m, attr, None)
        if isinstance(inner, torch.nn.Module) and inner is not m:
            m = inner
    prefix = getattr(m, "base_model_prefix", None)
    enc = getattr(m, prefix, None) if prefix else None
    if not isinstance(enc, torch.nn.Module):
        raise ConfigError("config key 'model.pooling': mean pooling found no encoder in this model")
    return enc


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the tokens whose attention mask is 1 (every token when there is no mask)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def attach_mean_pooling(model: torch.nn.Module):
    """Make the model's classifier read the masked mean of the last hidden states; returns the hook handle."""
    enc = encoder_of(model)

    def hook(module, args, kwargs, output):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        if isinstance(output, tuple):
            return (output[0], masked_mean(output[0], mask), *output[2:])
        output["pooler_output"] = masked_mean(output.last_hidden_state, mask)
        return output

    return enc.register_forward_hook(hook, with_kwargs=True)


# --------------------------------------------------------------------------- the head's last layer


def head_linear(model: torch.nn.Module, head_names: Iterable[str], num_classes: int) -> tuple[str, str | None]:
    """(weight name, bias name) of the head's last linear layer: the one with ``num_classes`` outputs."""
    params = dict(model.named_parameters())
    cands = [n for n in head_names if n.endswith(".weight") and params[n].dim() == 2
             and params[n].shape[0] == num_classes]
    if not cands:
        raise ConfigError(
            f"config key 'head.init': class-means needs a head with one output per class ({num_classes}); "
            "none found in this model"
        )
    w = cands[-1]
    b = w[: -len("weight")] + "bias"
    return w, (b if b in params else None)


def _module(model: torch.nn.Module, param_name: str) -> torch.nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0])


def _last_token(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Index of the last non-padding token of each row (as transformers' decoder classifiers pool)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[-1] - 1, dtype=torch.long)
    non_pad = (input_ids != pad_token_id).to(torch.long)
    return (torch.arange(input_ids.shape[-1], device=input_ids.device) * non_pad).argmax(-1).cpu()


@torch.no_grad()
def head_features(
    model: torch.nn.Module, weight_name: str, batches: Iterable[Mapping[str, torch.Tensor]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For every batch, (features (B, D) as float64 on the CPU, labels (B,)): what the head's
    last layer reads. Forward passes only, in eval mode (no dropout)."""
    layer = _module(model, weight_name)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            seen.clear()
            labels = batch["labels"]
            model(**{k: v for k, v in batch.items() if k != "labels"})
            feats = seen[-1]
            if feats.dim() == 3:  # decoder LMs score every position and pool the last real token
                feats = feats[torch.arange(len(labels)), _last_token(batch["input_ids"], model.config.pad_token_id)]
            yield feats.reshape(len(labels), -1).to("cpu", torch.float64), labels.to("cpu")
    finally:
        handle.remove()
        model.train(was_training)


def class_statistics(
    model: torch.nn.Module, weight_name: str, batches: Iterable[Mapping[str, torch.Tensor]], num_classes: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-class sums (C, D) and counts (C,) of the features the head's last layer reads, and the sum of their norms.

    Forward passes only, in eval mode (no dropout); float64 sums, so that the
    statistics of several clients add up to those of their pooled data.
    """
    dim = int(dict(model.named_parameters())[weight_name].shape[1])
    sums = torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    norm_sum = 0.0
    for feats, y in head_features(model, weight_name, batches):
        sums.index_add_(0, y, feats)
        counts += torch.bincount(y, minlength=num_classes).to(torch.float64)
        norm_sum += float(feats.norm(dim=1).sum())
    return sums.numpy(), counts.numpy(), norm_sum


def class_statistics_grouped(
    model: torch.nn.Module,
    weight_name: str,
    batches: Iterable[tuple[Mapping[str, torch.Tensor], np.ndarray]],
    num_groups: int,
    num_classes: int,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """:func:`class_statistics` of several clients from batches that mix them.

    ``batches`` yields (batch, owner) with ``owner[i]`` the group (client position,
    0 .. num_groups-1) of row i. Each group gets the float64 sums of exactly its own
    rows' features, so the result equals per-client :func:`class_statistics` up to
    the float32 forward passes of differently padded batches; the batches can be
    formed over every client's data at once, sorted by length, as evaluation does.
    """
    dim = int(dict(model.named_parameters())[weight_name].shape[1])
    sums = torch.zeros(num_groups * num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_groups * num_classes, dtype=torch.float64)
    norms = torch.zeros(num_groups, dtype=torch.float64)
    pairs = ((b, torch.as_tensor(np.asarray(o, dtype=np.int64))) for b, o in batches)
    owners: list[torch.Tensor] = []

    def unzip():
        for b, o in pairs:
            owners.append(o)
            yield b

    for feats, y in head_features(model, weight_name, unzip()):
        owner = owners.pop(0)
        key = owner * num_classes + y
        sums.index_add_(0, key, feats)
        counts.index_add_(0, key, torch.ones(len(y), dtype=torch.float64))
        norms.index_add_(0, owner, feats.norm(dim=1))
    sums = sums.reshape(num_groups, num_classes, dim).numpy()
    counts = counts.reshape(num_groups, num_classes).numpy()
    return [(sums[g], counts[g], float(norms[g])) for g in range(num_groups)]


def class_means_head(
    sums: np.ndarray, counts: np.ndarray, norm_sum: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of the class-means head (module docstring); a class nobody holds gets a zero row."""
    sums = torch.as_tensor(sums, dtype=torch.float64)
    counts = torch.as_tensor(counts, dtype=torch.float64)
    n = float(counts.sum())
    rbar = norm_sum / n if n > 0 else 1.0
    means = sums / counts.clamp(min=1.0).unsqueeze(1)
    norms = means.norm(dim=1, keepdim=True)
    weight = torch.where(norms > 0, scale * means / (norms.clamp(min=1e-12) * max(rbar, 1e-12)),
                         torch.zeros_like(means))
    return weight, torch.zeros(len(counts), dtype=torch.float64)


# --------------------------------------------------------------------------- local losses


def class_counts(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """How many of ``labels`` fall in each of ``num_classes`` classes, as float32."""
    return torch.as_tensor(np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes), dtype=torch.float32)


def local_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce",
               counts: torch.Tensor | None = None, fedrs_alpha: float = 0.5, fedlc_tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy, or a label-skew correction of it computed from the client's class counts.

    - ``fedrs`` (restricted softmax; FedRS, Li & Zhan, KDD 2021): the logits of
      classes the client does not hold are scaled by ``alpha`` before the softmax,
      so their gradient is scaled by ``alpha`` too.
    - ``fedlc`` (logit calibration; FedLC, Zhang et al., ICML 2022, arXiv:2209.00189):
      ``logit_c - tau * n_c^(-1/4)`` with n_c the client's count of class c; a class
      the client does not hold has n_c = 0, so its calibrated logit is -inf: it
      leaves the softmax and gets no gradient.
    """
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    if counts is None:
        raise ValueError(f"loss {kind!r} needs the client's class counts")
    present = (counts > 0).to(logits.device)
    if kind == "fedrs":
        scale = torch.where(present, torch.ones_like(counts, device=logits.device),
                            torch.full_like(counts, float(fedrs_alpha), device=logits.device))
        return F.cross_entropy(logits * scale.to(logits.dtype), labels)
    if kind == "fedlc":
        shift = torch.full_like(counts, float("inf"), device=logits.device)
        shift[present] = fedlc_tau * counts.to(logits.device)[present].pow(-0.25)
        return F.cross_entropy(logits - shift.to(logits.dtype), labels)
    raise ValueError(f"unknown loss {kind!r}")
