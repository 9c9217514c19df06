"""What a layer set costs a client, and what a client can afford.

A client that trains the LoRA layers ``S`` (layer 0 nearest the input) pays for more
than ``|S|`` layers: autograd keeps activations from the *lowest* trained layer up,
and the backward pass runs down to it (SPEC section 9; the layer-count budgets of the
paper do not see this). :class:`LayerCosts` is the per-layer cost model that says so
with plain numbers::

    cost(S) = base + sum(reach[l] for l >= min(S)) + sum(own[l] for l in S)

- ``reach[l]``: what the backward reaching block ``l`` adds (its saved activations,
  its share of the backward), paid whether or not ``l`` itself is trained;
- ``own[l]``: what training block ``l``'s LoRA tensors adds (parameters, gradients,
  optimizer state, the LoRA branch's own activations);
- ``base``: the rest (the head, the forward of the frozen model, the loss).

There is one such model per resource: training memory in bytes and step time in
seconds. Upload is exact: the bytes of the trained LoRA tensors. The numbers are
measured on the device in :mod:`fedhello.model` (``fedhello profile``) and handed
down here; this module knows nothing of torch, models or data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fedhello.errors import ConfigError


@dataclass(frozen=True)
class LinearCost:
    """One resource's cost model: ``base + sum(reach[min(S):]) + sum(own[S])``."""

    base: float
    reach: tuple[float, ...]
    own: tuple[float, ...]

    @property
    def num_layers(self) -> int:
        return len(self.reach)

    def __call__(self, layers: Iterable[int]) -> float:
        s = sorted({int(l) for l in layers})
        if not s:
            return float(self.base)
        return float(self.base + sum(self.reach[s[0]:]) + sum(self.own[l] for l in s))


def design_row(layers: Iterable[int], num_layers: int) -> np.ndarray:
    """The features of a layer set for :func:`fit_linear_cost`: ``[1, reach indicators, own indicators]``."""
    row = np.zeros(1 + 2 * num_layers)
    row[0] = 1.0
    s = sorted({int(l) for l in layers})
    if s:
        row[1 + s[0]:1 + num_layers] = 1.0
        for l in s:
            row[1 + num_layers + l] = 1.0
    return row


def fit_linear_cost(sets: Sequence[Sequence[int]], values: Sequence[float], num_layers: int,
                    tied: bool = False) -> LinearCost:
    """Least-squares fit of a :class:`LinearCost` to measured ``(layer set, cost)`` pairs.

    Some coefficients are not separable from what can be measured (``reach[0]`` and
    ``own[0]`` always come together, since ``min(S) = 0`` means ``0`` is trained); the
    minimum-norm solution splits them, which leaves every prediction unchanged.

    ``tied``: one ``reach`` and one ``own`` for every layer (three coefficients in all),
    for blocks of one shape measured with noise (step times on a loaded machine): the
    per-layer fit has as many coefficients as the profile has fit sets, so it would
    follow each set's noise; the tied fit averages it out.
    """
    if len(sets) != len(values) or not sets:
        raise ValueError("fit_linear_cost needs as many costs as layer sets, at least one")
    x = np.stack([design_row(s, num_layers) for s in sets])
    y = np.asarray(values, dtype=np.float64)
    if tied:
        xt = np.stack([x[:, 0], x[:, 1:1 + num_layers].sum(1), x[:, 1 + num_layers:].sum(1)], axis=1)
        (b, r, o), *_ = np.linalg.lstsq(xt, y, rcond=None)
        return LinearCost(base=float(b), reach=(float(r),) * num_layers, own=(float(o),) * num_layers)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return LinearCost(
        base=float(coef[0]),
        reach=tuple(float(c) for c in coef[1:1 + num_layers]),
        own=tuple(float(c) for c in coef[1 + num_layers:]),
    )


@dataclass(frozen=True)
class LayerCosts:
    """The cost of training a layer set on one device, model, batch size and ``max_length``.

    Attributes
    ----------
    memory : LinearCost
        Training memory of one step in bytes (CPU: bytes autograd saves for backward
        plus trainable parameters, gradients and optimizer state; CUDA: peak allocated
        above the loaded model).
    step_time : LinearCost
        Seconds per optimizer step.
    upload : tuple[float, ...]
        Bytes uploaded for each trained layer (exact, from the LoRA tensor sizes).
    upload_base : float
        Bytes uploaded whatever the layers (a federated head); 0 otherwise.
    meta : dict
        What the costs were measured on (model, device, batch size, max_length, ...).
    """

    memory: LinearCost
    step_time: LinearCost
    upload: tuple[float, ...]
    upload_base: float = 0.0
    meta: dict | None = None

    @property
    def num_layers(self) -> int:
        return len(self.upload)

    def memory_bytes(self, layers: Iterable[int]) -> float:
        return self.memory(layers)

    def step_seconds(self, layers: Iterable[int]) -> float:
        return self.step_time(layers)

    def upload_bytes(self, layers: Iterable[int]) -> float:
        return float(self.upload_base + sum(self.upload[int(l)] for l in set(layers)))

    # --- JSON (profile.json is a file a user hands us: parsed and checked, never executed) ---
    def to_json(self) -> dict[str, Any]:
        return {
            "memory": asdict(self.memory),
            "step_time": asdict(self.step_time),
            "upload": list(self.upload),
            "upload_base": self.upload_base,
            "meta": self.meta or {},
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "profile") -> "LayerCosts":
        def bad(what: str) -> ConfigError:
            return ConfigError(f"{where}: {what}")

        if not isinstance(obj, dict):
            raise bad("not a JSON object")

        def numbers(v: Any, key: str, n: int | None = None) -> tuple[float, ...]:
            if not isinstance(v, list) or (n is not None and len(v) != n) or not v:
                raise bad(f"'{key}' must be a list of {n or 'some'} numbers")
            out = []
            for x in v:
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise bad(f"'{key}' holds a value that is not a finite number: {x!r}")
                out.append(float(x))
            return tuple(out)

        def number(v: Any, key: str) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"'{key}' must be a finite number")
            return float(v)

        upload = numbers(obj.get("upload"), "upload")
        n = len(upload)
        lin = {}
        for key in ("memory", "step_time"):
            part = obj.get(key)
            if not isinstance(part, dict):
                raise bad(f"'{key}' must be an object with base, reach and own")
            lin[key] = LinearCost(
                base=number(part.get("base"), f"{key}.base"),
                reach=numbers(part.get("reach"), f"{key}.reach", n),
                own=numbers(part.get("own"), f"{key}.own", n),
            )
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise bad("'meta' must be an object")
        return cls(lin["memory"], lin["step_time"], upload, number(obj.get("upload_base", 0.0), "upload_base"), meta)

    @classmethod
    def load(cls, path: str | Path) -> "LayerCosts":
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read a cost profile ({type(e).__name__}: {e})") from None
        return cls.from_json(obj.get("costs", obj) if isinstance(obj, dict) else obj, where=str(path))
