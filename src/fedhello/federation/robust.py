"""Bounds on what one client can do to a round: every magnitude a client sends is bounded before use.

The Server screens a reply's form (:mod:`fedhello.federation.aggregation`); this module
bounds its *size*, for each of the three messages a client sends, the same way for every
runtime (in-process and Flower replies go through :class:`~fedhello.federation.server.Server`):

- **LoRA updates** (:func:`bound_update_norms`): norm bounding against model
  replacement (Sun et al., arXiv:1911.07963), per tensor: each client's delta
  (its tensor minus the global tensor it was sent, truncated to its rank) is scaled
  down to at most ``aggregation.norm_bound`` times the round's median delta norm of
  that tensor over the clients that hold it and moved it (the lower median, so that
  with two holders the smaller one is the reference; a client may leave a tensor
  unmoved, e.g. a LoRA A in a first step while B is still zero, and zero is no
  reference; a tensor only one client moved this round has none and is not bounded). Each tensor has its own set of
  holders, so heterogeneous layer sets and the rank strategies (whose replies are
  truncated to the client's rank) are bounded alike. :func:`robust_mean` then offers
  the coordinate-wise trimmed mean and median (Yin et al., arXiv:1803.01498) in place
  of the weighted mean (``aggregation.robust``), per tensor over its holders.
- **Class statistics** (:func:`combine_class_stats`): a client's counts may not add
  up to more than its partition size; its statistics must be consistent
  (``sum_c |sums_c| <= norm_sum``, which holds for any features by the triangle
  inequality); its mean feature norm is clipped to ``norm_bound`` times the clients'
  median; and per class its mean is pulled towards the coordinate-wise median of the
  holders' means, to at most ``norm_bound`` times their median distance.
- **Fisher scores** (:func:`combine_scores`): the claimed count is capped at the
  partition size; each client's score vector has its norm clipped to ``norm_bound`` times
  the clients' lower median norm, and the vectors are averaged weighted by the capped
  counts (SPEC 2.3's rule, exact for honest clients), so one client moves the combined
  scores by at most ``norm_bound`` median clients of its share of samples.

``aggregation.norm_bound: 0`` turns the bounds off (counts are capped and malformed
messages refused regardless). docs/threat-model.md says what remains possible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from fedhello.federation.client import ClientUpdate
from fedhello.model.state import State


def _lower_median(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[(len(s) - 1) // 2]


def _reference(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The part of global tensor ``g`` a client of reply shape ``t.shape`` was sent (rank truncation)."""
    return g[tuple(slice(0, n) for n in t.shape)]


def bound_update_norms(
    global_state: State, updates: Sequence[ClientUpdate], bound: float
) -> tuple[list[ClientUpdate], dict]:
    """``updates`` with every tensor's delta clipped to ``bound`` x the lower median over its holders.

    Returns the (new) updates and ``{"clipped": {client id: tensors clipped}}`` when
    anything was clipped, else ``{}``. ``bound <= 0``: unchanged.
    """
    if bound <= 0 or len(updates) < 2:
        return list(updates), {}
    norms: dict[str, list[tuple[int, float]]] = {}
    for i, u in enumerate(updates):
        for name, t in u.tensors.items():
            d = t.detach().to(torch.float64) - _reference(global_state[name], t).detach().to(torch.float64)
            norms.setdefault(name, []).append((i, float(torch.linalg.vector_norm(d))))
    new_tensors: dict[int, dict] = {}
    clipped: dict[int, int] = {}
    for name, held in norms.items():
        moved = [n for _, n in held if n > 0]
        if len(moved) < 2:
            continue
        limit = bound * _lower_median(moved)
        for i, n in held:
            if n > limit and n > 0:
                t = updates[i].tensors[name]
                ref = _reference(global_state[name], t).detach().to(torch.float64)
                new_tensors.setdefault(i, dict(updates[i].tensors))[name] = (
                    ref + (t.detach().to(torch.float64) - ref) * (limit / n)).to(t.dtype)
                cid = updates[i].client_id
                clipped[cid] = clipped.get(cid, 0) + 1
    out = [dataclasses.replace(u, tensors=new_tensors[i]) if i in new_tensors else u for i, u in enumerate(updates)]
    return out, ({"clipped": {str(c): n for c, n in sorted(clipped.items())}} if clipped else {})


