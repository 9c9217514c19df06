"""Experiment configs, timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from fedhello.bench.settings import Settings
from fedhello.model import load_model_config, num_hidden_layers
from fedhello.model.step import SavedTensorBytes


def data_raw(s: Settings, demo_samples: int | None = None, **over: Any) -> dict[str, Any]:
    """The ``data`` section of a benchmark config: ``--data`` (Banking77-layout CSV) or demo data.

    ``demo_samples`` overrides the size's demo data size; ``over`` adds or replaces keys.
    """
    if s.data:
        raw = {"format": "csv", "path": s.data, "label_column": ["category", "label"], "val_fraction": 0.1}
    else:
        raw = {"format": "demo", "demo_samples": demo_samples or s.sizes.demo_samples, "val_fraction": 0.1}
    raw.update(over)
    return raw


def base_raw(s: Settings, num_layers: int, **over: Any) -> dict[str, Any]:
    """The experiment config (as a dict) the benchmarks start from: Banking77's shape."""
    budgets = sorted({max(1, math.ceil(num_layers / 2)), max(1, math.ceil(2 * num_layers / 3)), num_layers})
    raw: dict[str, Any] = {
        "seed": s.seed,
        "rounds": 10_000,  # never the last round: no final evaluation inside timed rounds
        "device": s.device,
        "model": {"name": s.model, "max_length": s.max_length},
        "lora": {"r": 16, "alpha": 16, "dropout": 0.1},
        "data": data_raw(s),
        "partition": {"name": "dirichlet", "alpha": 0.5},
        "clients": {
            "num_clients": s.sizes.engine_clients, "per_round": s.sizes.engine_per_round,
            "fractions": [1 / len(budgets)] * len(budgets), "budgets": budgets,
        },
        # warm-up longer than the run: the pattern prior only, no Fisher pass inside the timed rounds
        "strategy": {"name": "fedhello", "pattern": "bottleneck", "warmup_rounds": 10_000, "fim_every": 5},
        "train": {"epochs": 1, "batch_size": s.batch_size, "lr": s.lr},
        "eval": {"every": 100_000, "batch_size": 128},  # as configs/banking77.yaml
        # the engine-vs-bare-loop comparison trains and uploads the head, as the bare loop does
        "head": {"train": "federated", "init": "random"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return raw


def model_layers(name: str) -> int:
    """The number of transformer blocks of model ``name`` (read from its config only)."""
    return num_hidden_layers(load_model_config(name))


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only), so that timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Run ``fn`` between device synchronisations; returns (seconds, its result)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def autocast(s: Settings, device: torch.device):
    """bfloat16 autocast on ``device`` with ``--bf16``, else a context that does nothing."""
    if not s.bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def median(xs: Sequence[float]) -> float:
    """The median of ``xs`` as a float."""
    return float(statistics.median(xs))


def rotate(items: Sequence[Any], k: int) -> list[Any]:
    """``items`` rotated by ``k``: each repetition starts with another configuration."""
    k %= len(items)
    return list(items[k:]) + list(items[:k])


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``VmRSS``; elsewhere psutil's ``rss``)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux ``VmHWM``; elsewhere ``ru_maxrss``)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    # ru_maxrss is in bytes on macOS, in KiB on Linux and the BSDs
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


# Bytes of tensors autograd saves for backward, deduplicated by storage: the one count
# the trainer and `fedhello profile` use too (fedhello.model.step).
SavedActivations = SavedTensorBytes


# --------------------------------------------------------------------------- machine


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(s: Settings, device: torch.device) -> dict[str, Any]:
    """What a bench.json records of the machine: device, CPU, threads, versions, load."""
    info: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bf16_autocast": s.bf16,
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info
