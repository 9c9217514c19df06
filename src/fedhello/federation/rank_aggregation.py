"""Aggregation rules of the rank-heterogeneous baselines HetLoRA and FlexLoRA.

Both work per LoRA module (A of shape (r, in), B of shape (out, r)); the global
state holds every module at rank ``r_max`` and a client of rank ``r_k`` uploads
its first ``r_k`` components (:mod:`fedhello.model.rank`). A federated head is
averaged layer-wise as for every strategy (:func:`~fedhello.federation.aggregation.aggregate`).

- HetLoRA (Cho et al., 2024, arXiv:2401.06432): every client's A and B zero-padded
  to ``r_max`` and averaged with weights ``p_k = ||B_k A_k||_F / sum_j ||B_j A_j||_F``
  per module (``aggregation.weighting`` if all norms are zero).
- FlexLoRA (Bai et al., 2024, arXiv:2402.11505): ``dW = sum_k w_k B_k A_k`` (weights of
  ``aggregation.weighting``, normalised) redistributed as its truncated SVD, ``B = U_r diag(S_r)``, ``A = V_r^T``,
  computed from QR factorisations without forming dW; the share of dW lost at
  ``r_max`` is reported as ``flexlora_residual``.
- With FFA-LoRA (``lora.ffa``, arXiv:2403.12313) A is frozen and shared, so only B
  is averaged (HetLoRA) or set to the exact product average ``sum_k w_k pad(B_k)``
  (FlexLoRA, no SVD).

The derivations (why the singular values go into B, why truncating the global
SVD is exact, the QR reduction, the FFA-LoRA case) are in
``docs/rank-aggregation.md``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedhello.federation.aggregation import aggregate
from fedhello.federation.client import ClientUpdate
from fedhello.model.rank import is_lora_a, is_lora_b, max_rank, pad_rank, partner
from fedhello.model.state import State


def _base_weight(u: ClientUpdate, weighting: str) -> float:
    if weighting == "samples":
        return float(u.num_samples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting {weighting!r}")


def _modules(global_state: State) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA module in the global state."""
    return [(n, partner(n)) for n in global_state if is_lora_a(n)]


def _client_factors(u: ClientUpdate, a: str, b: str, global_state: State) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The client's (A_k, B_k) of one module in float64, A from the global state when not uploaded (FFA)."""
    if b not in u.tensors and a not in u.tensors:
        return None
    if b in u.tensors:
        B = u.tensors[b].detach().to(torch.float64)
        r = B.shape[1]
    else:
        r = u.tensors[a].shape[0]
        B = global_state[b][:, :r].detach().to(torch.float64)
    A = u.tensors[a].detach().to(torch.float64) if a in u.tensors else global_state[a][:r, :].detach().to(torch.float64)
    return A, B


def _others(global_state: State, updates: Sequence[ClientUpdate], weighting: str) -> State:
    """Layer-wise mean of every non-LoRA tensor (the head); LoRA tensors left as in ``global_state``."""
    stripped = [
        ClientUpdate(u.client_id, u.num_samples, {n: t for n, t in u.tensors.items() if not (is_lora_a(n) or is_lora_b(n))}, u.layers)
        for u in updates
    ]
    return aggregate(global_state, stripped, weighting)


def hetlora_aggregate(
    global_state: State, updates: Sequence[ClientUpdate], weighting: str = "samples"
) -> tuple[State, dict]:
    """Zero-padded, norm-weighted average of rank-heterogeneous updates (HetLoRA)."""
    r_max = max_rank(global_state)
    out = _others(global_state, updates, weighting)
    padded = [pad_rank(u.tensors, r_max) for u in updates]
    weight_sum: dict[int, float] = {}
    n_modules = 0
    for a, b in _modules(global_state):
        holders = []
        for i, u in enumerate(updates):
            f = _client_factors(u, a, b, global_state)
            if f is not None and _base_weight(u, weighting) > 0:
                A, B = f
                holders.append((i, float(torch.linalg.matrix_norm(B @ A))))
        if not holders:
            continue
        total = sum(nrm for _, nrm in holders)
        if total > 0:
            p = {i: nrm / total for i, nrm in holders}
        else:  # nobody moved: fall back to the configured weighting
            base = {i: _base_weight(updates[i], weighting) for i, _ in holders}
            s = sum(base.values())
            p = {i: w / s for i, w in base.items()}
        n_modules += 1
        for i, w in p.items():
            weight_sum[updates[i].client_id] = weight_sum.get(updates[i].client_id, 0.0) + w
        for name in (a, b):
            have = [i for i in p if name in updates[i].tensors]
            if not have:
                continue  # nobody uploaded it (A under FFA): keeps its value
            norm = sum(p[i] for i in have)
            acc = sum(p[i] * padded[i][name].detach().to(torch.float64) for i in have)
            out[name] = (acc / norm).to(global_state[name].dtype)
    info = {"hetlora_weights": {str(c): w / n_modules for c, w in sorted(weight_sum.items())}} if n_modules else {}
    return out, info


def svd_factors(P: torch.Tensor, Q: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, A, S) with B = U_r diag(S_r), A = V_r^T the rank-``rank`` truncated SVD of P @ Q.

    P is (out, R), Q is (R, in). B, A are padded with zeros when P @ Q has fewer
    than ``rank`` singular values (R or a side smaller than ``rank``). S holds all
    singular values of P @ Q (decreasing).
    """
    Qp, Rp = torch.linalg.qr(P)  # (out, k1), (k1, R)
    Qq, Rq = torch.linalg.qr(Q.T)  # (in, k2), (k2, R)
    U_m, S, Vh_m = torch.linalg.svd(Rp @ Rq.T, full_matrices=False)
    U = Qp @ U_m
    V = Qq @ Vh_m.T
    k = min(rank, S.shape[0])
    B = P.new_zeros((P.shape[0], rank))
    A = P.new_zeros((rank, Q.shape[1]))
    B[:, :k] = U[:, :k] * S[:k]
    A[:k, :] = V[:, :k].T
    return B, A, S


def flexlora_aggregate(
    global_state: State, updates: Sequence[ClientUpdate], weighting: str = "samples"
) -> tuple[State, dict]:
    """Sample-weighted average of the full-size products, redistributed by truncated SVD (FlexLoRA)."""
    r_max = max_rank(global_state)
    out = _others(global_state, updates, weighting)
    worst = 0.0
    svd_done = False
    for a, b in _modules(global_state):
        holders = []
        for u in updates:
            w = _base_weight(u, weighting)
            f = _client_factors(u, a, b, global_state)
            if f is not None and w > 0:
                holders.append((u, w, f))
        if not holders:
            continue
        total = sum(w for _, w, _ in holders)
        if not any(a in u.tensors for u, _, _ in holders):
            # FFA: A frozen and shared, the product average is exactly (sum w_k pad(B_k)) A
            acc = sum((w / total) * pad_rank({b: f[1]}, r_max)[b] for _, w, f in holders)
            out[b] = acc.to(global_state[b].dtype)
            continue
        P = torch.cat([f[1] for _, _, f in holders], dim=1)
        Q = torch.cat([(w / total) * f[0] for _, w, f in holders], dim=0)
        B, A, S = svd_factors(P, Q, r_max)
        energy = float((S**2).sum())
        if energy > 0:
            worst = max(worst, float((S[r_max:] ** 2).sum() / energy) ** 0.5)
        svd_done = True
        out[a] = A.to(global_state[a].dtype)
        out[b] = B.to(global_state[b].dtype)
    return out, ({"flexlora_residual": worst} if svd_done else {})
