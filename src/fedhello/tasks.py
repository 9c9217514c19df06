"""The tasks: one :class:`Task` object per task, registered by name (:func:`register_task`).

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

A task owns what differs between tasks, and the rest of the package asks it:

- data: which ``data.format`` values can hold it and its config keys
  (:meth:`Task.check_config`), its input columns (:meth:`Task.read_columns`), the
  texts that must hold words, how a row's label is read (:meth:`Task.row_label`)
  and whether the label set is fixed by the data (:meth:`Task.fixed_label_names`);
- encoding: :attr:`Task.encoding` names the encoder of :mod:`fedhello.data.encoders`,
  or the task builds its data objects itself (:meth:`Task.make_encoder`);
- model: the transformers Auto class, the PEFT task type, whether the head has one
  output per class, the head modules clients train, image or text model;
- training and evaluation: the loss (:meth:`Task.loss`), the per-sample
  log-likelihood the Fisher scores are taken of (:meth:`Task.log_likelihood`), the
  metrics (:meth:`Task.batch_outputs`, :meth:`Task.metrics`) and the default
  selection metric;
- export and predict: the model card's *Use* section, which ``fedhello predict``
  options the task takes (:meth:`Task.check_predict_inputs`) and what its output
  columns are named (:meth:`Task.output_names`).

Every task ends in the same training and evaluation loop: the task's encoder turns
a split into a data object whose ``collate(idx, device)`` gives the model's keyword
inputs plus ``labels``; the model returns ``logits``, which the task's loss and
metrics read. For the classification tasks the logits are (batch, classes)
(options for multiple choice). Text is tokenized once and batched by length; images
are decoded and transformed per batch (random resized crop + horizontal flip for
training, resize for evaluation).

A new task is one class: subclass :class:`Task`, set its attributes, override what
differs and call :func:`register_task` with an instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from fedhello.errors import DataError, FedHelloError
from fedhello.metrics import classification_metrics

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

TEXT_CLS = "text-classification"
TEXT_PAIR = "text-pair-classification"
MULTIPLE_CHOICE = "multiple-choice"
IMAGE_CLS = "image-classification"

# data.format values that can hold each kind of data
IMAGE_FORMATS = ("auto", "hub", "imagefolder", "parquet")
TEXT_FORMATS = ("auto", "hub", "csv", "jsonl", "parquet", "demo")


def check_column(ds, col: str, key: str, where: str) -> None:
    """``col`` must be a column of ``ds`` (``data.<key>``), else a DataError listing the columns."""
    if col not in ds.column_names:
        cols = ", ".join(ds.column_names)
        raise DataError(f"data.{key}: column '{col}' not found in {where} (columns: {cols})")


def class_log_likelihoods(model: "nn.Module", inputs: dict[str, Any], labels: "torch.Tensor") -> "torch.Tensor":
    """log p(y|x) of classification logits [batch, classes]: the log-softmax at the true label."""
    import torch

    out = model(**inputs)
    if isinstance(out, torch.Tensor):
        logits = out
    else:
        logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fisher scores need sequence-classification logits [batch, classes], got {tuple(logits.shape)}"
        )
    return torch.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


class Task:
    """One task: what it needs of the data and the model, and how it is trained and scored.

    The defaults are those of single-text classification; a task overrides what differs.
    """

    name: ClassVar[str] = ""
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"  # the transformers Auto class of the model
    vision: ClassVar[bool] = False  # an image model (else a text model with a tokenizer)
    per_class_head: ClassVar[bool] = True  # the head has one output per class (num_labels)
    peft_task_type: ClassVar[str | None] = None  # PEFT TaskType name; SEQ_CLS makes PEFT save the head itself
    pooling_options: ClassVar[bool] = False  # model.pooling may choose mean pooling for the head's input
    # heads trained by every client (PEFT modules_to_save; a suffix also matches DistilBERT's
    # pre_classifier): classifier of encoders and ViT, score of decoder LMs; () for a task without one
    head_modules: ClassVar[tuple[str, ...]] = ("classifier", "score")
    formats: ClassVar[tuple[str, ...]] = TEXT_FORMATS  # data.format values that can hold its data
    encoding: ClassVar[str] = "text"  # the encoder of fedhello.data.encoders (make_encoder may build its own)
    worded: ClassVar[tuple[str, ...]] = ("text",)  # input texts that must hold words (else blank_text)
    row_inputs: ClassVar[str] = "every input"  # what a kept row has beside its label (error messages)
    # the metrics its evaluation records (val_* / test_*; :meth:`metrics`) that may select the best round
    # (eval.select_metric), and the one that does by default
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "micro_f1", "f1_positive")
    select_metric: ClassVar[str] = "accuracy"
    usage: ClassVar[tuple[str, ...]] = ()  # the model card's "Use" section

    # ----------------------------------------------------------------- config and data

    def check_config(self, cfg) -> None:
        """Task vs. data keys coherence; raises ValueError naming the key (pydantic turns it into a ConfigError)."""
        d = cfg.data
        if d.format not in self.formats:
            raise ValueError(
                f"config key 'data.format': {d.format!r} cannot hold {self.name} data "
                f"(use one of {', '.join(self.formats)})"
            )
        if d.test_fraction > 0 and d.format == "demo":
            raise ValueError("config key 'data.test_fraction': the demo data has its own test split")
        self.check_columns(cfg)
        if cfg.eval.select_metric not in self.metric_names:
            raise ValueError(
                f"config key 'eval.select_metric': {cfg.eval.select_metric} is not a metric of task {self.name} "
                f"(one of {', '.join(self.metric_names)})"
            )

    def check_columns(self, cfg) -> None:
        """The task's column keys (``data.*_column(s)``); raises ValueError naming the key."""
        if cfg.data.choices_columns:
            raise ValueError("config key 'data.choices_columns': only used by task multiple-choice")

    def read_columns(self, ds, cfg, where: str) -> dict[str, list[Any]]:
        """The task's input columns (canonical names) read from ``ds`` (a ``datasets.Dataset``)."""
        check_column(ds, cfg.text_column, "text_column", where)
        return {"text": ds[cfg.text_column]}

    def read_labels(self, ds, cfg, where: str) -> list[Any] | None:
        """The rows' raw labels, or None: read from ``data.label_column`` (the default)."""
        return None

    def row_label(self, y: Any, cfg) -> tuple[Any, str | None]:
        """(the row's label, why it is dropped or None) from its canonical raw label."""
        return y, None

    def fixed_label_names(self, cfg) -> list[str] | None:
        """The label names when the task fixes them (labels are then ids already), or None:
        the label set is the training split's."""
        return None

    def make_encoder(self, cfg, backbone) -> Callable | None:
        """``(split, train=False) -> data object`` when the task builds its own data objects;
        None: the encoder named by :attr:`encoding` (:func:`fedhello.data.encoders.make_encoder`)."""
        return None

    # ----------------------------------------------------------------- training and scoring

    def loss(self, logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """The training and evaluation loss of a batch (classification: cross-entropy)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, labels)

    def log_likelihood(self, model: "nn.Module", inputs: dict[str, Any], labels: "torch.Tensor") -> "torch.Tensor":
        """Per-sample log-likelihoods [batch] the Fisher scores are taken of (:mod:`fedhello.model.fisher`)."""
        return class_log_likelihoods(model, inputs, labels)

    def batch_outputs(self, logits: "torch.Tensor", labels: "torch.Tensor") -> dict[str, np.ndarray]:
        """What :meth:`metrics` needs of one evaluation batch, as numpy arrays (concatenated over batches)."""
        return {
            "preds": logits.argmax(-1).cpu().numpy(),
            "labels": labels.cpu().numpy(),
            "num_classes": np.array([int(logits.shape[-1])]),
        }

    def metrics(self, outputs: dict[str, np.ndarray], positive_class: int = 1) -> dict[str, float]:
        """The metrics of :mod:`fedhello.metrics` from the concatenated :meth:`batch_outputs`."""
        return classification_metrics(outputs["preds"], outputs["labels"], int(outputs["num_classes"][-1]),
                                      positive_class)

    # ----------------------------------------------------------------- predict

    def check_predict_inputs(self, where: str, texts: Sequence[str], pairs, choices, images) -> None:
        """One error line per misuse of ``fedhello predict``'s options for this task's adapters."""
        if images:
            raise FedHelloError(f"{where}: --image is for image-classification adapters")
        if not texts:
            raise FedHelloError("predict needs at least one --text")
        self.check_predict_pairs(where, pairs)
        if pairs and len(pairs) != len(texts):
            raise FedHelloError(f"--pair: {len(pairs)} given for {len(texts)} --text (one second text per text)")
        self.check_predict_choices(where, choices)

    def check_predict_pairs(self, where: str, pairs) -> None:
        """Whether the task takes (or needs) ``--pair``; the default takes it optionally."""

    def check_predict_choices(self, where: str, choices) -> None:
        """Whether the task takes ``--choice``; the default does not."""
        if choices:
            raise FedHelloError(f"{where}: --choice is for multiple-choice adapters")

    def output_names(self, labels: list[str], choices) -> list[str]:
        """The names of the model's output columns: the class labels."""
        return list(labels)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


# --------------------------------------------------------------------------- model card "Use" lines

_BASE = (
    'info = json.load(open(f"{ADAPTER}/fedhello.json"))',
    "try:  # the base model by its hub id; the head's weights come from the adapter",
    '    base = {cls}.from_pretrained(info["base_model"]{kw})',
    "except OSError:  # the hub is out of reach: the local copy the run was trained from",
    '    base = {cls}.from_pretrained(info["base_model_path"]{kw})',
    "model = PeftModel.from_pretrained(base, ADAPTER).eval()",
)


def _base_lines(cls: str, kw: str = "") -> list[str]:
    return [line.replace("{cls}", cls).replace("{kw}", kw) for line in _BASE]


# --------------------------------------------------------------------------- the four tasks
# (tests/test_predict_tasks.py runs the model cards' snippets)


class TextClassification(Task):
    """One text per row, one class per text."""

    name = TEXT_CLS
    peft_task_type = "SEQ_CLS"
    pooling_options = True
    row_inputs = "both a text"
    usage = (
        "`fedhello predict --run RUN_DIR --text \"...\"`; outside fedhello, load it with transformers + PEFT",
        "as the fedhello README shows (section *Using the exported model*; it also applies `pooling: mean`).",
    )

    def check_columns(self, cfg) -> None:
        if cfg.data.text_pair_column:
            raise ValueError(
                "config key 'data.text_pair_column': only used by text-pair-classification and multiple-choice "
                "(set task: text-pair-classification)"
            )
        super().check_columns(cfg)

    def check_predict_pairs(self, where: str, pairs) -> None:
        if pairs:
            raise FedHelloError(f"{where}: --pair is for text-pair and multiple-choice adapters")


class TextPairClassification(Task):
    """Two texts per row (``text``, ``text_pair``), one class per pair."""

    name = TEXT_PAIR
    peft_task_type = "SEQ_CLS"
    pooling_options = True
    formats = tuple(f for f in TEXT_FORMATS if f != "demo")  # the demo data is single texts
    encoding = "text-pair"
    worded = ("text", "text_pair")
    usage = (
        "`fedhello predict --run RUN_DIR --text \"FIRST\" --pair \"SECOND\"`; outside fedhello, load it with",
        "transformers + PEFT as the fedhello README shows (section *Using the exported model*), tokenizing",
        "`tok(firsts, seconds, ...)`.",
    )

    def check_columns(self, cfg) -> None:
        if not cfg.data.text_pair_column:
            raise ValueError(
                "config key 'data.text_pair_column': task text-pair-classification needs the second text's column"
            )
        super().check_columns(cfg)

    def read_columns(self, ds, cfg, where: str) -> dict[str, list[Any]]:
        check_column(ds, cfg.text_column, "text_column", where)
        check_column(ds, cfg.text_pair_column, "text_pair_column", where)
        return {"text": ds[cfg.text_column], "text_pair": ds[cfg.text_pair_column]}

    def check_predict_pairs(self, where: str, pairs) -> None:
        if not pairs:
            raise FedHelloError(f"{where}: give each --text its second text with --pair")


class MultipleChoice(Task):
    """A passage, an optional question and options per row; the label is the right option's index."""

    name = MULTIPLE_CHOICE
    auto_class = "AutoModelForMultipleChoice"
    per_class_head = False  # the head scores options
    formats = tuple(f for f in TEXT_FORMATS if f != "demo")
    encoding = "choices"
    usage = (
        "`fedhello predict --run RUN_DIR --text PASSAGE [--pair QUESTION] --choice A --choice B ...` prints the",
        "chosen option (index from 0), the option and its probability. Outside fedhello, with transformers + PEFT:",
        "",
        "```python",
        "import json, torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForMultipleChoice, AutoTokenizer",
        "",
        'ADAPTER = "RUN_DIR/adapter"',
        'passage = "the box is red and small"',
        'question = "what colour is the box?"  # or ""',
        'options = ["red", "blue", "green"]',
        *_base_lines("AutoModelForMultipleChoice"),
        "tok = AutoTokenizer.from_pretrained(ADAPTER)",
        "# one pair per option: (passage, question + option), the passage truncated first, as in training",
        'seconds = [f"{question} {o}".strip() if question else o for o in options]',
        "enc = tok([passage] * len(options), seconds, truncation=\"only_first\", max_length=info[\"max_length\"],",
        '          padding=True, return_tensors="pt")',
        "with torch.no_grad():",
        "    logits = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits  # (1, options)",
        "print(options[int(logits.argmax(-1))])",
        "```",
    )

    def check_columns(self, cfg) -> None:
        ch = cfg.data.choices_columns or []
        if len(ch) < 2:
            raise ValueError("config key 'data.choices_columns': task multiple-choice needs at least 2 option columns")
        if len(set(ch)) != len(ch):
            raise ValueError("config key 'data.choices_columns': the option columns must be distinct")
        if cfg.eval.select_metric == "f1_positive" and len(ch) != 2:
            raise ValueError(
                f"config key 'eval.select_metric': f1_positive needs a binary task, not {len(ch)} options"
            )

    def read_columns(self, ds, cfg, where: str) -> dict[str, list[Any]]:
        check_column(ds, cfg.text_column, "text_column", where)
        if cfg.text_pair_column:
            check_column(ds, cfg.text_pair_column, "text_pair_column", where)
        for c in cfg.choices_columns or []:
            check_column(ds, c, "choices_columns", where)
        opts = [ds[c] for c in cfg.choices_columns or []]
        return {
            "text": ds[cfg.text_column],
            "text_pair": ds[cfg.text_pair_column] if cfg.text_pair_column else [""] * len(ds),
            "choices": [list(row) for row in zip(*opts)],
        }

    def row_label(self, y: Any, cfg) -> tuple[Any, str | None]:
        """The option index (``data.choices_label_base`` subtracted), or ``bad_label``."""
        k = to_int(y)
        ok = k is not None and 0 <= k - cfg.choices_label_base < len(cfg.choices_columns or [])
        return (k - cfg.choices_label_base, None) if ok else (None, "bad_label")

    def fixed_label_names(self, cfg) -> list[str]:
        return list(cfg.choices_columns or [])

    def check_predict_choices(self, where: str, choices) -> None:
        if len(choices or ()) < 2:
            raise FedHelloError(f"{where}: give at least 2 options with --choice (each --text is asked all of them)")

    def output_names(self, labels: list[str], choices) -> list[str]:
        """The options every passage was asked."""
        return list(choices)


class ImageClassification(Task):
    """One image per row, one class per image."""

    name = IMAGE_CLS
    auto_class = "AutoModelForImageClassification"
    vision = True
    formats = IMAGE_FORMATS
    encoding = "image"
    worded = ()
    usage = (
        "`fedhello predict --run RUN_DIR --image FILE [--image FILE ...]` prints label, probability, file.",
        "Outside fedhello, with transformers + PEFT (and Pillow):",
        "",
        "```python",
        "import json, torch",
        "from PIL import Image",
        "from peft import PeftModel",
        "from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification",
        "",
        'ADAPTER = "RUN_DIR/adapter"',
        'files = ["photo.png"]',
        "config = AutoConfig.from_pretrained(ADAPTER)  # the base's config, with the run's labels (id2label)",
        *_base_lines("AutoModelForImageClassification", ", config=config, ignore_mismatched_sizes=True"),
        "proc = AutoImageProcessor.from_pretrained(ADAPTER)",
        'pixels = proc([Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]',
        "with torch.no_grad():",
        "    logits = model(pixel_values=pixels).logits",
        "print([config.id2label[i] for i in logits.argmax(-1).tolist()])",
        "```",
        "",
        "fedhello (training, evaluation, `predict`) resizes with torch's antialiased bilinear interpolation, the",
        "image processor with Pillow: images not already at the model's input size can score slightly differently.",
    )

    def read_columns(self, ds, cfg, where: str) -> dict[str, list[Any]]:
        import datasets

        check_column(ds, cfg.image_column, "image_column", where)
        try:
            col = ds.cast_column(cfg.image_column, datasets.Image(decode=False))[cfg.image_column]
        except Exception as err:  # noqa: BLE001 - not images
            raise DataError(
                f"data.image_column: column '{cfg.image_column}' in {where} does not hold images: {one_line(err)}"
            ) from err
        return {"image": col}

    def check_predict_inputs(self, where, texts, pairs, choices, images) -> None:
        if texts or pairs or choices:
            raise FedHelloError(f"{where}: give image files with --image (--text, --pair and --choice are for text adapters)")
        if not images:
            raise FedHelloError(f"{where}: give at least one --image FILE")


def to_int(v: Any) -> int | None:
    """``v`` as an int (an int, or a string of one), else None."""
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def one_line(err: BaseException) -> str:
    """The first line of an error's message, at most 300 characters."""
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first if len(first) <= 300 else first[:297] + "..."


# --------------------------------------------------------------------------- the registry

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register ``task`` under its name (a task registered again replaces the old one); returns it."""
    if not task.name:
        raise ValueError(f"{type(task).__name__}: a task needs a name")
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a registered task (tests that register a task of their own)."""
    TASKS.pop(name, None)


def get_task(task: "str | Task") -> Task:
    """The registered task of that name (a :class:`Task` is returned as is)."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r} (one of {', '.join(TASKS)})") from None


def check_task_data(cfg) -> None:
    """Task vs. data keys coherence (:meth:`Task.check_config`); raises ValueError naming the key."""
    get_task(cfg.task).check_config(cfg)


for _task in (TextClassification(), TextPairClassification(), MultipleChoice(), ImageClassification()):
    register_task(_task)


def task_of(data) -> Task:
    """The task whose encoder made the data object ``data`` (``data.task``); data built by hand
    (no task) is scored as text classification, the loss and metrics every built-in task shares."""
    task = getattr(data, "task", None)
    return task if isinstance(task, Task) else TASKS[TEXT_CLS]
