"""Federated state: the LoRA tensors and head, got and set by name, and real freezing."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Iterable

import torch

from fedhello.errors import FedHelloError
from fedhello.model.layermap import LayerMap

State = dict[str, torch.Tensor]

# model -> {name: parameter}: every client of a round looks parameters up by name several
# times, and walking the module tree each time was a visible share of a small client's round
_PARAMS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.nn.Parameter]]" = weakref.WeakKeyDictionary()


def param_dict(model: torch.nn.Module, names: Iterable[str] = ()) -> dict[str, torch.nn.Parameter]:
    """``dict(model.named_parameters())``, kept per model. fedhello never adds, removes or
    replaces a built model's parameters (state is copied into them in place); the mapping is
    rebuilt when one of ``names`` is not in it."""
    cached = _PARAMS.get(model)
    if cached is None or any(n not in cached for n in names):
        cached = dict(model.named_parameters())
        _PARAMS[model] = cached
    return cached


def get_state(model: torch.nn.Module, names: Iterable[str]) -> State:
    """Detached CPU copies of the named parameters."""
    names = list(names)
    params = param_dict(model, names)
    return {n: params[n].detach().to("cpu", copy=True) for n in names}


@torch.no_grad()
def set_state(model: torch.nn.Module, state: State) -> None:
    """Copy tensors into the named parameters in place (no new modules, no deep copy)."""
    params = param_dict(model, state)
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
    for name, p in param_dict(model).items():
        on = name in allowed
        if name in federated or p.requires_grad:
            p.requires_grad_(on)
        if on:
            trainable.append(p)
    return trainable


def freeze_all(model: torch.nn.Module, layermap: LayerMap) -> None:
    """No federated tensor trainable (between clients, and for evaluation)."""
    params = param_dict(model, layermap.all_names)
    for name in layermap.all_names:
        params[name].requires_grad_(False)


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
