"""``fedhello predict``: classify texts with a run's exported adapter (:mod:`fedhello.model.adapter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fedhello.errors import FedHelloError
import json

from fedhello.model.adapter import ADAPTER, INFO, load_exported
from fedhello.tasks import TEXT_CLS, TEXT_PAIR


@torch.no_grad()
def predict_logits(run_dir: str | Path, texts: Sequence[str], pairs: Sequence[str] | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[str]]:
    """(logits (len(texts), classes) as float32 on the CPU, label names) of the run's exported model.

    ``pairs`` gives each text its second text, for a text-pair-classification adapter
    (and is refused for a single-text one).
    """
    if not texts:
        raise FedHelloError("predict needs at least one --text")
    model, tok, labels, max_length = load_exported(run_dir, device)
    task = exported_task(run_dir)
    if task == TEXT_PAIR and not pairs:
        raise FedHelloError(f"--run {run_dir}: a text-pair adapter: give each --text its second text with --pair")
    if task != TEXT_PAIR and pairs:
        raise FedHelloError(f"--run {run_dir}: a single-text adapter ({task}): --pair is for text-pair adapters")
    if pairs is not None and len(pairs) != len(texts):
        raise FedHelloError(f"--pair: {len(pairs)} given for {len(texts)} --text (one second text per text)")
    args = (list(texts), list(pairs)) if pairs else (list(texts),)
    enc = tok(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    logits = model(**enc).logits.float().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise FedHelloError(f"{Path(run_dir) / ADAPTER}: the model's outputs are not finite numbers")
    return logits, labels


def exported_task(run_dir: str | Path) -> str:
    """The task an exported adapter was trained for (``text-classification`` for adapters that predate the key)."""
    try:
        info = json.loads((Path(run_dir) / ADAPTER / INFO).read_text())
    except (OSError, ValueError):
        return TEXT_CLS
    return info.get("task", TEXT_CLS) if isinstance(info, dict) else TEXT_CLS


def predict(run_dir: str | Path, texts: Sequence[str], device: str | torch.device = "cpu",
            pairs: Sequence[str] | None = None):
    """[(label name, probability, probabilities of every class)] for each text (and its pair)."""
    logits, labels = predict_logits(run_dir, texts, pairs, device)
    probs = torch.softmax(logits, dim=-1)
    out = []
    for p in probs:
        i = int(p.argmax())
        out.append((labels[i], float(p[i]), p.tolist()))
    return out
