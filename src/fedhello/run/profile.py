"""``fedhello profile``: what training a LoRA layer set costs on this device, measured.

:func:`measure_costs` trains representative layer sets of the experiment's own model
with the trainer's own step (:func:`fedhello.model.step.train_step`) and fits the
per-layer cost model of :mod:`fedhello.allocation.resources` (SPEC section 9):

- the sets: every single layer and every top-k block (the fit: they pin down every
  coefficient the model can separate), and the sets the layer patterns give each
  configured budget (held out of the fit: the error the profile reports is on them);
- memory: on CPU the counted training memory of a step (saved-for-backward bytes,
  trainable parameters, gradients and optimizer state; :mod:`fedhello.model.step`),
  exact and repeatable; on CUDA the allocator's peak above the loaded model;
- time: on CUDA the wall time of a step (between synchronisations); on CPU the process
  CPU time of a step, i.e. the compute the step itself uses: on an unloaded machine with
  one torch thread that is its wall time, and on a shared machine it stays what the
  step costs while the wall time also counts the other processes (measured side by side
  on a loaded 2-core machine: wall 2 to 4 times CPU, and jumping from step to step). The
  fastest of ``reps`` timed steps per set, the sets interleaved (each repetition in
  another order), so that drift hits every set alike. Records carry the client's
  ``train_cpu_time_s`` beside ``train_time_s`` to compare with it.

Which batch: the worst case the data can form. Activation memory and step time grow
with the tokens of a batch, and a client's batches are padded only to their longest
sample (length-grouped), so they vary from step to step. The profile trains on the
``train.batch_size`` longest training samples, i.e. a full batch padded to the
longest sample the data holds (at most ``model.max_length``). Every batch a client can
form has at most that many rows and columns, so a predicted cost is an upper bound of
every step: a client allocated within its memory limit never exceeds it. The shape is
kept in ``meta`` (``batch_size``, ``seq_len``), so that a comparison of measured and
predicted cost knows what it compares: a client whose longest batch is shorter than
``seq_len`` measures less than predicted, by design. ``seq_len`` can be set lower to
profile a typical rather than the worst batch. To predict a client's actual round,
:func:`fedhello.allocation.resources.predict_for_batches` scales the profile to the
client's padded batch tokens (``meta["tokens_per_batch"]``, ``meta["memory_state"]``):
time in proportion to the tokens, memory with the activations scaled linearly to the
longest batch, which bounds it from above.

The loss is the cross-entropy whatever ``train.loss`` (the label-skew corrections are
elementwise on the logits: the same cost).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from fedhello.allocation.patterns import PATTERNS, deterministic_layers
from fedhello.allocation.resources import LayerCosts, fit_linear_cost
from fedhello.data.batching import collate
from fedhello.errors import ConfigError
from fedhello.federation.client import make_optimizer, uploads_head
from fedhello.model.state import freeze_all, get_state, set_state, set_trainable, state_nbytes
from fedhello.model.step import TrainingMemory, train_step
from fedhello.run.experiment import Experiment, prepare

Log = Callable[[str], None]


@dataclass
class Measurement:
    """One layer set's measured cost."""

    layers: list[int]
    role: str  # "fit" or "heldout"
    label: str  # how the set was chosen ("layer 2", "top 3", "bottleneck b3", ...)
    memory_bytes: float
    step_time_s: float
    step_times_s: list[float] = field(default_factory=list)
    memory_parts: dict = field(default_factory=dict)


def layer_sets(num_layers: int, budgets: Iterable[int]) -> list[tuple[str, str, list[int]]]:
    """(role, label, layers) of the sets to profile: singles and top-k blocks to fit, the
    patterns' sets for ``budgets`` held out (each distinct set once, fit sets first)."""
    L = num_layers
    out: list[tuple[str, str, list[int]]] = []
    seen: set[tuple[int, ...]] = set()

    def add(role, label, layers):
        key = tuple(sorted(layers))
        if key and key not in seen:
            seen.add(key)
            out.append((role, label, list(key)))

    for l in range(L):
        add("fit", f"layer {l}", [l])
    for k in range(2, L + 1):
        add("fit", f"top {k}", list(range(L - k, L)))
    for b in sorted(set(int(b) for b in budgets)):
        for p in PATTERNS:
            add("heldout", f"{p} b{b}", deterministic_layers(p, L, b))
    return out


