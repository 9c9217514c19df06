"""The final global adapter in PEFT format: written when a run finishes, read by ``fedhello predict``.

``RUNDIR/adapter/`` is what PEFT's ``save_pretrained`` writes for the run's
model holding the final global state: ``adapter_config.json`` (LoRA settings,
the base model's hub id, ``modules_to_save`` = the classification head) and
``adapter_model.safetensors`` (every LoRA tensor and the trained head), plus
``config.json`` (the base's config with ``id2label``/``label2id``), the
tokenizer or image processor, ``labels.json`` (class names in label-id order),
``fedhello.json`` (the ``model.name`` to rebuild the base from, ``base_model``
(hub id) and ``base_model_path`` (the local copy trained from), the ``task``,
``max_length``, ``pooling``, number of labels) and a model card (``README.md``).
``fedhello predict`` reads the adapters of every task. Outside fedhello, the
README's *Using the exported model* snippet (run by tests/test_readme.py) loads
it with transformers + PEFT only; with ``"pooling": "mean"`` it feeds the head
the attention-masked mean of the last hidden states itself, which is what
``fedhello.model.head.attach_mean_pooling(model)`` does as a forward hook.
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import torch

from fedhello.errors import FedHelloError
from fedhello.tasks import TASKS, TEXT_CLS, get_task
from fedhello.model.backbone import model_class, resolve_model_path
from fedhello.model.state import set_state

ADAPTER = "adapter"
INFO = "fedhello.json"
LABELS = "labels.json"
POOLINGS = ("model", "mean")  # what export_adapter writes (model.pooling, resolved)


def export_adapter(model, state, run_dir: str | Path, label_names: Sequence[str], cfg, pooling: str = "model",
                   *, tokenizer=None, summary: dict | None = None) -> Path:
    """Write ``run_dir/adapter/`` from the PEFT ``model`` with ``state`` loaded (atomically: staged, then renamed).

    Beside PEFT's files: the base model named by its hub id (``adapter_config.json``,
    with the local folder it was trained from as ``fedhello.json``'s
    ``base_model_path``, a fallback), ``config.json`` (the base's config with the
    run's labels as ``id2label``/``label2id``), the tokenizer (or image processor),
    and a model card (``README.md``) from the config and ``summary``.
    """
    from fedhello.model.backbone import hub_id, resolve_model_path

    run = Path(run_dir)
    dest = run / ADAPTER
    set_state(model, state)
    # created with the umask, like every other run file (tempfile.mkdtemp would make it owner-only)
    tmp = run / f".adapter.{uuid.uuid4().hex}"
    tmp.mkdir()
    base_id, base_path = hub_id(cfg.model.name), resolve_model_path(cfg.model.name)
    try:
        model.save_pretrained(str(tmp))
        acfg_file = tmp / "adapter_config.json"
        acfg = json.loads(acfg_file.read_text())
        acfg["base_model_name_or_path"] = base_id
        acfg_file.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        _write_model_config(model, tmp, cfg.task, label_names)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        (tmp / LABELS).write_text(json.dumps(list(label_names), indent=2) + "\n")
        info = {
            "model": cfg.model.name,
            "base_model": base_id,
            "base_model_path": base_path,
            "task": cfg.task,
            "max_length": cfg.model.max_length,
            "num_labels": len(label_names),
            "pooling": pooling,
            "strategy": cfg.strategy.name,
            "seed": cfg.seed,
            "rounds": cfg.rounds,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(cfg, label_names, pooling, base_id, summary))
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


def _write_model_config(model, folder: Path, task: str, label_names: Sequence[str]) -> None:
    """``config.json``: the base model's config, with the run's labels where the head has one output per class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    conf = copy.deepcopy(base.config)
    if get_task(task).per_class_head:
        conf.num_labels = len(label_names)
        conf.id2label = {i: str(name) for i, name in enumerate(label_names)}
        conf.label2id = {str(name): i for i, name in enumerate(label_names)}
    conf.save_pretrained(str(folder))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}%"


