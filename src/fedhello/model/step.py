"""One training step, written once, and what it costs in memory.

:func:`train_step` (forward, loss, backward, optimizer step) is the step the local
trainer (:class:`fedhello.federation.client.LocalTrainer`), ``fedhello bench`` and
``fedhello profile`` all run, so that what is measured is what is trained.

Training memory on CPU (:class:`TrainingMemory`) is counted, not sampled: peak RSS
moves with the allocator and other processes and is too noisy to decide with. A
step holds, at its peak (the end of the forward pass, with the previous step's
gradients still alive: the trainer clears them only after the forward):

- the tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``),
  each distinct storage once, at the size of its whole storage: a saved view keeps
  its whole base alive, and several views of one storage are one allocation;
- minus what is resident anyway: a saved tensor whose storage is a parameter or a
  buffer of the model (a frozen weight saved for the input's gradient, or the
  transposed view of a weight) is not new memory and is not counted;
- plus the trainable parameters, their gradients and the optimizer's state for them
  (AdamW: two moments and a step counter per parameter).

Temporaries that the forward frees before it ends (not saved for backward) are not
counted: they are transient and small beside the saved activations. On CUDA the
allocator's own peak (``torch.cuda.max_memory_allocated`` above the memory allocated
before training) is exact and used instead (see ``LocalTrainer.fit``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 loss_fn: LossFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on ``batch`` (every key but ``labels`` is an input) and the loss.

    ``loss_fn(logits, labels)`` defaults to the cross-entropy.
    """
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return (F.cross_entropy(logits, labels) if loss_fn is None else loss_fn(logits, labels)), logits


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """A batch's padded tokens, rows x columns of its ``input_ids`` (what ``fedhello profile``
    calls ``tokens_per_batch``); its rows when it has no token ids (images)."""
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None else int(batch["labels"].shape[0])


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        return None
    return (str(t.device), st.data_ptr())


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for backward inside the context.

    ``resident``: the storages not to count (:func:`resident_storages` of the model:
    its parameters and buffers are in memory whether or not anything is trained).
    Counts are per entry: each ``with`` starts from zero.
    """

    def __init__(self, resident: Iterable[tuple[str, int]] = ()):
        self.resident = frozenset(resident)
        self.seen: dict[tuple[str, int], int] = {}

    def _pack(self, t: torch.Tensor):
        key = _storage_key(t)
        if key is not None and key not in self.resident and key[1] != 0:
            self.seen[key] = max(self.seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self.seen = {}
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        """Bytes saved for backward since the context was entered."""
        return int(sum(self.seen.values()))


def resident_storages(model: torch.nn.Module) -> set[tuple[str, int]]:
    """The storages of ``model``'s parameters and buffers (never counted as saved activations)."""
    out = set()
    for t in list(model.parameters()) + list(model.buffers()):
        key = _storage_key(t)
        if key is not None:
            out.add(key)
    return out


def state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int, int]:
    """(trainable parameter bytes, gradient bytes, optimizer state bytes) of ``opt``'s parameters."""
    params = grads = state = 0
    for group in opt.param_groups:
        for p in group["params"]:
            params += p.nbytes
            if p.grad is not None:
                grads += p.grad.nbytes
            for v in opt.state.get(p, {}).values():
                if torch.is_tensor(v):
                    state += v.nbytes
    return params, grads, state


class TrainingMemory:
    """The CPU training memory of steps on ``model`` (module docstring): pass it to
    :func:`train_step`; ``peak_bytes`` is the largest step's total, ``last`` the parts
    of the last step."""

    def __init__(self, model: torch.nn.Module):
        self.saved = SavedTensorBytes(resident_storages(model))
        self.peak_bytes = 0
        self.last: dict[str, int] = {}

    def record(self, saved_bytes: int, opt: torch.optim.Optimizer) -> int:
        params, grads, state = state_bytes(opt)
        self.last = {"saved_bytes": saved_bytes, "param_bytes": params, "grad_bytes": grads,
                     "optimizer_bytes": state}
        total = saved_bytes + params + grads + state
        self.peak_bytes = max(self.peak_bytes, total)
        return total


@dataclass
class StepResult:
    """What one :func:`train_step` returns."""

    loss: torch.Tensor  # detached
    memory_bytes: int | None = None  # with a TrainingMemory: this step's training memory
    phase_s: tuple[float, float, float] | None = None  # with phases: forward, backward, optimizer seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               loss_fn: LossFn | None = None, *, memory: TrainingMemory | None = None,
               forward_ctx: Callable[[], ContextManager] | None = None,
               phases: torch.device | None = None) -> StepResult:
    """One optimizer step on ``batch``: forward, loss, ``zero_grad``, backward, step.

    - ``loss_fn(logits, labels)``: the loss (default: cross-entropy);
    - ``memory``: count the step's training memory (CPU; module docstring);
    - ``forward_ctx``: a context (e.g. autocast) around the forward and the loss only;
    - ``phases``: the device to synchronise on to time forward, backward and optimizer.
    """
    saved = memory.saved if memory is not None else nullcontext()
    t0 = time.perf_counter()
    with saved, (forward_ctx() if forward_ctx is not None else nullcontext()):
        loss, _ = forward_loss(model, batch, loss_fn)
    if phases is not None:
        _sync(phases)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if phases is not None:
        _sync(phases)
    t2 = time.perf_counter()
    opt.step()
    out = StepResult(loss=loss.detach())
    if phases is not None:
        _sync(phases)
        out.phase_s = (t1 - t0, t2 - t1, time.perf_counter() - t2)
    if memory is not None:
        out.memory_bytes = memory.record(memory.saved.nbytes, opt)
    return out
