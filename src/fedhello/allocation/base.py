"""The strategy interface: who trains which LoRA layers each round.

A strategy maps (round, sampled clients with their budgets) to a sorted list of
layer indices per client (layer 0 nearest the input). It knows nothing of models,
data or how clients are reached: the only window on the model is an optional
``scores`` callable that returns per-layer importance scores (Fisher information)
of the current global model, computed by whatever runtime runs the round.

Strategies are registered by name with :func:`register` and built from the
config by :func:`build_strategy`; every random choice comes from the ``rng``
the engine passes in (derived from seed and round), so a run is reproducible
and resumable from the strategy's :meth:`Strategy.state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from fedhello.config import STRATEGY_NAMES, StrategyConfig, did_you_mean
from fedhello.errors import ConfigError

ScoreProvider = Callable[[], np.ndarray]
"""Returns per-layer importance scores (length L) of the current global model."""


@dataclass(frozen=True)
class ClientSlot:
    """A sampled client as a strategy sees it."""

    id: int
    group: int
    budget: int


@dataclass
class RoundPlan:
    """The allocation of one round."""

    # client id -> sorted, distinct layer indices in [0, L)
    allocations: dict[int, list[int]]
    # extra fields for the round's metrics record (e.g. fim_scores, fim_tiers)
    info: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class. Subclasses set ``name`` and implement :meth:`allocate`."""

    name: ClassVar[str] = ""
    # How the federation layer merges this strategy's client updates: "layerwise"
    # (sample-weighted average of each tensor over the clients that trained it, the
    # rule of Fed-HeLLo, arXiv 2506.12213) or a rank-heterogeneous rule
    # ("hetlora", arXiv 2401.06432; "flexlora", arXiv 2402.11505).
    aggregation: ClassVar[str] = "layerwise"
    # whether allocate() asks for Fisher scores (the runtime then prepares a
    # calibration set or asks clients, per strategy.fim_source)
    uses_fisher: ClassVar[bool] = False
    # whether client_rank() varies the LoRA rank (strategy.ranks is then meaningful)
    uses_ranks: ClassVar[bool] = False

    def __init__(self, cfg: StrategyConfig, num_layers: int, budgets: Sequence[int]):
        self.cfg = cfg
        self.num_layers = int(num_layers)
        self.budgets = [int(b) for b in budgets]
        for b in self.budgets:
            if b > self.num_layers:
                raise ConfigError(
                    f"clients.budgets: budget {b} is larger than the model's {self.num_layers} LoRA layers"
                )

    def eligible(self, client: ClientSlot) -> bool:
        """Whether the client may be sampled at all (Exclusive excludes weak clients)."""
        return True

    def allocate(
        self,
        round: int,
        clients: Sequence[ClientSlot],
        rng: np.random.Generator,
        scores: ScoreProvider | None = None,
    ) -> RoundPlan:
        raise NotImplementedError

    def client_rank(self, client: ClientSlot, max_rank: int) -> int | None:
        """LoRA rank the client trains (its first components of the global adapter).

        ``max_rank`` is the global adapter's rank (``lora.r``). None (the default):
        the full rank. Rank-heterogeneous strategies (hetlora, flexlora) override it.
        """
        return None

    def trained_layers(self, budget: int) -> int:
        """How many LoRA layers a client of this budget trains (for cost reports)."""
        return budget

    # Strategies with state across rounds (cached Fisher scores, ...) override these.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    STRATEGY_NAMES.add(cls.name)  # what the config accepts as strategy.name
    return cls


def available_strategies() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"strategy.name: unknown strategy {name!r}{did_you_mean(name, _REGISTRY)} "
            f"(known: {', '.join(available_strategies())})"
        ) from None


def build_strategy(cfg: StrategyConfig, num_layers: int, budgets: Sequence[int]) -> Strategy:
    return strategy_class(cfg.name)(cfg, num_layers, budgets)


def spread_evenly(num_layers: int, budget: int) -> list[int]:
    """``budget`` layer indices spread evenly over depth (both ends included when b>1)."""
    if budget >= num_layers:
        return list(range(num_layers))
    if budget == 1:
        return [num_layers // 2]
    # round half up of l*(L-1)/(b-1): distinct because the step (L-1)/(b-1) >= 1
    return [int((2 * i * (num_layers - 1) + (budget - 1)) // (2 * (budget - 1))) for i in range(budget)]
