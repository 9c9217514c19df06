"""Fisher tiers and layer weights for FIM-HLA (Fed-HeLLo, arXiv:2506.12213): pure arithmetic
on per-layer scores (the scores themselves: :mod:`fedhello.model.fisher`).

Tiers: exact 1-D k-means by dynamic programming over the sorted distinct scores
(deterministic, no seed needed; equal scores always share a tier), tiers
numbered by centroid: tier 0 = lowest scores. (The reference's k-means was
unseeded and its tiers not ordered by centroid, so which tier counted as
important was random.)
"""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- tiers and weights


def kmeans_tiers(scores, k: int = 3) -> np.ndarray:
    """Exact 1-D k-means tiers of ``scores``, numbered by centroid (0 = lowest).

    Optimal clustering by dynamic programming over the sorted distinct values
    (weighted by multiplicity), so the result is deterministic. With fewer than ``k`` distinct
    values there are that many tiers (0..d-1). Ties between equally good splits
    go to the split with the lower boundary.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    if s.size == 0:
        return np.zeros(0, dtype=int)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite, got {s.tolist()}")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    d = values.size
    kk = min(int(k), d)
    w = counts.astype(float)
    # prefix sums for O(1) segment cost: cost(i, j) = SSE of values[i:j]
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cs = np.concatenate([[0.0], np.cumsum(w * values)])
    css = np.concatenate([[0.0], np.cumsum(w * values * values)])

    def cost(i: int, j: int) -> float:
        n = cw[j] - cw[i]
        t = cs[j] - cs[i]
        return max(0.0, (css[j] - css[i]) - t * t / n)

    INF = float("inf")
    # dp[c][j]: best cost of the first j distinct values in c clusters
    dp = np.full((kk + 1, d + 1), INF)
    arg = np.zeros((kk + 1, d + 1), dtype=int)
    dp[0][0] = 0.0
    for c in range(1, kk + 1):
        for j in range(c, d + 1):
            best, best_i = INF, c - 1
            for i in range(c - 1, j):
                v = dp[c - 1][i] + cost(i, j)
                if v < best - 1e-12 * max(1.0, abs(best) if best < INF else 1.0):
                    best, best_i = v, i
            dp[c][j] = best
            arg[c][j] = best_i
    # backtrack the boundaries
    label_of_value = np.zeros(d, dtype=int)
    j = d
    for c in range(kk, 0, -1):
        i = arg[c][j]
        label_of_value[i:j] = c - 1
        j = i
    return label_of_value[inverse].astype(int)


def log_scores(scores) -> np.ndarray:
    """Natural logarithms of non-negative scores, zeros first lifted to a millionth of the
    smallest positive score (all zero: all equal), for tiers over orders of magnitude."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"log scores need finite non-negative scores, got {s.tolist()}")
    pos = s[s > 0]
    if pos.size == 0:
        return np.zeros_like(s)
    return np.log(np.maximum(s, pos.min() * 1e-6))


def tier_weights(tiers, k: int | None = None) -> np.ndarray:
    """Tier t -> weight t+1 (low:mid:high = 1:2:3), normalised to sum 1."""
    t = np.asarray(tiers, dtype=int).reshape(-1)
    if t.size == 0:
        return np.zeros(0)
    if np.any(t < 0) or (k is not None and np.any(t >= int(k))):
        raise ValueError(f"tiers out of range for k={k}: {t.tolist()}")
    w = (t + 1).astype(float)
    return w / w.sum()


def score_weights(scores) -> np.ndarray:
    """Weights proportional to the scores (``strategy.fim_weights: scores``); uniform if all 0."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"score-proportional weights need finite non-negative scores, got {s.tolist()}")
    total = s.sum()
    if total <= 0:
        return np.full(s.size, 1.0 / s.size)
    return s / total
