"""Geometric patterns of GD-HLA / RGD-HLA (Fed-HeLLo, arXiv:2506.12213) for any layer count and budgets.

A pattern is an importance profile over depth (layer 0 nearest the input). A
client of budget ``b`` trains, deterministically, the ``b`` layers ranked first
by the pattern:

- ``uniform``: the ``b`` layers spread evenly over depth (:func:`spread_evenly`).
- ``triangle``: importance decreases with depth; rank = 0, 1, 2, ... (the first
  ``b`` layers, nearest the input).
- ``inverted_triangle``: the mirror; rank = L-1, L-2, ... (the last ``b`` layers).
- ``bottleneck``: both ends first, the middle last. Layers are ranked by their
  distance to the nearer end, ``min(l, L-1-l)``; between the two layers at the
  same distance the input-side one (lower index) comes first. The rank order is
  therefore 0, L-1, 1, L-2, 2, L-3, ... so a budget ``b`` takes ``ceil(b/2)``
  layers from the bottom and ``floor(b/2)`` from the top: the bottom gets the
  extra layer when ``b`` is odd. For L=12 this gives {0,1,2,9,10,11} for b=6 and
  {0,1,2,3,4,8,9,10,11} for b=9 (the reference sets). For odd L the centre
  layer comes last.

The per-layer counts (how many clients train each layer when there is one
client per budget) are the collective distribution the pattern shapes, and the
RGD-HLA sampling probabilities are these counts normalised (1/L for uniform).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedhello.allocation.base import spread_evenly

PATTERNS: tuple[str, ...] = ("uniform", "triangle", "inverted_triangle", "bottleneck")


def _check(pattern: str, num_layers: int) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")
    if num_layers < 1:
        raise ValueError(f"number of layers must be at least 1, got {num_layers}")


def pattern_order(pattern: str, num_layers: int) -> list[int]:
    """All layers, most important first, for the ranked patterns (not ``uniform``)."""
    _check(pattern, num_layers)
    L = num_layers
    if pattern == "triangle":
        return list(range(L))
    if pattern == "inverted_triangle":
        return list(range(L - 1, -1, -1))
    if pattern == "bottleneck":
        # distance to the nearer end, then the input side first
        return sorted(range(L), key=lambda l: (min(l, L - 1 - l), l))
    raise ValueError("the uniform pattern has no ranking: its layers are spread evenly per budget")


def pattern_profile(pattern: str, num_layers: int) -> np.ndarray:
    """The importance profile w_l (higher = more important; all equal for uniform).

    Strictly ordered for the ranked patterns: w_l = L - rank(l), so the top-``b``
    layers by w are exactly :func:`deterministic_layers`.
    """
    _check(pattern, num_layers)
    if pattern == "uniform":
        return np.ones(num_layers, dtype=float)
    w = np.zeros(num_layers, dtype=float)
    for rank, layer in enumerate(pattern_order(pattern, num_layers)):
        w[layer] = num_layers - rank
    return w


def deterministic_layers(pattern: str, num_layers: int, budget: int, floor: int = 0) -> list[int]:
    """The sorted ``budget`` layers a client trains under deterministic GD-HLA.

    ``floor`` > 0 (a client under declared limits reaching only layers ``[floor, L)``):
    the pattern restricted to that window: ``uniform`` spreads the layers evenly over
    the window, the ranked patterns take the ``budget`` reachable layers they rank first.
    """
    _check(pattern, num_layers)
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    floor = int(floor)
    if floor > 0:
        if budget > num_layers - floor:
            raise ValueError(f"budget {budget} does not fit the window [{floor}, {num_layers})")
        if pattern == "uniform":
            return [floor + l for l in spread_evenly(num_layers - floor, budget)] if budget else []
        return sorted([l for l in pattern_order(pattern, num_layers) if l >= floor][:budget])
    if budget >= num_layers:
        return list(range(num_layers))
    if budget == 0:
        return []
    if pattern == "uniform":
        return spread_evenly(num_layers, budget)
    return sorted(pattern_order(pattern, num_layers)[:budget])


def pattern_counts(pattern: str, num_layers: int, budgets: Sequence[int]) -> np.ndarray:
    """Per-layer number of clients training the layer, one client per budget."""
    counts = np.zeros(num_layers, dtype=np.int64)
    for b in budgets:
        counts[deterministic_layers(pattern, num_layers, b)] += 1
    return counts


def pattern_probabilities(pattern: str, num_layers: int, budgets: Sequence[int]) -> np.ndarray:
    """RGD-HLA per-layer probabilities (sum 1): counts/sum(counts); 1/L for uniform."""
    _check(pattern, num_layers)
    if pattern == "uniform":
        return np.full(num_layers, 1.0 / num_layers)
    counts = pattern_counts(pattern, num_layers, budgets).astype(float)
    total = counts.sum()
    if total <= 0:
        raise ValueError("pattern probabilities need at least one positive budget")
    return counts / total
