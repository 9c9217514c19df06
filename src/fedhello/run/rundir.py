"""The run directory contract, written atomically.

```
DIR/config.yaml      the resolved config
DIR/metrics.jsonl    one JSON object per round
DIR/summary.json     the run's result (written when the last round is done)
DIR/checkpoint.pt    global state + strategy state + metrics after the last finished round
DIR/partition.json   per-client indices and statistics; DIR/clients.json groups; DIR/labels.json
```
Every file is written to a temporary name beside it and renamed into place, so
a killed run never leaves a truncated file. The checkpoint holds the metrics
records too: on resume, metrics.jsonl is rewritten from it, so the two never
disagree.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from fedhello.errors import FedHelloError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # -- config -------------------------------------------------------------
    def has_run(self) -> bool:
        return self.file(CONFIG).is_file()

    def read_config_dict(self) -> dict:
        p = self.file(CONFIG)
        if not p.is_file():
            raise FedHelloError(f"{p}: no run to resume here (config.yaml missing)")
        return yaml.safe_load(p.read_text()) or {}

    def write_config(self, cfg_dict: dict) -> None:
        atomic_write_text(self.file(CONFIG), yaml.safe_dump(cfg_dict, sort_keys=False))

    # -- metrics / summary ----------------------------------------------------
    def write_metrics(self, records: list[dict]) -> None:
        text = "".join(json.dumps(_clean(r)) + "\n" for r in records)
        atomic_write_text(self.file(METRICS), text)

    def read_metrics(self) -> list[dict]:
        p = self.file(METRICS)
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    # -- checkpoint ------------------------------------------------------------
    def save_checkpoint(self, ckpt: dict) -> None:
        atomic_torch_save(self.file(CHECKPOINT), ckpt)

    def load_checkpoint(self) -> dict | None:
        p = self.file(CHECKPOINT)
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as err:  # corrupt file: say which
            raise FedHelloError(f"{p}: cannot read checkpoint ({type(err).__name__})") from None
