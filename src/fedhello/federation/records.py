"""The records a run writes, typed: :class:`RoundLine` (one line of ``metrics.jsonl``
per round), :class:`ClientRecord` (one per client of a round), :class:`HeadInitRecord`
(the class-statistics round before round 0) and :class:`Summary` (``summary.json``).

They are ``TypedDict``\\ s: the files stay plain JSON objects and every reader
(report, sweep table, TensorBoard, resume) reads them with the names below.
:class:`RoundRecord` is what the server's round returns: the same line, as a
dataclass, written out by :meth:`RoundRecord.to_dict`.
:func:`to_json` writes any of them; :func:`read_summary` also reads the
``summary.json`` of a run written before the summary's names were made
metric-neutral.

*The best validation round* is the evaluated round of highest
``val_<select_metric>`` (``eval.select_metric``: accuracy, macro_f1, micro_f1 or
f1_positive): model selection on validation, never on test. Every metric of the
summary named ``..._at_best_val`` is taken at that round, whatever metric chose it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypedDict


class ClientRecord(TypedDict, total=False):
    """One client's entry in a round record's ``clients`` list (see the field comments)."""
    id: int  # the client (0 .. num_clients - 1)
    group: int  # its resource group (index into clients.budgets)
    layers: list[int]  # the LoRA layers it trained this round (0: nearest the input)
    num_samples: int  # its training samples (the aggregation weight)
    upload_bytes: int  # the tensors it sent
    download_bytes: int  # the global state it was sent (truncated to its rank)
    train_time_s: float  # its local training time
    train_cpu_time_s: float  # CPU seconds of its process during its training (on CPU: its own compute)
    # its peak training memory over its steps (CPU: counted, fedhello.model.step; CUDA: allocator peak)
    train_memory_bytes: int
    train_loss: float  # its mean training loss
    rank: int  # its LoRA rank (rank-heterogeneous strategies only)
    peak_memory_bytes: int  # peak accelerator memory of its training (GPU runs only)
    train_batches: int  # what it trained: its batches (optimizer steps),
    train_tokens: int  # their padded tokens (rows x columns) in all,
    train_max_batch_tokens: int  # and the tokens of its largest batch
    # with a cost model (docs/resources.md): the estimate of its round from the batches it trained
    # (resources.predict_for_shape) and the worst-case bound its limits were checked against
    predicted_memory_bytes: float
    predicted_time_s: float
    predicted_time_clock: str  # "cpu": compare predicted_time_s with train_cpu_time_s; "wall": train_time_s
    bound_memory_bytes: float  # the profiled worst-case step's memory for its layers
    bound_time_s: float  # local steps x the worst-case step time
    memory_limit_bytes: float  # its declared limits (clients.limits, node config), where set
    time_limit_s: float
    upload_limit_bytes: float


class HeadInitRecord(TypedDict):
    """The class-statistics round before round 0 (``head.init: class-means``).

    Kept in round 0's record under ``head_init``.
    """
    clients: int  # clients that sent statistics
    failed_clients: list[dict]  # {id, reason} of those that did not
    upload_bytes: int
    download_bytes: int
    time_s: float
    classes_seen: int  # classes with at least one sample among the clients


class RoundLine(TypedDict, total=False):
    """One line of ``metrics.jsonl``: a finished round (see the field comments)."""
    round: int  # 0-based (the console counts from 1)
    train_loss: float  # sample-weighted mean of the clients' losses
    val_accuracy: float | None  # None on rounds that are not evaluated (eval.every)
    val_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    # also val_<m> / test_<m> for m in macro_f1, micro_f1 (and f1_positive on binary tasks)
    round_time_s: float
    # seconds per phase: head_init (round 0: the statistics round), train (allocation, Fisher
    # scores and the clients' local training), aggregate, evaluate, checkpoint (written by the run)
    phase_time_s: dict[str, float]
    lr: float
    clients: list[ClientRecord]
    failed_clients: list[dict]  # {id, reason}: gave up, unreachable or rejected
    # the strategy's per-layer inclusion probabilities (when it has them), before any restriction to a
    # client's limits (each client's draw renormalises them over its own window; docs/resources.md)
    layer_probs: list[float]
    fim_scores: list[float]  # Fisher scores, on the rounds they were computed
    fim_tiers: list[int]
    head_init: HeadInitRecord  # round 0 only, with head.init: class-means


@dataclass
class RoundRecord:
    """A finished round as the server returns it; :meth:`to_dict` is its ``metrics.jsonl`` line
    (:class:`RoundLine`, whose comments say what each field holds)."""
    round: int
    train_loss: float
    # val_accuracy, val_loss, test_accuracy, test_loss (None when not evaluated), then val_<m> / test_<m>
    evaluation: dict[str, float | None]
    round_time_s: float
    phase_time_s: dict[str, float]
    lr: float
    clients: list[ClientRecord]
    failed_clients: list[dict]
    skipped: str | None = None  # why the round's aggregate was not applied
    info: dict = field(default_factory=dict)  # the strategy's plan info, then the aggregation rule's
    head_init: HeadInitRecord | None = None

    def to_dict(self) -> RoundLine:
        """The ``metrics.jsonl`` line, its keys in the order the file has always had."""
        out: dict = {"round": self.round, "train_loss": self.train_loss, **self.evaluation,
                     "round_time_s": self.round_time_s, "phase_time_s": self.phase_time_s, "lr": self.lr,
                     "clients": self.clients, "failed_clients": self.failed_clients}
        if self.skipped is not None:
            out["skipped"] = self.skipped
        out.update(self.info)
        if self.head_init is not None:
            out["head_init"] = self.head_init
        return out  # type: ignore[return-value]


class Summary(TypedDict, total=False):
    """``summary.json``: the run's result, written after its last round (module docstring)."""
    strategy: str
    seed: int
    rounds: int  # rounds finished
    select_metric: str  # the validation metric that chose the best validation round
    final_test_accuracy: float | None  # after the last round
    final_val_accuracy: float | None
    best_val_round: int | None  # 0-based index of the best validation round
    val_accuracy_at_best_val: float | None
    test_accuracy_at_best_val: float | None
    # also final_test_<m>, val_<m>_at_best_val, test_<m>_at_best_val for every other metric
    total_time_s: float  # rounds + the class-statistics round
    total_upload_bytes: int  # every client upload, the class-statistics round included
    failed_client_rounds: int
    max_memory_over_limit: float | None  # largest train_memory_bytes / memory_limit_bytes; None: no such client-round
    phase_time_s: dict[str, float]  # the rounds' phase_time_s summed (head_init, train, aggregate, evaluate, checkpoint)
    # with a cost model, per group (None: no prediction): client_rounds, time_clock and
    # {memory,time}_measured_over_predicted_{median,max} (server.cost_prediction)
    cost_prediction: list[dict | None]
    head_init_upload_bytes: int
    head_init_time_s: float
    trainable_params_per_group: list[int]


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars and arrays -> Python numbers and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def to_json(record: RoundLine | Summary | dict | Any, indent: int | None = None) -> str:
    """A record (or any file the run directory holds as JSON) as strict JSON."""
    return json.dumps(_clean(record), indent=indent)


# summary.json names before they said which round they are taken at
_RENAMED = {"best_val_accuracy": "val_accuracy_at_best_val"}


def read_summary(raw: dict) -> Summary:
    """A ``summary.json`` as a :class:`Summary`, whichever fedhello wrote it."""
    out: dict = {}
    for k, v in raw.items():
        if k in _RENAMED:
            k = _RENAMED[k]
        elif k.startswith("best_val_") and k != "best_val_round":  # best_val_<m> -> val_<m>_at_best_val
            k = f"val_{k[len('best_val_'):]}_at_best_val"
        out.setdefault(k, v)
    out.setdefault("select_metric", "accuracy")
    return out  # type: ignore[return-value]
