"""Layer-wise aggregation of partial client updates (SPEC section 1).

Each tensor of the global state is replaced by the weighted mean over exactly
the clients whose update carries it this round; a tensor nobody trained keeps
its value. The head is in every update, so it is averaged over all clients
(SPEC 8.6). Weights are sample counts (``samples``) or equal (``uniform``, the
reference implementation's plain mean).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from fedhello.errors import UpdateError
from fedhello.federation.client import ClientUpdate
from fedhello.model.state import State


def aggregate(global_state: State, updates: Sequence[ClientUpdate], weighting: str = "samples") -> State:
    """A new global state; ``global_state`` itself is not modified."""
    if weighting not in ("samples", "uniform"):
        raise ValueError(f"unknown weighting {weighting!r}")
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    for u in updates:
        w = float(u.num_samples) if weighting == "samples" else 1.0
        if w <= 0:
            continue
        for name, t in u.tensors.items():
            t64 = t.detach().to(torch.float64)
            if name in sums:
                sums[name] += w * t64
                weights[name] += w
            else:
                sums[name] = w * t64
                weights[name] = w
    out: State = {}
    for name, g in global_state.items():
        if name in sums:
            out[name] = (sums[name] / weights[name]).to(g.dtype)
        else:
            out[name] = g.clone()
    return out


def validate_update(update: ClientUpdate, allowed: Iterable[str], reference: State) -> None:
    """Reject an update that must not be aggregated.

    ``allowed``: the tensor names of the client's allocated layers plus the head;
    ``reference``: the global state (for shapes and dtypes). Raises UpdateError
    naming the first offending tensor.
    """
    allowed = set(allowed)
    if update.num_samples is None or int(update.num_samples) < 1:
        raise UpdateError(f"client {update.client_id}: num_samples must be a positive integer")
    for name, t in update.tensors.items():
        if name not in allowed:
            raise UpdateError(f"client {update.client_id}: tensor {name!r} is outside its allocation")
        ref = reference[name]
        if not isinstance(t, torch.Tensor):
            raise UpdateError(f"client {update.client_id}: {name!r} is not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise UpdateError(
                f"client {update.client_id}: {name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            )
        if t.dtype != ref.dtype:
            raise UpdateError(f"client {update.client_id}: {name!r} has dtype {t.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise UpdateError(f"client {update.client_id}: {name!r} has non-finite values")
