"""``fedhello predict``: score inputs with a run's exported adapter (:mod:`fedhello.model.adapter`), any task.

Inputs go through the engine's own encoders (:mod:`fedhello.data.batching`,
:mod:`fedhello.data.images`' evaluation transform), so a prediction gives the
logits the run's evaluation gives the same sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from fedhello.errors import FedHelloError
from fedhello.model.adapter import ADAPTER, INFO, load_exported
from fedhello.tasks import TEXT_CLS, get_task


def _model_inputs(task, model, pre, max_length: int, texts, pairs, choices, images) -> dict[str, torch.Tensor]:
    """The batch the engine's evaluation would collate for these inputs (no labels)."""
    from fedhello.data.batching import collate

    if task.encoding == "image":
        from fedhello.data.images import ImageTransform, read_image_file

        transform = ImageTransform.from_processor(pre)
        pixels = []
        for f in images:
            try:
                pixels.append(transform.eval(read_image_file(f)))
            except ValueError as err:
                raise FedHelloError(f"--image {err}") from None
        return {"pixel_values": torch.stack(pixels)}
    from fedhello.data.encoders import TEXT_ENCODINGS, _forward_inputs

    texts = list(texts)
    split = {"text": texts, "text_pair": list(pairs) if pairs else [""] * len(texts),
             "choices": [list(choices or ())] * len(texts), "label": [0] * len(texts)}
    data = TEXT_ENCODINGS[task.encoding](pre, split, max_length)
    accepted = _forward_inputs(model)  # e.g. no token_type_ids for a decoder LM, as make_encoder does
    batch = collate(data, range(len(texts)))
    return {k: v for k, v in batch.items() if k != "labels" and (k == "input_ids" or accepted is None or k in accepted)}


@torch.no_grad()
def predict_logits(run_dir: str | Path, texts: Sequence[str] = (), pairs: Sequence[str] | None = None,
                   device: str | torch.device = "cpu", *, choices: Sequence[str] | None = None,
                   images: Sequence[str | Path] | None = None) -> tuple[torch.Tensor, list[str]]:
    """(logits as float32 on the CPU, one row per input, and the names of its columns) of the run's exported model.

    By the adapter's task: ``texts`` (text-classification); ``texts`` with ``pairs``
    (each text's second text: text-pair-classification); ``texts`` (passages), optional
    ``pairs`` (their questions) and ``choices`` (options every passage is asked:
    multiple-choice; the columns are the options); ``images`` (files, decoded as
    images only: image-classification). Anything else is a :class:`FedHelloError`.
    """
    model, pre, labels, max_length = load_exported(run_dir, device)
    task = get_task(exported_task(run_dir))
    task.check_predict_inputs(f"--run {run_dir}: a {task.name} adapter", list(texts or ()), list(pairs or ()),
                              list(choices or ()), list(images or ()))
    batch = _model_inputs(task, model, pre, max_length, texts, pairs, choices, images)
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise FedHelloError(f"{Path(run_dir) / ADAPTER}: the model's outputs are not finite numbers")
    return logits, task.output_names(labels, choices)


def exported_task(run_dir: str | Path) -> str:
    """The task an exported adapter was trained for (``text-classification`` for adapters that predate the key)."""
    try:
        info = json.loads((Path(run_dir) / ADAPTER / INFO).read_text())
    except (OSError, ValueError):
        return TEXT_CLS
    return info.get("task", TEXT_CLS) if isinstance(info, dict) else TEXT_CLS


def predict(run_dir: str | Path, texts: Sequence[str] = (), device: str | torch.device = "cpu",
            pairs: Sequence[str] | None = None, *, choices: Sequence[str] | None = None,
            images: Sequence[str | Path] | None = None):
    """[(index, name, probability, probabilities of every class)] for each input (:func:`predict_logits`).

    The name is the class label, or for multiple choice the chosen option.
    """
    logits, names = predict_logits(run_dir, texts, pairs, device, choices=choices, images=images)
    probs = torch.softmax(logits, dim=-1)
    out = []
    for p in probs:
        i = int(p.argmax())
        out.append((i, names[i], float(p[i]), p.tolist()))
    return out
