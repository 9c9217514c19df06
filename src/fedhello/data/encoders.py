"""Encoders: a split with a task's canonical columns to the data object training and evaluation read.

Text is tokenized once and batched by length (:mod:`fedhello.data.batching`);
images are decoded and transformed per batch (:mod:`fedhello.data.images`).
"""

from __future__ import annotations

from typing import Callable

from fedhello.data.batching import encode, encode_choices, encode_pairs
from fedhello.data.images import ImageData, ImageTransform
from fedhello.tasks import get_task

# Task.encoding -> (tokenizer, split with the task's canonical columns, max_length) -> Encoded
TEXT_ENCODINGS: dict[str, Callable] = {
    "text": lambda tok, ds, ml: encode(tok, ds["text"], ds["label"], ml),
    "text-pair": lambda tok, ds, ml: encode_pairs(tok, ds["text"], ds["text_pair"], ds["label"], ml),
    "choices": lambda tok, ds, ml: encode_choices(tok, ds["text"], ds["text_pair"], ds["choices"], ds["label"], ml),
}


def make_encoder(cfg, backbone) -> Callable:
    """``(split, train=False) -> data object`` for a ``datasets.Dataset`` with the task's canonical columns.

    ``train=True`` marks the clients' training data (images: augmented batches).

    The data object has ``labels`` (int64 numpy), ``lengths`` (for length-grouped
    batching; all equal for images), ``collate(idx, device)`` (or is an ``Encoded``,
    which :func:`fedhello.data.batching.collate` pads) and ``task``, the task that
    encoded it (its loss and metrics score it); see :mod:`fedhello.data.batching` and
    :mod:`fedhello.data.images`. The task's own encoder (:meth:`fedhello.tasks.Task.make_encoder`)
    comes first; else the one its ``encoding`` names.
    """
    task = get_task(cfg.task)
    own = task.make_encoder(cfg, backbone)
    if own is not None:
        return _tagged(own, task)
    if task.encoding == "image":
        transform = ImageTransform.from_processor(backbone.image_processor)

        def enc_images(ds, train: bool = False):
            return ImageData(ds, transform, augment=train)

        return _tagged(enc_images, task)
    fn, ml, tok = TEXT_ENCODINGS[task.encoding], cfg.model.max_length, backbone.tokenizer
    accepted = _forward_inputs(backbone.model)

    def enc_text(ds, train: bool = False):
        data = fn(tok, ds, ml)
        for k in [k for k in data.features if k != "input_ids" and accepted is not None and k not in accepted]:
            del data.features[k]  # e.g. token_type_ids of a BERT tokenizer on a decoder LM
        return data

    return _tagged(enc_text, task)


def _tagged(enc: Callable, task) -> Callable:
    """``enc`` whose data objects name their task (``data.task``)."""

    def run(ds, train: bool = False):
        data = enc(ds, train=train)
        data.task = task
        return data

    return run


def _forward_inputs(model) -> set[str] | None:
    """Named inputs of the underlying transformers model's forward (None: cannot tell)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
