"""Encoders: a split with a task's canonical columns to the data object training and evaluation read.

Text is tokenized once and batched by length (:mod:`fedhello.data.batching`);
images are decoded and transformed per batch (:mod:`fedhello.data.images`).
"""

from __future__ import annotations

from typing import Callable

from fedhello.data.batching import encode, encode_choices, encode_pairs
from fedhello.data.images import ImageData, ImageTransform
from fedhello.tasks import IMAGE_CLS, MULTIPLE_CHOICE, TEXT_CLS, TEXT_PAIR


def make_encoder(cfg, backbone) -> Callable:
    """``(split, train=False) -> data object`` for a ``datasets.Dataset`` with the task's canonical columns.

    ``train=True`` marks the clients' training data (images: augmented batches).

    The data object has ``labels`` (int64 numpy), ``lengths`` (for length-grouped
    batching; all equal for images) and ``collate(idx, device)``; see
    :mod:`fedhello.data.batching` and :mod:`fedhello.data.images`.
    """
    task, ml, tok = cfg.task, cfg.model.max_length, backbone.tokenizer
    if task != IMAGE_CLS:
        fn = {
            TEXT_CLS: lambda ds: encode(tok, ds["text"], ds["label"], ml),
            TEXT_PAIR: lambda ds: encode_pairs(tok, ds["text"], ds["text_pair"], ds["label"], ml),
            MULTIPLE_CHOICE: lambda ds: encode_choices(tok, ds["text"], ds["text_pair"], ds["choices"], ds["label"], ml),
        }[task]
        accepted = _forward_inputs(backbone.model)

        def enc_text(ds, train: bool = False):
            data = fn(ds)
            for k in [k for k in data.features if k != "input_ids" and accepted is not None and k not in accepted]:
                del data.features[k]  # e.g. token_type_ids of a BERT tokenizer on a decoder LM
            return data

        return enc_text
    transform = ImageTransform.from_processor(backbone.image_processor)

    def enc_images(ds, train: bool = False):
        return ImageData(ds, transform, augment=train)

    return enc_images


def _forward_inputs(model) -> set[str] | None:
    """Named inputs of the underlying transformers model's forward (None: cannot tell)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
