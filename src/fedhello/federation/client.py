"""Local training of one client on one shared model, and evaluation.

The model object is shared by every client of a process: the global LoRA state
is loaded into it, the client's allocated layers (and the head) are made
trainable, everything else is frozen for real (``requires_grad=False``, absent
from the optimizer), and only the trained tensors leave. No deep copies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fedhello.data.batching import Encoded, collate, eval_batches, train_batches
from fedhello.model.head import class_counts, local_loss
from fedhello.model.layermap import LayerMap
from fedhello.model.rank import set_state_padded, truncate_rank
from fedhello.model.state import State, freeze_all, get_state, set_trainable, state_nbytes
from fedhello.model.step import TrainingMemory, batch_tokens, forward_loss, train_step
from fedhello.tasks import task_of


@dataclass
class FitTask:
    """What the server sends a client for one round."""

    client_id: int
    round: int
    layers: list[int]
    lr: float
    seed: int  # seeds shuffling and dropout of this client in this round
    # LoRA rank the client trains: its first `rank` components of the global adapter
    # (the rest zero); None: the full rank. Set by rank-heterogeneous strategies.
    rank: int | None = None


@dataclass
class ClientUpdate:
    """What a client sends back: only what it trained, and its sample count."""

    client_id: int
    num_samples: int
    tensors: State
    layers: list[int]
    train_loss: float = float("nan")
    train_time_s: float = 0.0
    # the CPU seconds of this process during its training (what `fedhello profile` times on CPU)
    train_cpu_time_s: float = 0.0
    # peak training memory over its steps (CPU: counted, fedhello.model.step; CUDA: allocator peak)
    train_memory_bytes: int = 0
    # the shape of what it trained (BatchShape): its batches, their padded tokens (rows x columns)
    # in all and the tokens of its largest batch; the server prices its round from them
    train_batches: int = 0
    train_tokens: int = 0
    train_max_batch_tokens: int = 0
    metrics: dict = field(default_factory=dict)

    @property
    def upload_bytes(self) -> int:
        """Size in bytes of the tensors the client sends."""
        return state_nbytes(self.tensors)


@dataclass
class ClientFailure:
    """A client that gave no usable update this round, in its update's place, with the reason."""
    client_id: int
    reason: str


def round_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from the run seed and any integers (round, client, ...)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def make_optimizer(params: Sequence[torch.nn.Parameter], name: str, lr: float, weight_decay: float):
    """The optimizer ``name`` (``adamw`` or ``sgd``) over ``params``; ValueError for others."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def uploads_head(head_train: str) -> bool:
    """Whether a client's update carries the head (only a federated head is uploaded)."""
    return head_train == "federated"


