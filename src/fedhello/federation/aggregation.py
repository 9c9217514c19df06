"""Layer-wise aggregation of partial client updates, the rule of Fed-HeLLo (arXiv:2506.12213).

Each tensor of the global state is replaced by the weighted mean over exactly
the clients whose update carries it this round; a tensor nobody trained keeps
its value. A federated head (``head.train: federated``) is in every update, so
it is averaged over all the round's clients; with ``frozen`` or ``local`` no
update carries it and it keeps its value (the Fed-HeLLo authors never
aggregate the head). Weights are sample counts (``samples``) or equal
(``uniform``, the reference implementation's plain mean).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from fedhello.errors import UpdateError
from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.model.layermap import LayerMap
from fedhello.model.rank import truncate_rank
from fedhello.model.state import State


def aggregate(global_state: State, updates: Sequence[ClientUpdate], weighting: str = "samples") -> State:
    """A new global state; ``global_state`` itself is not modified."""
    if weighting not in ("samples", "uniform"):
        raise ValueError(f"unknown weighting {weighting!r}")
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    for u in updates:
        w = float(u.num_samples) if weighting == "samples" else 1.0
        if w <= 0:
            continue
        for name, t in u.tensors.items():
            t64 = t.detach().to(torch.float64)
            if name in sums:
                sums[name] += w * t64
                weights[name] += w
            else:
                sums[name] = w * t64
                weights[name] = w
    out: State = {}
    for name, g in global_state.items():
        if name in sums:
            out[name] = (sums[name] / weights[name]).to(g.dtype)
        else:
            out[name] = g.clone()
    return out


def expected_names(layermap, layers: Iterable[int], ffa: bool = False, head: bool = True) -> list[str]:
    """The tensors a client's reply must hold, exactly: its allocated layers' LoRA tensors
    and, with ``head`` (``head.train: federated``), the head; without the A matrices under
    FFA-LoRA, which a client never trains."""
    names = layermap.names_for(layers, include_head=head)
    return [n for n in names if ".lora_A." not in n] if ffa else names


def _is_count(n) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))


# far above any real round (2^50 tokens, bytes, seconds): a larger report is a lie, not a cost
_COST_CAP = float(2 ** 50)


def check_cost_report(update: ClientUpdate) -> None:
    """Reject a reply whose reported costs cannot be real: its measured time, CPU time and memory
    must be finite, >= 0 and below ``_COST_CAP``; the shape of what it trained (``train_batches``,
    ``train_tokens``, ``train_max_batch_tokens``) integers in that range, the largest batch at most
    the total, and the total at most batches x the largest (the server prices the round from them)."""
    cid = update.client_id
    for key in ("train_time_s", "train_cpu_time_s", "train_memory_bytes"):
        v = getattr(update, key)
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        if not ok or not math.isfinite(v) or not 0 <= v < _COST_CAP:
            raise UpdateError(f"client {cid}: {key} must be a finite number >= 0, got {v!r}")
    n, tok, big = update.train_batches, update.train_tokens, update.train_max_batch_tokens
    for key, v in (("train_batches", n), ("train_tokens", tok), ("train_max_batch_tokens", big)):
        if not _is_count(v) or not 0 <= v < _COST_CAP:
            raise UpdateError(f"client {cid}: {key} must be an integer >= 0, got {v!r}")
    if big > tok or tok > n * big:
        raise UpdateError(f"client {cid}: {n} batches of {tok} tokens cannot have a largest batch of {big}")


def validate_update(
    update: ClientUpdate, expected: Iterable[str], reference: State, max_samples: int | None = None
) -> None:
    """Reject an update that must not be aggregated.

    ``expected``: exactly the tensor names the reply must hold (computed by the
    caller, e.g. :func:`expected_names`): a missing one and an extra one are both
    rejected; ``reference``: the state the client was sent (shapes and dtypes);
    ``max_samples``: the client's known partition size: a larger count is rejected
    (a client may not buy itself weight), a count must be an integer >= 1.
    Raises UpdateError naming the first offence.
    """
    cid = update.client_id
    expected = set(expected)
    n = update.num_samples
    if not _is_count(n) or n < 1:
        raise UpdateError(f"client {cid}: num_samples must be a positive integer, got {n!r}")
    if max_samples is not None and n > max_samples:
        raise UpdateError(f"client {cid}: num_samples {n} is more than its {max_samples} training samples")
    check_cost_report(update)
    if not isinstance(update.tensors, dict):
        raise UpdateError(f"client {cid}: tensors is not a mapping of names to tensors")
    for name, t in update.tensors.items():
        if name not in expected:
            raise UpdateError(f"client {cid}: tensor {name!r} is outside its allocation")
        ref = reference[name]
        if not isinstance(t, torch.Tensor):
            raise UpdateError(f"client {cid}: {name!r} is not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise UpdateError(f"client {cid}: {name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise UpdateError(f"client {cid}: {name!r} has dtype {t.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise UpdateError(f"client {cid}: {name!r} has non-finite values")
    missing = sorted(expected - set(update.tensors))
    if missing:
        raise UpdateError(
            f"client {cid}: reply lacks {len(missing)} of the {len(expected)} tensors of its allocation "
            f"(e.g. {missing[0]!r})"
        )


def screen_replies(
    tasks: Sequence[FitTask],
    results: Iterable[ClientUpdate | ClientFailure],
    expected: Callable[[FitTask], Iterable[str]],
    reference: Callable[[FitTask], State],
    max_samples: Callable[[int], int | None] | None = None,
) -> tuple[list[ClientUpdate], list[dict]]:
    """The replies of a round sorted into updates to aggregate and ``failed_clients`` records.

    Rejected, each recorded with its reason: a reply for a client not asked this
    round; every reply of a client that replied more than once (none of them is
    aggregated: a client cannot pick one or count twice); a reply whose layers are
    not the ones it was given; an update failing :func:`validate_update`; and a
    task nobody answered. ``expected``/``reference`` give a task's exact tensor
    names and the state it was sent; ``max_samples`` a client's known sample count.
    """
    task_of = {t.client_id: t for t in tasks}
    results = list(results)
    count: dict = {}
    for res in results:
        count[res.client_id] = count.get(res.client_id, 0) + 1
    updates: list[ClientUpdate] = []
    failed: list[dict] = []
    reported: set = set()
    for res in results:
        cid = res.client_id
        task = task_of.get(cid)
        if task is None:
            why = res.reason if isinstance(res, ClientFailure) else f"client {cid}: reply for a client not asked this round"
            failed.append({"id": cid, "reason": why})
            continue
        if count[cid] > 1:
            if cid not in reported:
                reported.add(cid)
                failed.append({"id": cid, "reason": f"client {cid}: {count[cid]} replies to one task (none aggregated)"})
            continue
        if isinstance(res, ClientFailure):
            failed.append({"id": cid, "reason": res.reason})
            continue
        try:
            if not isinstance(res, ClientUpdate):
                raise UpdateError(f"client {cid}: reply is not an update")
            if sorted(int(x) for x in res.layers) != sorted(int(x) for x in task.layers):
                raise UpdateError(f"client {cid}: reply is for layers {list(res.layers)}, it was given {task.layers}")
            validate_update(res, expected(task), reference(task), max_samples(cid) if max_samples else None)
        except UpdateError as err:
            failed.append({"id": cid, "reason": str(err)})
            continue
        updates.append(res)
    for task in tasks:
        if task.client_id not in count:
            failed.append({"id": task.client_id, "reason": f"client {task.client_id}: no reply"})
    return updates, failed


def screen_round(
    tasks: Sequence[FitTask],
    results: Iterable[ClientUpdate | ClientFailure],
    layermap: LayerMap,
    global_state: State,
    *,
    ffa: bool,
    head: bool,
    sample_counts: Sequence[int] | None = None,
) -> tuple[list[ClientUpdate], list[dict]]:
    """:func:`screen_replies` with the round's rules, for every runtime: a reply holds exactly
    its task's tensors (its layers' LoRA tensors, the A matrices dropped under FFA, the head
    when ``head`` is uploaded), shaped as the state it was sent (truncated to its rank), and
    claims at most its client's partition size (``sample_counts``)."""

    def max_samples(cid: int) -> int | None:
        ok = sample_counts is not None and 0 <= cid < len(sample_counts)
        return int(sample_counts[cid]) if ok else None

    return screen_replies(
        tasks, results,
        expected=lambda task: expected_names(layermap, task.layers, ffa, head=head),
        reference=lambda task: truncate_rank(global_state, task.rank),
        max_samples=max_samples,
    )
