"""LoRA rank as a per-client quantity: truncation, zero-padding, A/B pairs.

PEFT stores a LoRA module as ``...lora_A.<adapter>.weight`` of shape (r, in)
and ``...lora_B.<adapter>.weight`` of shape (out, r): rank component j is row
j of A together with column j of B. The shared model and the global state keep
the largest rank ``r_max`` (``lora.r``); a client of rank ``r_g`` holds the
first ``r_g`` components (:func:`truncate_rank`), which is what it is sent and
what it uploads. Loaded into the rank-``r_max`` model, components ``>= r_g`` are
zero (:func:`set_state_padded`): with both A row j and B column j zero, the
gradients of both are exactly zero (dL/dB[:, j] needs (A x)_j, dL/dA[j, :] needs
B[:, j]), and AdamW/SGD (with or without weight decay) keep a zero parameter
with zero gradient at zero, so training the padded model trains a rank-``r_g``
LoRA. The LoRA scaling stays PEFT's ``alpha / r_max`` for every client: see
:mod:`fedhello.allocation.rank` for why.
"""

from __future__ import annotations

import torch

from fedhello.model.state import State, param_dict


def is_lora_a(name: str) -> bool:
    """Whether ``name`` is a LoRA A tensor (shape (r, in))."""
    return ".lora_A." in name


def is_lora_b(name: str) -> bool:
    """Whether ``name`` is a LoRA B tensor (shape (out, r))."""
    return ".lora_B." in name


def partner(name: str) -> str:
    """The B tensor name of an A tensor name and vice versa."""
    if is_lora_a(name):
        return name.replace(".lora_A.", ".lora_B.", 1)
    if is_lora_b(name):
        return name.replace(".lora_B.", ".lora_A.", 1)
    raise ValueError(f"{name!r} is not a LoRA tensor")


def rank_of(name: str, t: torch.Tensor) -> int | None:
    """The rank a LoRA tensor holds (None for other tensors)."""
    if is_lora_a(name):
        return int(t.shape[0])
    if is_lora_b(name):
        return int(t.shape[1])
    return None


def max_rank(state: State) -> int | None:
    """The largest rank held in ``state`` (None when it holds no LoRA tensor)."""
    ranks = [r for n, t in state.items() if (r := rank_of(n, t)) is not None]
    return max(ranks) if ranks else None


def truncate_rank(state: State, rank: int | None) -> State:
    """The first ``rank`` components of every LoRA tensor (others unchanged).

    Tensors are views when nothing is cut; a tensor holding fewer than ``rank``
    components is returned as is. ``rank=None`` returns ``state`` itself.
    """
    if rank is None:
        return state
    r = int(rank)
    if r < 1:
        raise ValueError(f"rank must be at least 1, got {r}")
    out: State = {}
    for n, t in state.items():
        if is_lora_a(n):
            out[n] = t[:r, :]
        elif is_lora_b(n):
            out[n] = t[:, :r]
        else:
            out[n] = t
    return out


def pad_rank(state: State, rank: int) -> State:
    """Every LoRA tensor zero-padded to ``rank`` components (others unchanged)."""
    out: State = {}
    for n, t in state.items():
        have = rank_of(n, t)
        if have is None or have == rank:
            out[n] = t
            continue
        if have > rank:
            raise ValueError(f"{n!r} holds rank {have}, more than {rank}")
        if is_lora_a(n):
            z = t.new_zeros((rank, t.shape[1]))
            z[:have, :] = t
        else:
            z = t.new_zeros((t.shape[0], rank))
            z[:, :have] = t
        out[n] = z
    return out


@torch.no_grad()
def set_state_padded(model: torch.nn.Module, state: State) -> None:
    """Like :func:`~fedhello.model.state.set_state`, zero-padding lower-rank LoRA tensors.

    A LoRA tensor with fewer components than the model's parameter fills the
    leading components; the rest of the parameter is set to zero.
    """
    params = param_dict(model, state)
    for n, t in state.items():
        p = params[n]
        if tuple(t.shape) == tuple(p.shape):
            p.copy_(t)
            continue
        have = rank_of(n, t)
        if have is None or have > rank_of(n, p):
            raise ValueError(f"{n!r}: cannot load shape {tuple(t.shape)} into {tuple(p.shape)}")
        p.zero_()
        if is_lora_a(n):
            p[:have, :].copy_(t)
        else:
            p[:, :have].copy_(t)