class LocalTrainer:
    """Trains allocated LoRA layers of the shared model on a client's indices.

    ``head_train`` (``head.train``): ``federated`` trains and uploads the head,
    ``local`` trains it from the global head for this round only (never uploaded:
    the next round starts again from the global head),
    ``frozen`` never trains it. ``train_cfg.loss`` picks the local loss: ``ce`` is the
    task's own loss (:meth:`fedhello.tasks.Task.loss`, the data's task), the others
    adjust the classification logits (:func:`fedhello.model.head.local_loss`).
    """

    def __init__(self, model: torch.nn.Module, layermap: LayerMap, data: Encoded, train_cfg, device,
                 ffa: bool = False, head_train: str = "federated"):
        self.model = model
        self.layermap = layermap
        self.data = data
        self.lengths = data.lengths
        self.cfg = train_cfg
        self.device = torch.device(device)
        self.ffa = ffa
        self.head_train = head_train

    def fit(self, task: FitTask, global_state: State, indices: np.ndarray) -> ClientUpdate:
        """Train ``task``'s client on its ``indices`` from ``global_state``; returns its update.

        Loads ``global_state`` truncated to ``task.rank`` (zeros beyond), makes exactly
        ``task.layers`` (and the head unless frozen) trainable and trains
        ``train.epochs`` epochs (at most ``train.max_steps`` steps) seeded by
        ``task.seed``. The update holds only the trained LoRA tensors (no A matrices
        under FFA; the head only when federated), cut to ``task.rank``; its
        ``num_samples`` is ``len(indices)`` and its ``train_loss`` the sample-weighted
        mean loss. Afterwards nothing of the shared model stays trainable.
        """
        t0, c0 = time.perf_counter(), time.process_time()
        model = self.model
        cuda = self.device.type == "cuda"
        if cuda:  # the client's own peak: activations, gradients, optimizer state
            torch.cuda.reset_peak_memory_stats(self.device)
            mem0 = torch.cuda.memory_allocated(self.device)
        # a rank-r client loads the first r components of each LoRA tensor, zeros beyond
        set_state_padded(model, truncate_rank(global_state, task.rank))
        params = set_trainable(model, self.layermap, task.layers, ffa=self.ffa, train_head=self.head_train != "frozen")
        opt = make_optimizer(params, self.cfg.optimizer, task.lr, self.cfg.weight_decay)
        loss_kind = self.cfg.loss
        counts = None
        rng = np.random.default_rng(task.seed)
        torch.manual_seed(task.seed)
        model.train()
        total_loss, seen, steps = 0.0, 0, 0
        tokens, max_tokens = 0, 0
        max_steps = self.cfg.max_steps

        task_loss = task_of(self.data).loss

        def loss_fn(logits, labels):
            nonlocal counts
            if loss_kind == "ce":
                return task_loss(logits, labels)
            if counts is None:
                counts = class_counts(self.data.labels[indices], logits.shape[-1])
            return local_loss(logits, labels, loss_kind, counts, self.cfg.fedrs_alpha, self.cfg.fedlc_tau)

        # CPU: the counted training memory of each step (fedhello.model.step); CUDA: the allocator's peak
        memory = None if cuda else TrainingMemory(model)
        for _ in range(self.cfg.epochs):
            for idx in train_batches(self.lengths, indices, self.cfg.batch_size, rng, self.cfg.group_by_length):
                batch = collate(self.data, idx, self.device)
                loss = train_step(model, opt, batch, loss_fn, memory=memory).loss
                n_tok = batch_tokens(batch)
                tokens, max_tokens = tokens + n_tok, max(max_tokens, n_tok)
                total_loss += float(loss) * len(idx)
                seen += len(idx)
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            if max_steps is not None and steps >= max_steps:
                break
        model.eval()
        names = self.layermap.names_for(task.layers, include_head=uploads_head(self.head_train))
        if self.ffa:
            names = [n for n in names if ".lora_A." not in n]
        tensors = get_state(model, names)
        if task.rank is not None:  # upload only the rank-r components (compact copies)
            tensors = {n: t.clone() for n, t in truncate_rank(tensors, task.rank).items()}
        freeze_all(model, self.layermap)  # nothing stays trainable between clients
        del opt
        peak = int(torch.cuda.max_memory_allocated(self.device) - mem0) if cuda else memory.peak_bytes
        return ClientUpdate(
            client_id=task.client_id,
            num_samples=int(len(indices)),
            tensors=tensors,
            layers=sorted(int(x) for x in task.layers),
            train_loss=total_loss / max(seen, 1),
            train_time_s=time.perf_counter() - t0,
            train_cpu_time_s=time.process_time() - c0,
            train_memory_bytes=peak,
            train_batches=steps,
            train_tokens=tokens,
            train_max_batch_tokens=max_tokens,
            # GPU only (CPU peaks are process-wide; fedhello bench measures CPU memory in fresh processes)
            metrics={"peak_memory_bytes": peak} if cuda else {},
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Encoded, indices: np.ndarray, batch_size: int, device, positive_class: int = 1
) -> dict[str, float]:
    """The mean loss and the metrics of ``model`` on ``indices`` of ``data``, both the data's task's
    (:meth:`fedhello.tasks.Task.loss`, :meth:`fedhello.tasks.Task.metrics`).

    Classification: cross-entropy; accuracy, macro_f1, micro_f1 always, f1_positive
    (F1 of class ``positive_class``) when the model has two classes (:mod:`fedhello.metrics`).
    """
    if len(indices) == 0:
        return {"accuracy": math.nan, "loss": math.nan, "num_samples": 0}
    model.eval()
    task = task_of(data)
    lengths = data.lengths
    loss_sum, n = 0.0, 0
    parts: list[dict[str, np.ndarray]] = []
    for idx in eval_batches(lengths, indices, batch_size):
        batch = collate(data, idx, device)
        loss, logits = forward_loss(model, batch, task.loss)
        parts.append(task.batch_outputs(logits, batch["labels"]))
        loss_sum += float(loss) * len(idx)
        n += len(idx)
    outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return dict(task.metrics(outputs, positive_class), loss=loss_sum / n, num_samples=n)
