"""Settings, sizes, timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to run (``full``, ``quick``, ``tiny``)."""

    demo_samples: int  # built-in demo data size when no --data is given
    engine_clients: int
    engine_per_round: int
    engine_rounds: int  # timed rounds (one untimed warm-up round comes first)
    freeze_batches: int  # batches per timed pass
    freeze_reps: int
    fim_samples: int
    fim_reps: int
    pad_samples: int  # one client's training samples
    pad_reps: int
    acc_train: int  # small run comparing final accuracy with / without length grouping
    acc_test: int
    acc_rounds: int
    scale_clients: tuple[int, ...]
    scale_samples: int  # demo data size of the scale runs (fixed: only the client count varies)
    scale_rounds: int  # timed rounds per client count (after one warm-up round)
    # peak memory of each freezing configuration in a fresh process (False: in this one, for the tests)
    memory_fresh_process: bool = True


SIZES: dict[str, Sizes] = {
    "full": Sizes(
        demo_samples=4000, engine_clients=100, engine_per_round=10, engine_rounds=3,
        freeze_batches=8, freeze_reps=4, fim_samples=100, fim_reps=5, pad_samples=320, pad_reps=5,
        acc_train=800, acc_test=500, acc_rounds=3,
        scale_clients=(100, 1000, 10000), scale_samples=16000, scale_rounds=4,
    ),
    "quick": Sizes(
        demo_samples=2000, engine_clients=100, engine_per_round=5, engine_rounds=2,
        freeze_batches=4, freeze_reps=2, fim_samples=100, fim_reps=2, pad_samples=160, pad_reps=3,
        acc_train=240, acc_test=200, acc_rounds=1,
        scale_clients=(100, 1000, 10000), scale_samples=14000, scale_rounds=2,
    ),
    # the tests: every code path, seconds on a tiny model
    "tiny": Sizes(
        demo_samples=300, engine_clients=8, engine_per_round=3, engine_rounds=1,
        freeze_batches=2, freeze_reps=1, fim_samples=12, fim_reps=1, pad_samples=24, pad_reps=1,
        acc_train=60, acc_test=30, acc_rounds=1,
        scale_clients=(10, 40), scale_samples=300, scale_rounds=1, memory_fresh_process=False,
    ),
}


@dataclass
class Settings:
    model: str = "minilm"
    data: str | None = None  # folder with train.csv/test.csv (Banking77 layout); None: built-in demo data
    size: str = "full"
    max_length: int = 64
    batch_size: int = 16
    lr: float = 5e-3
    device: str = "auto"
    bf16: bool = False
    threads: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> Sizes:
        return SIZES[self.size]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        return cls(**d)


def data_raw(s: Settings, demo_samples: int | None = None, **over: Any) -> dict[str, Any]:
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
    from fedhello.model import load_model_config, num_hidden_layers

    return num_hidden_layers(load_model_config(name))


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def autocast(s: Settings, device: torch.device):
    if not s.bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def median(xs: Sequence[float]) -> float:
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
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # best effort off Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SavedActivations:
    """Bytes of tensors autograd saves for backward (the activation memory), deduplicated by storage."""

    def __init__(self):
        self.seen: dict[tuple[int, int], int] = {}

    def _pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            key = (st.data_ptr(), t.device.index or 0)
            self.seen[key] = max(self.seen.get(key, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
            pass
        return t

    def __enter__(self):
        self.seen.clear()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.seen.values())


# --------------------------------------------------------------------------- machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(s: Settings, device: torch.device) -> dict[str, Any]:
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
