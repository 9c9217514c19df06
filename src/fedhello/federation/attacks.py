"""A simulated malicious client, FOR EXPERIMENTS ONLY (config section ``attack``).

:class:`AttackRunner` wraps the in-process runner and rewrites the replies of one
client (``attack.client``) before the Server sees them, so an attack goes through
exactly the screening and aggregation every runtime uses. The Flower runtimes refuse
an ``attack`` config. The attacks (``attack.kind``, size ``attack.factor``):

- ``scale``: the update's delta (reply minus the state it was sent) times ``factor``
  (1e30: model replacement by overflow; -10: a sign flip of ten times the size);
- ``noise``: every tensor replaced by Gaussian noise of standard deviation ``factor``;
- ``stats-count``: class counts times ``factor`` (rounded), the sums scaled alike;
- ``stats-mean``: every class mean moved by ``factor`` along a fixed random direction;
- ``stats-norm``: the sum of feature norms times ``factor``;
- ``fisher``: the Fisher scores of the top layer and the claimed count times ``factor``.

A class-statistics or Fisher attack leaves updates alone, and the other way round.
In a training or Fisher round the attacker is ``attack.client`` when it is sampled,
else the lowest-id sampled client: every round holds one malicious reply, as when one
of the sampled clients is compromised; the class statistics (all clients) come from
``attack.client``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.model.state import State

UPDATE_ATTACKS = ("scale", "noise")


def _part(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return g[tuple(slice(0, n) for n in t.shape)]


def attack_update(u: ClientUpdate, global_state: State, kind: str, factor: float, seed: int = 0) -> ClientUpdate:
    """``u`` as the attacker sends it (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in u.tensors.items():
        ref = _part(global_state[name], t).to(torch.float64)
        if kind == "scale":
            v = ref + (t.to(torch.float64) - ref) * factor
        elif kind == "noise":
            v = torch.randn(t.shape, generator=gen, dtype=torch.float64) * factor
        else:
            raise ValueError(f"not an update attack: {kind!r}")
        out[name] = v.to(t.dtype)
    return dataclasses.replace(u, tensors=out)


def attack_stats(stats: tuple[np.ndarray, np.ndarray, float], kind: str, factor: float, seed: int = 0):
    """Class statistics ``(sums, counts, norm_sum)`` as the attacker sends them."""
    sums, counts, norm_sum = (np.array(stats[0], dtype=np.float64), np.array(stats[1], dtype=np.float64),
                              float(stats[2]))
    if kind == "stats-count":
        k = np.round(factor)
        return sums * k, counts * k, norm_sum * k
    if kind == "stats-mean":
        d = np.random.default_rng(seed).standard_normal(sums.shape[1])
        d /= np.linalg.norm(d)
        shifted = sums + counts[:, None] * factor * d[None, :]
        return shifted, counts, max(norm_sum, float(np.linalg.norm(shifted, axis=1).sum()))
    if kind == "stats-norm":
        return sums, counts, norm_sum * factor
    raise ValueError(f"not a class-statistics attack: {kind!r}")


class AttackRunner:
    """A :class:`~fedhello.federation.server.ClientRunner` whose client ``attack.client`` lies."""

    def __init__(self, runner, attack):
        self.runner, self.kind, self.cid, self.factor = runner, attack.kind, attack.client, attack.factor

    def attacker(self, ids: Sequence[int]) -> int | None:
        """The round's malicious client among ``ids`` (module docstring)."""
        ids = list(ids)
        return self.cid if self.cid in ids else (min(ids) if ids else None)

    def fit(self, tasks: Sequence[FitTask], global_state: State):
        res = self.runner.fit(tasks, global_state)
        if self.kind not in UPDATE_ATTACKS:
            return res
        bad = self.attacker([t.client_id for t in tasks])
        return [attack_update(r, global_state, self.kind, self.factor, seed=r.client_id + 1000 * tasks[0].round)
                if isinstance(r, ClientUpdate) and r.client_id == bad else r for r in res]

    def scores(self, client_ids: Sequence[int], global_state: State):
        res = self.runner.scores(client_ids, global_state)
        if self.kind != "fisher":
            return res
        out = []
        bad = self.attacker(client_ids)
        for cid, r in zip(client_ids, res):
            if cid == bad and not isinstance(r, ClientFailure):
                s = np.array(r[0], dtype=np.float64)
                s[-1] = (s.max() + 1.0) * self.factor
                r = (s, int(r[1] * self.factor))
            out.append(r)
        return out

    def class_stats(self, client_ids: Sequence[int], global_state: State):
        res = self.runner.class_stats(client_ids, global_state)
        if not self.kind.startswith("stats-"):
            return res
        return [attack_stats(r, self.kind, self.factor) if cid == self.cid and not isinstance(r, ClientFailure)
                else r for cid, r in zip(client_ids, res)]

    def available(self):
        return self.runner.available()
