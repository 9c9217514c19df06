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

from dataclasses import dataclass

TEXT_CLS = "text-classification"
TEXT_PAIR = "text-pair-classification"
MULTIPLE_CHOICE = "multiple-choice"
IMAGE_CLS = "image-classification"

# data.format values that can hold each kind of data
IMAGE_FORMATS = ("auto", "hub", "imagefolder", "parquet")
TEXT_FORMATS = ("auto", "hub", "csv", "jsonl", "parquet", "demo")


@dataclass(frozen=True)
class TaskSpec:
    """What one task needs of the model; the data side is :func:`check_task_data` and the encoders."""

    name: str
    auto_class: str  # the transformers Auto class of the model
    vision: bool  # an image model (else a text model with a tokenizer)
    per_class_head: bool  # the head has one output per class (num_labels); multiple choice scores options
    peft_task_type: str | None  # PEFT TaskType name; SEQ_CLS makes PEFT save the head itself
    pooling_options: bool  # model.pooling may choose mean pooling for the head's input


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(TEXT_CLS, "AutoModelForSequenceClassification", False, True, "SEQ_CLS", True),
        TaskSpec(TEXT_PAIR, "AutoModelForSequenceClassification", False, True, "SEQ_CLS", True),
        TaskSpec(MULTIPLE_CHOICE, "AutoModelForMultipleChoice", False, False, None, False),
        TaskSpec(IMAGE_CLS, "AutoModelForImageClassification", True, True, None, False),
    )
}


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
