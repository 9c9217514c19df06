"""The supported tasks, and what each needs of the data and the model.

=========================  ==========================================  ==================================
task                       data (canonical columns of ``Splits``)      model
=========================  ==========================================  ==================================
text-classification        text, label                                 AutoModelForSequenceClassification
text-pair-classification   text, text_pair, label                      AutoModelForSequenceClassification
multiple-choice            text, text_pair (question or ""), choices,  AutoModelForMultipleChoice
                           label (option index)
image-classification       image, label                                AutoModelForImageClassification
                                                                       + the model's AutoImageProcessor
=========================  ==========================================  ==================================

Every task ends in the same training and evaluation loop: a task-specific encoder
turns a split into a data object whose ``collate(idx, device)`` gives the model's
keyword inputs plus ``labels``, and the model returns ``logits`` of shape
(batch, classes) (options for multiple choice). Text is tokenized once and
batched by length; images are decoded and transformed per batch (random resized
crop + horizontal flip for training, resize for evaluation).
"""

from __future__ import annotations

from typing import Callable

TEXT_CLS = "text-classification"
TEXT_PAIR = "text-pair-classification"
MULTIPLE_CHOICE = "multiple-choice"
IMAGE_CLS = "image-classification"
TASKS = (TEXT_CLS, TEXT_PAIR, MULTIPLE_CHOICE, IMAGE_CLS)

# data.format values that can hold each kind of data
IMAGE_FORMATS = ("auto", "hub", "imagefolder", "parquet")
TEXT_FORMATS = ("auto", "hub", "csv", "jsonl", "parquet", "demo")


def is_text(task: str) -> bool:
    return task != IMAGE_CLS


def check_task_data(cfg) -> None:
    """Task vs. data keys coherence; raises ValueError naming the key (pydantic turns it into a ConfigError)."""
    task, d = cfg.task, cfg.data
    allowed = IMAGE_FORMATS if task == IMAGE_CLS else TEXT_FORMATS
    if task in (TEXT_PAIR, MULTIPLE_CHOICE):
        allowed = tuple(f for f in allowed if f != "demo")  # the demo data is single texts
    if d.format not in allowed:
        raise ValueError(
            f"config key 'data.format': {d.format!r} cannot hold {task} data (use one of {', '.join(allowed)})"
        )
    if d.test_fraction > 0 and d.format == "demo":
        raise ValueError("config key 'data.test_fraction': the demo data has its own test split")
    if task == TEXT_PAIR and not d.text_pair_column:
        raise ValueError("config key 'data.text_pair_column': task text-pair-classification needs the second text's column")
    if task == TEXT_CLS and d.text_pair_column:
        raise ValueError(
            "config key 'data.text_pair_column': only used by text-pair-classification and multiple-choice "
            "(set task: text-pair-classification)"
        )
    if task == MULTIPLE_CHOICE:
        ch = d.choices_columns or []
        if len(ch) < 2:
            raise ValueError("config key 'data.choices_columns': task multiple-choice needs at least 2 option columns")
        if len(set(ch)) != len(ch):
            raise ValueError("config key 'data.choices_columns': the option columns must be distinct")
    elif d.choices_columns:
        raise ValueError("config key 'data.choices_columns': only used by task multiple-choice")
    if cfg.eval.select_metric == "f1_positive":
        if task == MULTIPLE_CHOICE and len(d.choices_columns or []) != 2:
            raise ValueError(
                "config key 'eval.select_metric': f1_positive needs a binary task, not "
                f"{len(d.choices_columns or [])} options"
            )


def model_class(task: str):
    """The transformers Auto class of ``task``'s model."""
    import transformers

    return {
        TEXT_CLS: transformers.AutoModelForSequenceClassification,
        TEXT_PAIR: transformers.AutoModelForSequenceClassification,
        MULTIPLE_CHOICE: transformers.AutoModelForMultipleChoice,
        IMAGE_CLS: transformers.AutoModelForImageClassification,
    }[task]


def make_encoder(cfg, backbone) -> Callable:
    """``(split, train=False) -> data object`` for a ``datasets.Dataset`` with the task's canonical columns.

    ``train=True`` marks the clients' training data (images: augmented batches).

    The data object has ``labels`` (int64 numpy), ``lengths`` (for length-grouped
    batching; all equal for images) and ``collate(idx, device)``; see
    :mod:`fedhello.data.batching` and :mod:`fedhello.data.images`.
    """
    from fedhello.data.batching import encode, encode_choices, encode_pairs

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
    from fedhello.data.images import ImageData, ImageTransform

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
