"""``fedhello predict``: classify texts with a run's exported adapter (:mod:`fedhello.model.adapter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fedhello.errors import FedHelloError
from fedhello.model.adapter import ADAPTER, load_exported


@torch.no_grad()
def predict(run_dir: str | Path, texts: Sequence[str], device: str | torch.device = "cpu"):
    """[(label name, probability, probabilities of every class)] for each text."""
    if not texts:
        raise FedHelloError("predict needs at least one --text")
    model, tok, labels, max_length = load_exported(run_dir, device)
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    probs = torch.softmax(model(**enc).logits.float(), dim=-1).cpu()
    if not bool(torch.isfinite(probs).all()):
        raise FedHelloError(f"{Path(run_dir) / ADAPTER}: the model's outputs are not finite numbers")
    out = []
    for p in probs:
        i = int(p.argmax())
        out.append((labels[i], float(p[i]), p.tolist()))
    return out