def model_card(cfg, label_names: Sequence[str], pooling: str, base_id: str, summary: dict | None) -> str:
    """The adapter's ``README.md``: what was trained, on what, by which strategy, with the final metrics."""
    d = cfg.data
    if d.format == "demo":
        data = "the built-in generated intent dataset (`data.format: demo`)"
    elif d.name:
        data = f"`{d.name}`" + (f" ({d.subset})" if d.subset else "")
    else:
        data = f"a local dataset folder `{Path(d.path).name if d.path else '?'}`"
    part = cfg.partition
    skew = {"iid": "IID", "pathological": f"pathological, {part.classes_per_client} classes per client",
            "dirichlet": f"Dirichlet({part.alpha})"}[part.name]
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_id}",
        "tags: [fedhello, federated-learning, lora]",
        "---",
        "",
        f"# LoRA adapter for {cfg.task}, trained federated with fedhello",
        "",
        f"- **Base model**: `{base_id}` (frozen); LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha:g} on "
        f"{', '.join(cfg.lora.target_modules) if cfg.lora.target_modules else 'the attention query/value projections'}, "
        "plus the classification head.",
        f"- **Data**: {data}; {len(label_names)} classes (`config.json`'s `id2label`, `labels.json`).",
        f"- **Federation**: {cfg.clients.num_clients} clients ({skew}), {cfg.clients.per_round} per round, "
        f"{cfg.rounds} rounds; resource groups train {cfg.clients.budgets} LoRA layers.",
        f"- **Strategy**: `{cfg.strategy.name}`; head `{cfg.head.train}`, initialised `{cfg.head.init}`; seed {cfg.seed}.",
        f"- **Pooling**: `{pooling}`" + (" (the head reads the attention-masked mean of the last hidden states; "
                                         "the loading snippet in the fedhello README computes it)" if pooling == "mean" else ""),
    ]
    if summary:
        best = summary.get("best_val_round")
        lines += [
            "",
            "## Final metrics",
            "",
            "| metric | value |",
            "|---|---|",
            f"| final test accuracy | {_pct(summary.get('final_test_accuracy'))} |",
            f"| final test macro-F1 | {_pct(summary.get('final_test_macro_f1'))} |",
            f"| best validation round (`{summary.get('select_metric', 'accuracy')}`) | {'-' if best is None else best} |",
            f"| test accuracy at the best validation round | {_pct(summary.get('test_accuracy_at_best_val'))} |",
        ]
    lines += ["", "## Use", "", *get_task(cfg.task).usage, ""]
    return "\n".join(lines)


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
    if info.get("pooling", "model") not in POOLINGS:
        raise FedHelloError(f"{adapter / INFO}: unknown 'pooling' {info.get('pooling')!r} (one of {', '.join(POOLINGS)})")
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


def _check_run_labels(run_dir: str | Path, adapter: Path, labels: list[str]) -> None:
    """An adapter copied in from another run must not be served under this one."""
    run_labels = Path(run_dir) / LABELS
    if run_labels.is_file():
        try:
            own = [str(x) for x in json.loads(run_labels.read_text())]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
            raise FedHelloError(f"{run_labels}: unreadable ({type(err).__name__})") from None
        if own != labels:
            raise FedHelloError(
                f"{adapter / LABELS}: the adapter's labels differ from the run's ({run_labels}): "
                "an adapter from another run? Re-export it with fedhello report --adapter"
            )


def _load_base(spec, info: dict, labels: list[str], adapter: Path):
    """(base model, tokenizer or image processor) of the adapter's task, as build_backbone builds them."""
    from transformers import AutoTokenizer

    path = resolve_model_path(info["model"])
    # as build_backbone: a per-class head gets the run's label count; multiple choice scores options
    kwargs = {"num_labels": len(labels), "ignore_mismatched_sizes": True} if spec.per_class_head else {}
    try:
        if spec.vision:
            from transformers import AutoImageProcessor

            tokenizer = AutoImageProcessor.from_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
        base = model_class(spec).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise FedHelloError(f"cannot load the base model {path!r} of {adapter}: {err}".splitlines()[0]) from None
    if not spec.vision:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(base.config, "pad_token_id", None) is None:
            base.config.pad_token_id = tokenizer.pad_token_id
    return base, tokenizer


def _check_weights(expected: dict, saved: dict, adapter: Path) -> None:
    """The saved tensors are exactly the adapter's, each of the model's shape."""
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


def load_exported(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(PeftModel in eval mode, tokenizer (image processor for images), label names, max_length) from ``run_dir/adapter``.

    Any registered task (:mod:`fedhello.tasks`): the base is built as
    :func:`~fedhello.model.backbone.build_backbone` builds it for that task.

    Every file is checked first (one error line naming it): fedhello.json names the
    base model, labels.json's count matches it and the head, the weights are a
    readable safetensors file of finite values holding exactly the tensors of the
    adapter, each of the model's shape.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from transformers.utils import logging as hf_logging

    adapter = Path(run_dir) / ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        raise FedHelloError(
            f"--run {run_dir}: no exported adapter ({adapter}/adapter_config.json missing; "
            "it is written when a run finishes)"
        )
    info, labels, saved = _read_adapter_files(adapter)
    _check_run_labels(run_dir, adapter, labels)
    task = info.get("task", TEXT_CLS)  # adapters exported before the key existed were text classifiers
    if task not in TASKS:
        raise FedHelloError(f"{adapter / INFO}: unknown task {task!r} (one of {', '.join(TASKS)})")
    spec = get_task(task)
    # PEFT calls a transformers API that transformers 5 deprecates; not actionable for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base, tokenizer = _load_base(spec, info, labels, adapter)
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
    limit = getattr(base.config, "max_position_embeddings", None)
    if isinstance(limit, int) and int(info.get("max_length", 128)) > limit:
        raise FedHelloError(
            f"{adapter / INFO}: 'max_length' {info['max_length']} is more than the model's {limit} positions"
        )
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)  # no hub look-up for the base
    _check_weights(expected, saved, adapter)
    if info.get("pooling", "model") == "mean":
        from fedhello.model.head import attach_mean_pooling

        attach_mean_pooling(model)
    model.to(device).eval()
    return model, tokenizer, labels, int(info.get("max_length", 128))
