"""Resource groups and per-round client sampling, shared by every runtime and the preview.

- :func:`assign_groups`: group sizes by largest-remainder rounding of
  ``fractions * N`` (ties in the remainders: lower group first), then a seeded
  permutation (``default_rng([seed, 7])``) deals the group ids to clients.
- :func:`sample_clients`: round ``t`` samples ``per_round`` clients without
  replacement among the eligible ones with ``default_rng([seed, t, 1])``, sorted.
- :func:`allocation_rng`: the rng a strategy's ``allocate`` gets in round ``t``:
  ``default_rng([seed, t, 2])``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedhello.allocation.base import ClientSlot


def group_sizes(num_clients: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``fractions * num_clients`` (sums to num_clients)."""
    n = int(num_clients)
    f = np.asarray(fractions, dtype=float)
    if n < 0 or f.size == 0 or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"cannot split {num_clients} clients by fractions {list(fractions)}")
    quotas = f / f.sum() * n
    sizes = np.floor(quotas + 1e-9).astype(int)
    rest = n - int(sizes.sum())
    remainders = quotas - sizes
    # largest remainder first; ties: lower group index first (stable sort)
    order = sorted(range(f.size), key=lambda g: (-round(float(remainders[g]), 9), g))
    for g in order[: max(rest, 0)]:
        sizes[g] += 1
    return [int(s) for s in sizes]


def assign_groups(num_clients: int, fractions: Sequence[float], seed: int) -> list[int]:
    """Group id of every client (index = client id)."""
    sizes = group_sizes(num_clients, fractions)
    ids = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng([int(seed), 7])
    return [int(g) for g in rng.permutation(ids)]


def client_slots(groups: Sequence[int], budgets: Sequence[int]) -> list[ClientSlot]:
    """All clients as strategies see them."""
    return [ClientSlot(id=i, group=int(g), budget=int(budgets[g])) for i, g in enumerate(groups)]


def sample_clients(eligible: Sequence[int], per_round: int, seed: int, round: int) -> list[int]:
    """``per_round`` client ids (all of them if fewer are eligible), sorted."""
    pool = np.asarray(sorted(int(c) for c in eligible), dtype=int)
    k = min(int(per_round), pool.size)
    if k <= 0:
        return []
    rng = np.random.default_rng([int(seed), int(round), 1])
    return sorted(int(c) for c in rng.choice(pool, size=k, replace=False))


def allocation_rng(seed: int, round: int) -> np.random.Generator:
    """The rng passed to ``Strategy.allocate`` in ``round``."""
    return np.random.default_rng([int(seed), int(round), 2])
