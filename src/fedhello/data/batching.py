"""Tokenize once, batch by index: length-grouped training batches, padded collation.

The whole dataset is tokenized once (no padding); a client's data is a set of
indices into it. Training batches group samples of similar length (the batch
order stays random), which cuts padding several-fold on short-query data such as
Banking77; evaluation batches are sorted by length (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch


@dataclass
class Encoded:
    """Token ids (and any other per-token tokenizer outputs) per sample, unpadded."""

    features: dict[str, list[list[int]]]  # e.g. input_ids, attention_mask, token_type_ids
    labels: np.ndarray  # int64
    pad_token_id: int
    # multiple choice: every sample is num_choices token lists (one per option),
    # collated to (batch, num_choices, width)
    num_choices: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sample (multiple choice: of its longest option), what batches group by."""
        rows = self.features["input_ids"]
        if self.num_choices:
            return np.fromiter((max(len(c) for c in x) for x in rows), dtype=np.int64, count=len(self))
        return np.fromiter((len(x) for x in rows), dtype=np.int64, count=len(self))


def _encode(tokenizer, labels: Sequence[int], max_length: int, *texts: Sequence[str]) -> Encoded:
    """Tokenize one text (or a text pair) per sample, unpadded; an empty split stays empty
    (e.g. ``data.val_fraction: 0``: tokenizers reject an empty batch)."""
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if len(texts[0]) == 0:
        return Encoded(features={"input_ids": [], "attention_mask": []}, labels=np.zeros(0, dtype=np.int64),
                       pad_token_id=pad_id)
    enc = tokenizer(*[list(t) for t in texts], truncation=True, max_length=max_length, padding=False)
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return Encoded(features={k: list(enc[k]) for k in keep}, labels=np.asarray(labels, dtype=np.int64),
                   pad_token_id=pad_id)


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int) -> Encoded:
    """Tokenize one text per sample, unpadded, truncated to ``max_length`` tokens."""
    return _encode(tokenizer, labels, max_length, texts)


def encode_pairs(
    tokenizer, texts: Sequence[str], pairs: Sequence[str], labels: Sequence[int], max_length: int
) -> Encoded:
    """Sentence pairs (QNLI, QQP) as the tokenizer joins them (``[CLS] a [SEP] b [SEP]``)."""
    return _encode(tokenizer, labels, max_length, texts, pairs)


def encode_choices(
    tokenizer,
    contexts: Sequence[str],
    questions: Sequence[str],
    choices: Sequence[Sequence[str]],
    labels: Sequence[int],
    max_length: int,
) -> Encoded:
    """Multiple choice: per option the pair (context, question + " " + option).

    The context (a passage) is truncated first so that the question and the
    option survive (the scheme of Hugging Face's SWAG example).
    """
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if len(choices) == 0:
        return Encoded(features={"input_ids": []}, labels=np.zeros(0, dtype=np.int64), pad_token_id=pad_id)
    n = len(choices[0])
    firsts, seconds = [], []
    for c, q, opts in zip(contexts, questions, choices):
        if len(opts) != n:
            raise ValueError(f"every sample needs {n} options (one has {len(opts)})")
        for o in opts:
            firsts.append(c)
            seconds.append(f"{q} {o}".strip() if q else o)
    enc = tokenizer(firsts, seconds, truncation="only_first", max_length=max_length, padding=False)
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return Encoded(
        features={k: [list(enc[k][i : i + n]) for i in range(0, len(firsts), n)] for k in keep},
        labels=np.asarray(labels, dtype=np.int64),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        num_choices=n,
    )


def collate(data: Encoded, idx: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad the samples ``idx`` to their longest one (data objects of other tasks collate themselves)."""
    if not isinstance(data, Encoded):
        return data.collate(idx, device)
    if data.num_choices:
        return _collate_choices(data, idx, device)
    ids = data.features["input_ids"]
    width = max(len(ids[i]) for i in idx)
    out: dict[str, torch.Tensor] = {}
    for key, rows in data.features.items():
        pad = data.pad_token_id if key == "input_ids" else 0
        t = torch.full((len(idx), width), pad, dtype=torch.long)
        for j, i in enumerate(idx):
            r = rows[i]
            t[j, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        out[key] = t.to(device)
    out["labels"] = torch.as_tensor(data.labels[np.asarray(idx, dtype=np.int64)], dtype=torch.long).to(device)
    return out


def _collate_choices(data: Encoded, idx: Sequence[int], device) -> dict[str, torch.Tensor]:
    n = data.num_choices
    ids = data.features["input_ids"]
    width = max(len(c) for i in idx for c in ids[i])
    out: dict[str, torch.Tensor] = {}
    for key, rows in data.features.items():
        pad = data.pad_token_id if key == "input_ids" else 0
        t = torch.full((len(idx), n, width), pad, dtype=torch.long)
        for j, i in enumerate(idx):
            for k, r in enumerate(rows[i]):
                t[j, k, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        out[key] = t.to(device)
    out["labels"] = torch.as_tensor(data.labels[np.asarray(idx, dtype=np.int64)], dtype=torch.long).to(device)
    return out


def train_batches(
    lengths: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group_by_length: bool = True,
    group_size: int = 50,
) -> list[np.ndarray]:
    """One epoch of batches over ``indices``.

    With ``group_by_length``: shuffle, cut into mega-batches of ``group_size``
    batches, sort each by length, split into batches, shuffle the batch order
    (the scheme of Hugging Face's LengthGroupedSampler).
    """
    perm = np.asarray(indices, dtype=np.int64)[rng.permutation(len(indices))]
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    mega = batch_size * group_size
    batches: list[np.ndarray] = []
    for s in range(0, len(perm), mega):
        chunk = perm[s : s + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def eval_batches(lengths: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of ``indices`` sorted by length (stable: deterministic), ``batch_size`` each."""
    idx = np.asarray(indices, dtype=np.int64)
    idx = idx[np.argsort(lengths[idx], kind="stable")]
    for i in range(0, len(idx), batch_size):
        yield idx[i : i + batch_size]
