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
from dataclasses import asdict, dataclass, replace
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
        # the meta keys predict_for_shape computes with are checked here, at the trust boundary
        for key in ("tokens_per_batch", "memory_state_base"):
            if key in meta:
                number(meta[key], f"meta.{key}")
        if "memory_state" in meta:
            numbers(meta["memory_state"], "meta.memory_state", n)
        return cls(lin["memory"], lin["step_time"], upload, number(obj.get("upload_base", 0.0), "upload_base"), meta)

    @classmethod
    def load(cls, path: str | Path) -> "LayerCosts":
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read a cost profile ({type(e).__name__}: {e})") from None
        return cls.from_json(obj.get("costs", obj) if isinstance(obj, dict) else obj, where=str(path))


# --------------------------------------------------------------------------- capacities and feasibility
#
# A client declares limits (``clients.limits`` of its resource group, or a Flower node's
# config); with the round's number of local optimizer steps they make its Capacity. A
# layer set S fits a capacity iff
#
#     memory_bytes(S) <= memory limit,  steps * step_seconds(S) <= time limit,
#     upload_bytes(S) <= upload limit.
#
# Strategies draw from per-layer weights, not from a list of sets, so "the strategy's
# distribution restricted to the feasible sets" is made exact through a *window*: for a
# count k the client's floor m_k is the lowest layer such that EVERY k-subset of
# [m_k, L) fits (worst case over those subsets, computed exactly below for each resource,
# so own costs that differ from layer to layer are handled). The family of sets whose
# floor is valid is upward closed (a subset of [m+1, L) is a subset of [m, L)), so m_k is
# found by walking down from L-k. A client's count is min(budget, the largest k whose top-k
# block fits); the top-k block is the cheapest k-set when reach costs are non-negative, and
# the window of that k always holds it. Each strategy then keeps its own rule inside the
# window [m_k, L) (base.Strategy.floor) and every drawn set is checked again against the
# full cost model (ResourceModel.check_plan).

MB = 1e6  # limits are declared in MB of 10^6 bytes


@dataclass(frozen=True)
class Limits:
    """Declared limits of one client; None: no limit on that resource."""

    memory_bytes: float | None = None
    time_s: float | None = None
    upload_bytes: float | None = None

    @classmethod
    def from_mb(cls, memory_mb: float | None = None, time_s: float | None = None,
                upload_mb: float | None = None) -> "Limits":
        return cls(
            None if memory_mb is None else float(memory_mb) * MB,
            None if time_s is None else float(time_s),
            None if upload_mb is None else float(upload_mb) * MB,
        )

    @classmethod
    def from_config(cls, group_limits: Any) -> "Limits":
        """From a ``clients.limits`` entry (an object with memory_mb, time_s, upload_mb) or None."""
        if group_limits is None:
            return cls()
        return cls.from_mb(group_limits.memory_mb, group_limits.time_s, group_limits.upload_mb)

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory_bytes, self.time_s, self.upload_bytes))

    def declared(self) -> dict[str, float]:
        """The set limits, as record fields (``memory_limit_bytes``, ``time_limit_s``, ``upload_limit_bytes``)."""
        out = {}
        for key, v in (("memory_limit_bytes", self.memory_bytes), ("time_limit_s", self.time_s),
                       ("upload_limit_bytes", self.upload_bytes)):
            if v is not None:
                out[key] = float(v)
        return out


@dataclass(frozen=True)
class Capacity:
    """What a client can afford in a round: its limits, and how many optimizer steps it runs."""

    limits: Limits
    steps: int = 1