def worst_batch(exp: Experiment, batch_size: int | None = None, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """A training batch of ``batch_size`` (default ``train.batch_size``) of the longest training
    samples: the largest a client can form (module docstring); ``seq_len`` cuts it shorter."""
    data = exp.train
    b = min(int(batch_size or exp.cfg.train.batch_size), len(data))
    idx = np.argsort(-data.lengths, kind="stable")[:b]
    batch = collate(data, idx, exp.device)
    if seq_len is not None:
        batch = {k: (v[:, : int(seq_len)] if k != "labels" and v.dim() == 2 else v) for k, v in batch.items()}
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_sets(exp: Experiment, sets: Sequence[tuple[str, str, list[int]]], batch: dict[str, torch.Tensor],
                 reps: int = 2, log: Log | None = None) -> list[Measurement]:
    """Train each set of ``sets`` on ``batch`` for ``reps`` timed steps, interleaved across the
    sets (after one untimed warm-up step). A set's step time is the fastest of its steps: load
    from other processes only ever slows a step down. Its memory is the counted training
    memory of its steps (CPU; the same every step) or the allocator's peak over two steps (CUDA:
    from the second step on the optimizer state and the last gradients are alive during the
    forward). The model's federated state is restored afterwards."""
    cfg, model, lm, dev = exp.cfg, exp.model, exp.layermap, exp.device
    cuda = dev.type == "cuda"
    saved_state = get_state(model, lm.all_names)
    times: list[list[float]] = [[] for _ in sets]
    mems: list[float] = [0.0] * len(sets)
    parts: list[dict] = [{} for _ in sets]

    def one_step(layers: list[int], first: bool) -> tuple[float, float, dict]:
        params = set_trainable(model, lm, layers, ffa=cfg.lora.ffa, train_head=cfg.head.train != "frozen")
        opt = make_optimizer(params, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay)
        model.train()
        memory = None if cuda else TrainingMemory(model)
        if cuda:
            _sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            if first:
                train_step(model, opt, batch)
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        out = train_step(model, opt, batch, memory=memory)
        _sync(dev)
        # CPU: the step's own compute (process CPU seconds), steady whatever else the machine
        # runs; CUDA: wall time between synchronisations
        dt = time.perf_counter() - t0 if cuda else time.process_time() - c0
        mem = float(torch.cuda.max_memory_allocated(dev) - base) if cuda else float(out.memory_bytes)
        model.eval()
        freeze_all(model, lm)
        del opt
        return dt, mem, ({} if cuda else dict(memory.last))

    try:
        one_step(list(range(lm.num_layers)), first=True)  # warm-up: first-call costs of the kernels
        n = len(sets)
        for rep in range(reps):
            order = [(i + rep * (n // reps or 1)) % n for i in range(n)]
            for i in (order if rep % 2 == 0 else order[::-1]):
                dt, mem, part = one_step(sets[i][2], first=rep == 0)
                times[i].append(dt)
                if rep == 0:
                    mems[i], parts[i] = mem, part
            if log:
                log(f"  profile: {rep + 1}/{reps} steps of {n} layer sets")
    finally:
        set_state(model, saved_state)
        freeze_all(model, lm)
    return [Measurement(layers=list(s[2]), role=s[0], label=s[1], memory_bytes=mems[i],
                        step_time_s=float(min(times[i])), step_times_s=times[i], memory_parts=parts[i])
            for i, s in enumerate(sets)]


def upload_costs(exp: Experiment) -> tuple[tuple[float, ...], float]:
    """Bytes uploaded per trained layer (its LoRA tensors; no A matrices under FFA), and the
    head's bytes when it is uploaded (``head.train: federated``), else 0."""
    lm, model = exp.layermap, exp.model
    params = dict(model.named_parameters())
    per = []
    for l in range(lm.num_layers):
        names = [n for n in lm.names_for([l], include_head=False) if not (exp.cfg.lora.ffa and ".lora_A." in n)]
        per.append(float(sum(params[n].nbytes for n in names)))
    head = float(state_nbytes({n: params[n] for n in lm.head})) if uploads_head(exp.cfg.head.train) else 0.0
    return tuple(per), head


def memory_state(ms: Sequence[Measurement], num_layers: int) -> dict[str, Any]:
    """The step state (trainable parameters, gradients, optimizer state) per trained layer,
    ``memory_state``, and of the head, ``memory_state_base``, from the counted parts of the
    single-layer and all-layer sets (CPU profiles only; empty otherwise). It is additive:
    set {l} holds head + layer l, the full set the head + every layer."""
    L = num_layers
    part = {tuple(m.layers): m.memory_parts for m in ms}
    singles = [part.get((l,)) for l in range(L)]
    full = part.get(tuple(range(L)))
    if not full or any(not p for p in singles):
        return {}
    st = lambda p: p["param_bytes"] + p["grad_bytes"] + p["optimizer_bytes"]  # noqa: E731
    head = (sum(st(p) for p in singles) - st(full)) / (L - 1) if L > 1 else 0.0
    return {"memory_state_base": float(head), "memory_state": [float(st(p) - head) for p in singles]}


def relative_errors(costs: LayerCosts, ms: Sequence[Measurement], role: str = "heldout") -> dict[str, Any]:
    """Per resource, the largest and the mean |predicted - measured| / measured over the sets of ``role``."""
    out: dict[str, Any] = {}
    for key, model, get in (("memory", costs.memory, lambda m: m.memory_bytes),
                            ("step_time", costs.step_time, lambda m: m.step_time_s)):
        errs = [abs(model(m.layers) - get(m)) / get(m) for m in ms if m.role == role and get(m) > 0]
        out[key] = {"max": max(errs) if errs else None, "mean": float(np.mean(errs)) if errs else None,
                    "sets": len(errs)}
    return out


def profile(exp: Experiment, reps: int = 2, seq_len: int | None = None, batch_size: int | None = None,
            log: Log | None = None) -> tuple[LayerCosts, list[Measurement], dict[str, Any]]:
    """Measure the sets of :func:`layer_sets`, fit the cost model on the ``fit`` sets;
    returns (costs, measurements, held-out errors)."""
    L = exp.layermap.num_layers
    batch = worst_batch(exp, batch_size, seq_len)
    sets = layer_sets(L, exp.cfg.clients.budgets)
    t0 = time.perf_counter()
    ms = measure_sets(exp, sets, batch, reps=reps, log=log)
    fit = [m for m in ms if m.role == "fit"]
    mem = fit_linear_cost([m.layers for m in fit], [m.memory_bytes for m in fit], L)
    # time: one reach and one own cost for all blocks (they have one shape), fitted through
    # the noise of a shared machine; memory is counted exactly and fitted per layer
    tim = fit_linear_cost([m.layers for m in fit], [m.step_time_s for m in fit], L, tied=True)
    upload, upload_base = upload_costs(exp)
    cfg = exp.cfg
    meta = {
        "model": cfg.model.name,
        "device": str(exp.device),
        "device_name": torch.cuda.get_device_name(exp.device) if exp.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": int(batch["input_ids"].shape[0]) if "input_ids" in batch else int(batch["labels"].shape[0]),
        "seq_len": int(batch["input_ids"].shape[-1]) if "input_ids" in batch else None,
        "max_length": cfg.model.max_length,
        "lora_r": cfg.lora.r,
        "ffa": cfg.lora.ffa,
        "head_train": cfg.head.train,
        "optimizer": cfg.train.optimizer,
        "time_source": "wall time" if exp.device.type == "cuda" else "process CPU time",
        "memory_source": "torch.cuda.max_memory_allocated" if exp.device.type == "cuda"
        else "counted: saved for backward + trainable params + grads + optimizer state",
        "timed_steps_per_set": reps,
        "measure_s": time.perf_counter() - t0,
    }
    meta["tokens_per_batch"] = int(np.prod(batch["input_ids"].shape)) if "input_ids" in batch else None
    meta.update(memory_state(ms, L))
    costs = LayerCosts(memory=mem, step_time=tim, upload=upload, upload_base=upload_base, meta=meta)
    return costs, ms, relative_errors(costs, ms)


def measure_costs(exp: Experiment, reps: int = 2, seq_len: int | None = None, log: Log | None = None) -> LayerCosts:
    """The experiment's :class:`~fedhello.allocation.resources.LayerCosts`, measured now on its
    device, model, batch size and longest batch (module docstring); what a run calls at start
    when clients declare limits and no profile is given."""
    return profile(exp, reps=reps, seq_len=seq_len, log=log)[0]


def _mib(x: float) -> str:
    return f"{x / 2**20:.2f}"


def table(costs: LayerCosts, ms: Sequence[Measurement], errors: dict[str, Any]) -> str:
    """The profile as a table a person reads: per set measured and predicted memory and step
    time, each relative to training every layer, then the held-out errors."""
    L = costs.num_layers
    full = next((m for m in ms if m.layers == list(range(L))), None)
    m0, t0 = (full.memory_bytes, full.step_time_s) if full else (costs.memory_bytes(range(L)), costs.step_seconds(range(L)))
    meta = costs.meta or {}
    lines = [
        f"fedhello profile: {meta.get('model')} on {meta.get('device')}, batch {meta.get('batch_size')} x "
        f"{meta.get('seq_len')} tokens (the longest batch the data can form), {meta.get('timed_steps_per_set')} "
        f"timed steps per set, time: {meta.get('time_source')}, memory: {meta.get('memory_source')}",
        f"{'set':<22} {'layers':<20} {'role':<8} {'memory MiB':>10} {'pred':>8} {'x all':>6} "
        f"{'step ms':>8} {'pred':>8} {'x all':>6}",
    ]
    for m in ms:
        lines.append(
            f"{m.label:<22} {','.join(map(str, m.layers)):<20} {'fit' if m.role == 'fit' else 'held out':<8} "
            f"{_mib(m.memory_bytes):>10} {_mib(costs.memory_bytes(m.layers)):>8} {m.memory_bytes / m0:>6.2f} "
            f"{1000 * m.step_time_s:>8.1f} {1000 * costs.step_seconds(m.layers):>8.1f} {m.step_time_s / t0:>6.2f}")
    for key, target in (("memory", 0.10), ("step_time", 0.15)):
        e = errors[key]
        if e["max"] is not None:
            lines.append(f"held-out error, {key.replace('_', ' ')}: max {100 * e['max']:.1f}%, mean "
                         f"{100 * e['mean']:.1f}% over {e['sets']} sets (target {100 * target:.0f}%)")
    lines.append("upload per layer: " + ", ".join(f"{u / 1024:.0f} KiB" for u in costs.upload)
                 + (f" (+ head {costs.upload_base / 1024:.0f} KiB)" if costs.upload_base else ""))
    return "\n".join(lines)


def write_profile(out: str | Path, costs: LayerCosts, ms: Sequence[Measurement], errors: dict[str, Any],
                  wall_s: float | None = None) -> Path:
    """``out/profile.json``: ``{"costs": LayerCosts.to_json(), "measurements": [...],
    "heldout_error": {...}}``, written whole or not at all."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    obj = {"costs": costs.to_json(), "measurements": [asdict(m) for m in ms], "heldout_error": errors}
    if wall_s is not None:
        obj["wall_s"] = wall_s
    path = out / "profile.json"
    tmp = out / ".profile.json.tmp"
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_profile(cfg, out: str | Path, reps: int = 2, seq_len: int | None = None, log: Log | None = None) -> str:
    """``fedhello profile``: prepare ``cfg``'s experiment, profile it, write ``out/profile.json``;
    returns the table. Nothing is written before the measurement has succeeded."""
    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--seq-len must be at least 1, got {seq_len}")
    t0 = time.perf_counter()
    exp = prepare(cfg)
    costs, ms, errors = profile(exp, reps=reps, seq_len=seq_len, log=log)
    wall = time.perf_counter() - t0
    path = write_profile(out, costs, ms, errors, wall_s=wall)
    return table(costs, ms, errors) + f"\nwall time {wall:.1f} s (model and data loading included) -> {path}"
