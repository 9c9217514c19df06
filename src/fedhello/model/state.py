"""Federated state: the LoRA tensors and head, got and set by name, and real freezing."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from fedhello.errors import FedHelloError
from fedhello.model.layermap import LayerMap

State = dict[str, torch.Tensor]


def get_state(model: torch.nn.Module, names: Iterable[str]) -> State:
    """Detached CPU copies of the named parameters."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True) for n in names}


@torch.no_grad()
def set_state(model: torch.nn.Module, state: State) -> None:
    """Copy tensors into the named parameters in place (no new modules, no deep copy)."""
    params = dict(model.named_parameters())
    for n, t in state.items():
        params[n].copy_(t)


def set_trainable(
    model: torch.nn.Module, layermap: LayerMap, layers: Iterable[int], ffa: bool = False, train_head: bool = True
) -> list[torch.nn.Parameter]:
    """Make exactly the allocated LoRA layers (and the head, with ``train_head``) trainable; freeze the rest.

    Frozen parameters get ``requires_grad=False`` so autograd skips them and the
    optimizer (built from the returned list) holds no state for them (the
    reference's lr-0 "freezing" saved nothing). With ``ffa`` (FFA-LoRA) the A
    matrices stay frozen too.
    """
    allowed = set(layermap.names_for(layers, include_head=train_head))
    if ffa:
        allowed = {n for n in allowed if ".lora_A." not in n}
    federated = set(layermap.all_names)
    trainable: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        on = name in allowed
        if name in federated or p.requires_grad:
            p.requires_grad_(on)
        if on:
            trainable.append(p)
    return trainable


def freeze_all(model: torch.nn.Module, layermap: LayerMap) -> None:
    """No federated tensor trainable (between clients, and for evaluation)."""
    names = set(layermap.all_names)
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)


def state_nbytes(state: State) -> int:
    """Total size in bytes of the tensors of ``state`` (what sending it costs)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def check_state(state: dict, reference: dict, where: str | Path) -> None:
    """``state`` has exactly the tensors of ``reference``, with their shapes and dtypes, all finite."""
    diff = sorted(set(state) ^ set(reference))
    if diff:
        what = "lacks" if diff[0] in reference else "has an unknown tensor"
        raise FedHelloError(f"{where}: the saved state does not match the model (it {what} {diff[0]!r})")
    for name, ref in reference.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise FedHelloError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, the model's is {tuple(ref.shape)}"
            )
        if t.dtype != ref.dtype:
            raise FedHelloError(f"{where}: tensor {name!r} has dtype {t.dtype}, the model's is {ref.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FedHelloError(f"{where}: tensor {name!r} holds NaN or infinite values")
