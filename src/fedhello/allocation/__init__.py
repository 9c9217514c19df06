"""Heterogeneous LoRA allocation: strategies deciding which layers each client trains."""

from fedhello.allocation.base import (
    ClientSlot,
    RoundPlan,
    ScoreProvider,
    Strategy,
    available_strategies,
    build_strategy,
    register,
    spread_evenly,
    strategy_class,
)

# Importing the modules registers their strategies.
from fedhello.allocation import baselines  # noqa: E402,F401
from fedhello.allocation import hla  # noqa: E402,F401
from fedhello.allocation import rank  # noqa: E402,F401

__all__ = [
    "ClientSlot",
    "RoundPlan",
    "ScoreProvider",
    "Strategy",
    "available_strategies",
    "build_strategy",
    "register",
    "spread_evenly",
    "strategy_class",
]