def local_steps(num_samples: int, batch_size: int, epochs: int, max_steps: int | None = None) -> int:
    """Optimizer steps of one round of local training (LocalTrainer.fit's loop): ceil(n/batch) x epochs,
    at most ``max_steps``."""
    n = epochs * (-(-int(num_samples) // int(batch_size)))
    return int(min(n, max_steps) if max_steps is not None else n)


_RESOURCES = (("memory", "memory_mb", MB, "MB"), ("time", "time_s", 1.0, "s"), ("upload", "upload_mb", MB, "MB"))


def predicted_cost(costs: LayerCosts, cap: Capacity | None, layers: Iterable[int]) -> dict[str, float]:
    """Predicted cost of training ``layers`` for a round: memory bytes, seconds (steps x step time), upload bytes."""
    s = list(layers)
    steps = cap.steps if cap is not None else 1
    return {
        "memory": costs.memory_bytes(s),
        "time": steps * costs.step_seconds(s),
        "upload": costs.upload_bytes(s),
    }


def _limit_values(cap: Capacity) -> dict[str, float | None]:
    return {"memory": cap.limits.memory_bytes, "time": cap.limits.time_s, "upload": cap.limits.upload_bytes}


def fits(costs: LayerCosts, cap: Capacity | None, layers: Iterable[int], tol: float = 1e-9) -> bool:
    """Whether the set fits every declared limit (relative tolerance ``tol`` for float rounding)."""
    if cap is None or not cap.limits.any:
        return True
    pred = predicted_cost(costs, cap, layers)
    return all(lim is None or pred[r] <= lim * (1 + tol) for r, lim in _limit_values(cap).items())


def _topsum(values: np.ndarray, k: int) -> float:
    if k <= 0:
        return 0.0
    return float(np.sort(values)[::-1][:k].sum())


def worst_costs(costs: LayerCosts, steps: int, k: int) -> dict[str, np.ndarray]:
    """For each resource, ``w[m]`` = the highest cost of any k-subset of layers ``[m, L)`` (-inf where
    ``L - m < k``). Exact: a set with lowest layer m' costs base + reach[m':] + own[m'] + its k-1
    other own costs, whose worst is the k-1 largest own costs above m'."""
    L = costs.num_layers
    out: dict[str, np.ndarray] = {}
    for r, lin, scale in (("memory", costs.memory, 1.0), ("time", costs.step_time, float(steps))):
        reach, own = np.asarray(lin.reach), np.asarray(lin.own)
        v = np.full(L, -np.inf)
        for m in range(0, L - k + 1):
            v[m] = scale * (lin.base + reach[m:].sum() + own[m] + _topsum(own[m + 1:], k - 1))
        out[r] = np.maximum.accumulate(v[::-1])[::-1]  # worst over lowest layers m' >= m
    up = np.asarray(costs.upload)
    out["upload"] = np.array([costs.upload_base + _topsum(up[m:], k) if L - m >= k else -np.inf for m in range(L)])
    return out


def window_floors(costs: LayerCosts, cap: Capacity | None, tol: float = 1e-9) -> tuple[int, ...]:
    """``floors[k-1]``: the lowest layer m such that every k-subset of ``[m, L)`` fits ``cap``;
    ``L`` where not even the top-k block fits, and for every larger count after the first such
    k (so the affordable counts are 1..max_count). All zeros without limits."""
    L = costs.num_layers
    if cap is None or not cap.limits.any:
        return tuple([0] * L)
    lims = _limit_values(cap)
    floors = []
    for k in range(1, L + 1):
        if floors and floors[-1] == L:  # counts stay downward closed (a fitted cost with a negative
            floors.append(L)            # coefficient could make a larger block cheaper): none larger
            continue
        worst = worst_costs(costs, cap.steps, k)
        ok = np.ones(L, dtype=bool)
        for r, lim in lims.items():
            if lim is not None:
                ok &= worst[r] <= lim * (1 + tol)
        m = L - k
        if not ok[m]:
            floors.append(L)
            continue
        while m > 0 and ok[m - 1]:
            m -= 1
        floors.append(m)
    return tuple(floors)


def max_count(floors: Sequence[int]) -> int:
    """The largest k whose window holds a k-set (0: no layer set fits)."""
    L = len(floors)
    return max((k for k in range(1, L + 1) if floors[k - 1] <= L - k), default=0)


def _fmt(r: str, v: float) -> str:
    scale, unit = {"memory": (MB, "MB"), "time": (1.0, "s"), "upload": (MB, "MB")}[r]
    return f"{v / scale:.4g} {unit}"


def nothing_fits(costs: LayerCosts, cap: Capacity, where: str) -> str:
    """The reason no layer set fits ``cap``, naming the limit and the cheapest set's cost."""
    L = costs.num_layers
    lims = _limit_values(cap)
    keys = {"memory": "memory_mb", "time": "time_s", "upload": "upload_mb"}
    singles = [predicted_cost(costs, cap, [l]) for l in range(L)]
    for r, lim in lims.items():
        if lim is None:
            continue
        best = min(range(L), key=lambda l: singles[l][r])
        if singles[best][r] > lim * (1 + 1e-9):
            extra = f" over {cap.steps} local steps" if r == "time" else ""
            return (f"{where}: {keys[r]} {_fmt(r, lim)} fits no layer set: the cheapest set, [{best}], "
                    f"needs {_fmt(r, singles[best][r])}{extra}")
    # each limit alone admits some layer, but no window [m, L) fits them all (a window must hold the top layer)
    top = L - 1
    need = ", ".join(f"{keys[r]} {_fmt(r, singles[top][r])} (limit {_fmt(r, lim)})"
                     for r, lim in lims.items() if lim is not None)
    return f"{where}: its limits fit no block of top layers together: the top layer, [{top}], needs {need}"


class ResourceModel:
    """The run's cost model and every client's capacity: what the server asks of feasibility.

    Parameters
    ----------
    costs : LayerCosts
        Per-layer costs (profile.json).
    capacities : dict[int, Capacity]
        Client id -> capacity; a client without an entry, or with no limit set, is unlimited
        (its allocation is the strategy's, unrestricted; its predicted cost is still recorded).
    where : dict[int, str]
        Client id -> how to name its limits in an error (``clients.limits[1]``, a Flower node).
    """

    def __init__(self, costs: LayerCosts, capacities: dict[int, Capacity] | None = None,
                 where: dict[int, str] | None = None):
        self.costs = costs
        self.capacities = dict(capacities or {})
        self.where = dict(where or {})
        self._floors: dict[Capacity | None, tuple[int, ...]] = {}

    @property
    def num_layers(self) -> int:
        return self.costs.num_layers

    def limited(self, cid: int) -> bool:
        cap = self.capacities.get(cid)
        return cap is not None and cap.limits.any

    def floors(self, cid: int) -> tuple[int, ...]:
        cap = self.capacities.get(cid)
        if cap not in self._floors:  # clients of one group and step count share them
            self._floors[cap] = window_floors(self.costs, cap)
        return self._floors[cap]

    def name(self, cid: int) -> str:
        return self.where.get(cid, f"client {cid}")

    def slot(self, s: Any) -> Any:
        """The client's ClientSlot under its limits: count min(budget, affordable), and its floors.

        Raises ConfigError when no layer set fits its limits."""
        if not self.limited(s.id):
            return s
        floors = self.floors(s.id)
        k = max_count(floors)
        if k == 0:
            raise ConfigError(nothing_fits(self.costs, self.capacities[s.id], self.name(s.id)))
        return replace(s, budget=min(s.budget, k), floors=floors)

    def predicted(self, cid: int, layers: Iterable[int], shape: BatchShape | None = None) -> dict[str, Any]:
        """Record fields of a client's round (docs/resources.md):

        - ``bound_memory_bytes``, ``bound_time_s``: the worst case the limits are checked
          against (every step on the profiled worst-case batch, local steps x step time);
        - ``predicted_memory_bytes``, ``predicted_time_s``: the estimate of what it trained,
          :func:`predict_for_shape` of the batches it reports (``shape``); the bound without one;
        - ``predicted_time_clock``: what the time compares with, ``cpu`` (``train_cpu_time_s``)
          or ``wall`` (``train_time_s``): :func:`time_clock` of the profile;
        - the declared limits."""
        cap = self.capacities.get(cid)
        layers = list(layers)
        p = predicted_cost(self.costs, cap, layers)
        out: dict[str, Any] = {"bound_memory_bytes": p["memory"], "bound_time_s": p["time"]}
        if shape is not None and shape.batches > 0:
            mem, sec = predict_for_shape(self.costs, layers, shape)
        else:
            mem, sec = p["memory"], p["time"]
        out.update(predicted_memory_bytes=mem, predicted_time_s=sec, predicted_time_clock=time_clock(self.costs))
        if cap is not None:
            out.update(cap.limits.declared())
        return out

    def check_clients(self, strategy: Any, slots: Sequence[Any]) -> None:
        """Before training: every limited client affords a layer set, and what the strategy needs.

        Raises ConfigError (one line naming the group or node and the cheapest cost) for a
        client whose limits fit no set (whatever the strategy: such a limit is a config error);
        for strategies that train every layer (``limits_policy 'all'``: hetlora, flexlora) when a
        client cannot afford all layers; for Exclusive when no client can. FedIT (``'ignore'``),
        the unconstrained reference, trains every layer whatever the limits."""
        policy = getattr(strategy, "limits_policy", "restrict")
        effective = [self.slot(s) for s in slots]  # raises for a limit that fits no set, whatever the strategy
        if policy == "ignore":
            return
        full = list(range(self.num_layers))
        able = 0
        for s, eff in zip(slots, effective):
            able += eff.budget >= self.num_layers
            if not self.limited(s.id):
                continue
            if policy == "all" and not fits(self.costs, self.capacities[s.id], full):
                p = predicted_cost(self.costs, self.capacities[s.id], full)
                lims = _limit_values(self.capacities[s.id])
                over = ", ".join(f"{r} {_fmt(r, p[r])} > {_fmt(r, lim)}" for r, lim in lims.items()
                                 if lim is not None and p[r] > lim)
                raise ConfigError(f"{self.name(s.id)}: strategy {strategy.name} trains every layer, "
                                  f"which does not fit ({over})")
        if policy == "exclusive" and slots and not able:
            raise ConfigError(f"strategy exclusive: no client can train all {self.num_layers} layers "
                              f"within its limits and budget, so no client could take part")

    def check_plan(self, strategy: Any, allocations: dict[int, list[int]]) -> None:
        """Every allocated set fits its client's limits (FedIT excepted); RuntimeError otherwise (a bug)."""
        if getattr(strategy, "limits_policy", "restrict") == "ignore":
            return
        for cid, layers in allocations.items():
            cap = self.capacities.get(cid)
            if cap is not None and cap.limits.any and not fits(self.costs, cap, layers):
                p = predicted_cost(self.costs, cap, layers)
                raise RuntimeError(f"strategy {strategy.name} allocated client {cid} an infeasible set "
                                   f"{sorted(layers)} (predicted {p}, limits {cap.limits})")


def group_capacities(limits: Sequence[Any] | None, groups: Sequence[int], sample_counts: Sequence[int],
                     batch_size: int, epochs: int, max_steps: int | None) -> tuple[dict[int, Capacity], dict[int, str]]:
    """Capacities of the simulated clients from ``clients.limits`` (one entry per group) and partition sizes."""
    caps: dict[int, Capacity] = {}
    where: dict[int, str] = {}
    if not limits:
        return caps, where
    for cid, g in enumerate(groups):
        caps[cid] = Capacity(Limits.from_config(limits[g]),
                             local_steps(sample_counts[cid], batch_size, epochs, max_steps))
        where[cid] = f"clients.limits[{g}]"
    return caps, where


@dataclass(frozen=True)
class BatchShape:
    """What a client trained in a round: its number of batches (optimizer steps), their padded
    tokens (rows x columns) in all, and the tokens of its largest batch. Without token ids
    (images) a batch's tokens are its rows."""

    batches: int
    tokens: int
    max_tokens: int

    @classmethod
    def of(cls, tokens: Sequence[int]) -> "BatchShape":
        t = [int(x) for x in tokens]
        return cls(len(t), sum(t), max(t, default=0))


def time_clock(costs: LayerCosts) -> str:
    """Which clock the profile's step time is on: ``cpu`` (process CPU time, ``fedhello profile``
    on CPU: compare with a client's ``train_cpu_time_s``) or ``wall`` (CUDA: ``train_time_s``)."""
    meta = costs.meta or {}
    src = str(meta.get("time_source", "")).lower()
    if "cpu time" in src or (not src and meta.get("device") == "cpu"):
        return "cpu"
    return "wall"


def predict_for_batches(costs: LayerCosts, layers: Iterable[int], tokens: Sequence[int]) -> tuple[float, float]:
    """(peak training memory in bytes, training seconds) of training ``layers`` on batches of
    ``tokens`` padded tokens each (rows x columns), from a profile of the worst-case batch:
    :func:`predict_for_shape` of ``BatchShape.of(tokens)``."""
    return predict_for_shape(costs, layers, BatchShape.of(tokens))


def predict_for_shape(costs: LayerCosts, layers: Iterable[int], shape: BatchShape) -> tuple[float, float]:
    """(peak training memory in bytes, training seconds) of training ``layers`` on ``shape``'s batches.

    ``costs`` holds the cost of one step on the profiled batch, ``meta["tokens_per_batch"]``
    tokens (the longest batch the data can form). A client's batches are shorter, so:

    - time: one profiled step's time per ``tokens_per_batch`` tokens, summed over the batches
      (a step's compute grows with its tokens; measured within 10% on Banking77);
    - memory: the step's state (trainable parameters, gradients, optimizer state:
      ``meta["memory_state_base"]`` + ``meta["memory_state"][l]`` per trained layer) plus
      the saved activations scaled by the longest batch's tokens. Activations grow
      linearly with the tokens plus an attention part quadratic in the columns, so the
      linear scaling never predicts less than a batch of at most the profiled rows and
      columns needs: a bound, not an estimate.

    Without ``tokens_per_batch`` (an image model) every batch costs the profiled step; without
    ``memory_state`` (a CUDA profile, an older file) memory is the worst case.
    With no batches: (0, 0).
    """
    layers = sorted({int(l) for l in layers})
    if shape.batches <= 0:
        return 0.0, 0.0
    meta = costs.meta or {}
    ref = meta.get("tokens_per_batch")
    if isinstance(ref, bool) or not isinstance(ref, (int, float)) or ref <= 0:
        return costs.memory_bytes(layers), costs.step_seconds(layers) * shape.batches
    seconds = costs.step_seconds(layers) * shape.tokens / ref
    mem = costs.memory_bytes(layers)
    state = meta.get("memory_state")
    if isinstance(state, list) and len(state) == costs.num_layers:
        fixed = float(meta.get("memory_state_base", 0.0)) + sum(float(state[l]) for l in layers)
        mem = fixed + (mem - fixed) * min(1.0, shape.max_tokens / ref)
    return float(mem), float(seconds)
