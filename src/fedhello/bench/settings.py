"""What a benchmark run measures and how much of it: the parts, the sizes, the settings.

Kept free of torch so that the ``fedhello`` command can list the parts and
sizes in ``fedhello bench --help`` without loading it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedhello.errors import ConfigError

# the suite's parts, in the order they run (``fedhello bench --only``)
PARTS = ("engine", "freezing", "fisher", "grouping", "accuracy", "scale")


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
        demo_samples=2000, engine_clients=100, engine_per_round=5, engine_rounds=5,
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
    """The options of one ``fedhello bench`` run (model, data, size, device, ...)."""
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
        """The :class:`Sizes` of :attr:`size`."""
        return SIZES[self.size]

    def to_dict(self) -> dict[str, Any]:
        """The settings as a dict for bench.json and the probe processes (``extra`` left out)."""
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        """The settings :meth:`to_dict` gave."""
        return cls(**d)


def parse_parts(only: str | None) -> list[str]:
    """``--only a,b`` as a list of parts (every part when None)."""
    if not only:
        return list(PARTS)
    parts = [p.strip() for p in only.split(",")]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"--only: unknown part {bad[0]!r} (known: {', '.join(PARTS)})")
    return parts
