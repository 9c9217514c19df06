"""Device choice: the torch device a config's ``device`` names, checked against this machine."""

from __future__ import annotations

import torch

from fedhello.errors import ConfigError


def pick_device(name: str, what: str = "config key 'device'") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda, cuda:N, mps), which must exist on this machine."""
    from fedhello.config import DEVICE_RE

    if not DEVICE_RE.match(name):
        raise ConfigError(f"{what}: {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}: {name} is not available (PyTorch sees no CUDA device here): use cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: {name} does not exist ({torch.cuda.device_count()} CUDA devices)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}: mps is not available on this machine: use cpu or auto")
    return torch.device(name)