def robust_mean(global_state: State, updates: Sequence[ClientUpdate], rule: str, trim: float = 0.2) -> State:
    """Per tensor over its holders: the coordinate-wise ``median`` (mean of the two middle values for
    an even count) or ``trimmed-mean`` (the ``floor(trim * k)`` largest and smallest values of each
    coordinate dropped, the rest averaged, unweighted). A tensor nobody holds keeps its value."""
    if rule not in ("median", "trimmed-mean"):
        raise ValueError(f"unknown robust rule {rule!r}")
    held: dict[str, list[torch.Tensor]] = {}
    for u in updates:
        if u.num_samples <= 0:
            continue
        for name, t in u.tensors.items():
            held.setdefault(name, []).append(t.detach().to(torch.float64))
    out: State = {}
    for name, g in global_state.items():
        if name not in held:
            out[name] = g.clone()
            continue
        x = torch.stack(held[name]).sort(dim=0).values
        k = x.shape[0]
        if rule == "median":
            v = (x[(k - 1) // 2] + x[k // 2]) / 2
        else:
            cut = min(int(math.floor(trim * k)), (k - 1) // 2)
            v = x[cut:k - cut].mean(dim=0)
        out[name] = v.to(g.dtype)
    return out


def clip_to_median(points: np.ndarray, bound: float) -> tuple[np.ndarray, int]:
    """Rows of ``points`` (k, D) pulled towards their coordinate-wise median to a distance of at most
    ``bound`` x the lower median of their distances; returns (points, rows clipped). With fewer than 3
    rows, or ``bound <= 0``, unchanged (two points are each other's only reference)."""
    points = np.asarray(points, dtype=np.float64)
    if bound <= 0 or points.shape[0] < 3:
        return points, 0
    med = np.median(points, axis=0)
    dist = np.linalg.norm(points - med, axis=1)
    limit = bound * _lower_median(list(dist))
    out = points.copy()
    over = dist > limit
    for i in np.flatnonzero(over):
        out[i] = med + (points[i] - med) * (limit / dist[i])
    return out, int(over.sum())


def combine_class_stats(
    stats: Sequence[tuple[int, np.ndarray, np.ndarray, float]], bound: float
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Totals (sums (C, D), counts (C,), norm sum) of already screened per-client class statistics
    ``(client id, sums, counts, norm_sum)``, bounded as the module docstring says.

    Returns the totals and ``{"clipped_means": n, "clipped_norms": n}`` (only the non-zero ones)."""
    sums = np.stack([s for _, s, _, _ in stats])  # (k, C, D)
    counts = np.stack([c for _, _, c, _ in stats])  # (k, C)
    n = counts.sum(axis=1)
    rbar = np.array([ns / nk if nk > 0 else 0.0 for (_, _, _, ns), nk in zip(stats, n)])
    info: dict = {}
    if bound > 0 and len(stats) >= 2:
        ref = _lower_median([r for r, nk in zip(rbar, n) if nk > 0] or [0.0])
        over = rbar > bound * ref
        rbar = np.where(over, bound * ref, rbar)
        if over.any():
            info["clipped_norms"] = int(over.sum())
    norm_sum = float((rbar * n).sum())
    total = np.zeros_like(sums[0])
    clipped = 0
    for c in range(counts.shape[1]):
        holders = np.flatnonzero(counts[:, c] > 0)
        if holders.size == 0:
            continue
        means = sums[holders, c, :] / counts[holders, c, None]
        means, k = clip_to_median(means, bound)
        clipped += k
        total[c] = (means * counts[holders, c, None]).sum(axis=0)
    if clipped:
        info["clipped_means"] = clipped
    return total, counts.sum(axis=0), norm_sum, info


def stats_problem(sums: np.ndarray, counts: np.ndarray, norm_sum: float, max_samples: int | None) -> str | None:
    """Why one client's class statistics cannot be used (None: they can): counts adding up to more than
    its partition, or class sums longer than the norm sum allows (``sum_c |sums_c| <= norm_sum``)."""
    total = float(counts.sum())
    if max_samples is not None and total > max_samples:
        return f"counts add up to {total:.0f}, more than its {max_samples} training samples"
    length = float(np.linalg.norm(sums, axis=1).sum())
    if length > norm_sum * (1 + 1e-6) + 1e-9:
        return f"class sums of total length {length:.4g} exceed the norm sum {norm_sum:.4g}"
    return None


def combine_scores(
    scores: Sequence[tuple[np.ndarray, int]], bound: float
) -> tuple[np.ndarray, int]:
    """Per-layer Fisher scores of several clients ``(scores (L,), capped count)`` combined as SPEC 2.3
    says, the average weighted by the (capped) sample counts, after each vector's norm is clipped to
    ``bound`` x the lower median norm of the clients' vectors; returns (scores, vectors clipped).

    Honest clients' vectors lie within the bound, so their combination is exactly the weighted
    average; an inflated vector counts as at most ``bound`` median clients of its sample share."""
    vecs = np.stack([np.asarray(s, dtype=np.float64) for s, _ in scores])
    clipped = 0
    if bound > 0 and vecs.shape[0] >= 2:
        norms = np.linalg.norm(vecs, axis=1)
        limit = bound * _lower_median(list(norms))
        over = norms > limit
        vecs[over] *= (limit / norms[over])[:, None]
        clipped = int(over.sum())
    w = np.array([float(n) for _, n in scores])
    return (vecs * w[:, None]).sum(axis=0) / w.sum(), clipped
