"""Drawing ``b`` distinct layers from per-layer weights (RGD-HLA and FIM-HLA, arXiv:2506.12213).

:func:`systematic_sample` gives every layer the inclusion probability
``pi_l = b * p_l`` exactly (capped at 1, the excess redistributed
proportionally over the uncapped layers: :func:`inclusion_probabilities`), so
the expected collective distribution of RGD-HLA is exactly the pattern.

:func:`weighted_without_replacement` is the reference implementation's draw
(``numpy`` ``choice(replace=False, p=p)``): successive weighted draws, which
give heavy layers less than ``b * p_l`` and light ones more, i.e. flatten the
pattern. It is kept as ``strategy.sampler: weighted_without_replacement``.

Weights need not be normalised; they must be finite and non-negative with a
positive sum. Layers of weight 0 are never drawn, unless fewer than ``b``
layers have positive weight: then every positive layer is drawn (pi=1) and the
remaining slots are filled uniformly at random among the zero-weight layers
(the only way to honour the budget). ``b >= L`` returns all layers. Results are
sorted lists of ints.
"""

from __future__ import annotations

import numpy as np

SAMPLERS: tuple[str, ...] = ("systematic", "weighted_without_replacement")


def _normalised(p) -> np.ndarray:
    p = np.asarray(p, dtype=float).reshape(-1)
    if p.size == 0:
        raise ValueError("layer weights are empty")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"layer weights must be finite and non-negative, got {p.tolist()}")
    total = p.sum()
    if total <= 0:
        raise ValueError("layer weights must have a positive sum")
    return p / total


def inclusion_probabilities(p, b: int) -> np.ndarray:
    """pi_l = b * p_l capped at 1, excess redistributed proportionally; sums to ``b``.

    Iterates: layers whose share would exceed 1 are fixed at 1 and the remaining
    mass ``b - #capped`` is shared among the others in proportion to ``p``
    until no share exceeds 1. If only zero-weight layers are left uncapped, the
    remaining mass is spread uniformly over them (see the module docstring).
    """
    p = _normalised(p)
    L = p.size
    b = int(b)
    if b < 0:
        raise ValueError(f"budget must be non-negative, got {b}")
    if b >= L:
        return np.ones(L)
    pi = np.zeros(L)
    capped = np.zeros(L, dtype=bool)
    while True:
        free = ~capped
        mass = b - int(capped.sum())
        weight = p[free].sum()
        if weight <= 0:
            # only zero-weight layers remain: fill uniformly
            pi[free] = mass / free.sum()
            break
        share = mass * p / weight
        over = free & (share > 1.0)
        if not over.any():
            pi[free] = share[free]
            break
        capped |= over
        pi[capped] = 1.0
    pi[capped] = 1.0
    return np.clip(pi, 0.0, 1.0)


def systematic_sample(p, b: int, rng: np.random.Generator) -> list[int]:
    """``b`` distinct layers with inclusion probabilities exactly :func:`inclusion_probabilities`.

    Systematic (Madow) sampling: the layers, in a fresh random order, are laid
    end to end as intervals of length pi_l on [0, b); the points u, u+1, ...,
    u+b-1 (u uniform in [0,1)) select the layers whose intervals hold them.
    Because every pi_l <= 1 no interval holds two points, and because the
    lengths sum to b there are exactly b points: b distinct layers, layer l
    selected with probability pi_l. The random order keeps joint inclusion
    probabilities from being degenerate (fixed neighbours never co-selected).
    """
    pi = inclusion_probabilities(p, b)
    L = pi.size
    b = int(b)
    if b >= L:
        return list(range(L))
    if b == 0:
        return []
    order = rng.permutation(L)
    ends = np.cumsum(pi[order])
    ends[-1] = float(b)  # exact total despite rounding
    points = rng.random() + np.arange(b)
    idx = np.searchsorted(ends, points, side="right")
    chosen = order[np.minimum(idx, L - 1)]
    out = sorted(int(x) for x in chosen)
    if len(set(out)) != b:  # pragma: no cover - only from pathological rounding
        raise RuntimeError(f"systematic sampling drew a layer twice: {out}")
    return out


def weighted_without_replacement(p, b: int, rng: np.random.Generator) -> list[int]:
    """The reference's draw: ``rng.choice(L, b, replace=False, p=p)`` (flattens the pattern)."""
    p = _normalised(p)
    L = p.size
    b = int(b)
    if b >= L:
        return list(range(L))
    if b <= 0:
        return []
    positive = np.flatnonzero(p > 0)
    if positive.size >= b:
        chosen = rng.choice(L, size=b, replace=False, p=p)
    else:
        zeros = np.flatnonzero(p == 0)
        fill = rng.choice(zeros, size=b - positive.size, replace=False)
        chosen = np.concatenate([positive, fill])
    return sorted(int(x) for x in chosen)


def sample_layers(p, b: int, rng: np.random.Generator, sampler: str = "systematic") -> list[int]:
    """Dispatch on ``strategy.sampler``."""
    if sampler == "systematic":
        return systematic_sample(p, b, rng)
    if sampler == "weighted_without_replacement":
        return weighted_without_replacement(p, b, rng)
    raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
