"""Per-layer Fisher information scores of a model's LoRA layers, for FIM-HLA (Fed-HeLLo, arXiv:2506.12213).

Score of LoRA layer l: the empirical diagonal Fisher of the log-likelihood,
``s_l = (1/N) sum_i sum_{theta in layer l} (d log p(y_i|x_i) / d theta)^2``
over the N calibration samples (a sample count, never a batch count), with
``log p(y|x)`` the log-softmax of the logits at the true label (never a raw
logit). The authors' reference implementation (arXiv:2506.12213) divided by a
batch count, so its Fisher came from one sample, and scored a raw logit.

Per-sample gradients are computed in one backward pass per batch, Opacus-style:
a forward hook on each PEFT ``lora_A``/``lora_B`` ``nn.Linear`` keeps its input
activations ``x`` and its output ``z``; one ``torch.autograd.grad`` of the SUM of
the per-sample log-likelihoods w.r.t. those outputs gives ``dz``; the per-sample
weight gradient is ``einsum('bto,bti->boi', dz, x)`` (summed over tokens; a
module called several times in one forward sums its per-call gradients before
squaring). In eval mode samples do not interact, so the gradient of the summed
objective at sample i's activations is exactly sample i's own gradient.
``torch.func.vmap`` is not used: it fails on Hugging Face models with
data-dependent control flow. :func:`fisher_layer_scores_loop` is the slow
reference (one backward per sample). Right-padded batches are re-cut into
length buckets of at most ``bucket_size`` samples, each trimmed to its longest
sample, so that short queries are not padded to the longest one of a large batch
(the scores do not change: samples are independent in eval mode).

The log-likelihood is a hook (``log_likelihood``): the task's
(:meth:`fedhello.tasks.Task.log_likelihood`); by default the classification tasks'
:func:`~fedhello.tasks.class_log_likelihoods` of [batch, classes] logits.
The tiers and weights made of the scores: :mod:`fedhello.allocation.fisher`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from fedhello.tasks import class_log_likelihoods

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

# torch is imported inside the functions, as everywhere in the scoring path.

_LABEL_KEYS = ("labels", "label")

# (model, inputs, labels) -> per-sample log-likelihoods [batch]: what the Fisher is taken of
LogLikelihood = Callable[["nn.Module", "dict[str, Any]", "torch.Tensor"], "torch.Tensor"]


# --------------------------------------------------------------------------- helpers


def lora_params(model: nn.Module, layermap) -> tuple[list[list[str]], dict[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    names_by_layer = [list(names) for names in layermap.layers]
    for names in names_by_layer:
        for n in names:
            if n not in params:
                raise ValueError(f"LoRA parameter {n!r} of the layer map is not a parameter of the model")
    return names_by_layer, params


@contextmanager
def scoring_mode(model: nn.Module, params: Sequence[nn.Parameter]):
    """Eval mode + requires_grad on the given params; everything restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def split_batch(batch: Mapping[str, Any], device: "torch.device") -> tuple[dict[str, Any], "torch.Tensor"]:
    """A labelled batch -> (model inputs on ``device``, labels as a long tensor: one per sample, flat,
    or one row per sample where the task labels every token, [batch, tokens])."""
    import torch

    inputs: dict[str, Any] = {}
    labels = None
    for k, v in batch.items():
        if k in _LABEL_KEYS:
            labels = v
            continue
        inputs[k] = v.to(device) if isinstance(v, torch.Tensor) else v
    if labels is None:
        raise ValueError("Fisher scores need labelled batches (a 'labels' entry)")
    labels = torch.as_tensor(labels).to(device).long()
    if labels.dim() < 2 or labels.shape[-1] == 1:
        labels = labels.reshape(-1)
    return inputs, labels


def _device(model: "nn.Module") -> "torch.device":
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def length_buckets(inputs: dict[str, Any], labels: "torch.Tensor", bucket_size: int):
    """Split a right-padded batch into length-sorted buckets trimmed to their longest sample.

    Without a 2-D ``attention_mask``, or with padding that is not on the right,
    the batch is returned whole. Labels of every token ([batch, tokens]) are trimmed
    with the inputs.
    """
    import torch

    mask = inputs.get("attention_mask")
    bsz = labels.shape[0]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != bsz or bsz <= 1:
        return [(inputs, labels)]
    m = mask != 0
    lengths = m.sum(dim=1)
    width = m.shape[1]
    # right padding: every row is ones then zeros
    expect = torch.arange(width, device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(m, expect):
        return [(inputs, labels)]
    if bsz <= bucket_size and int(lengths.max()) == width:
        return [(inputs, labels)]
    order = torch.argsort(lengths, stable=True)
    out = []
    for s in range(0, bsz, bucket_size):
        rows = order[s : s + bucket_size]
        w = max(1, int(lengths[rows].max()))
        sub: dict[str, Any] = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == bsz:
                v = v[rows]
                if v.dim() >= 2 and v.shape[1] == width:
                    v = v[:, :w]
            sub[k] = v
        y = labels[rows]
        out.append((sub, y[:, :w] if y.dim() == 2 and y.shape[1] == width else y))
    return out


# --------------------------------------------------------------------------- scores


def _lora_linears(model: "nn.Module", names_by_layer) -> tuple[dict[str, "nn.Linear"], dict[str, tuple[str, str]]]:
    """The ``nn.Linear`` modules holding the LoRA parameters, by module name, and parameter name ->
    (module name, ``weight``/``bias``); anything else is refused (the loop scores it)."""
    from torch import nn

    modules: dict[str, nn.Linear] = {}
    param_of: dict[str, tuple[str, str]] = {}
    for names in names_by_layer:
        for n in names:
            mod_name, attr = n.rsplit(".", 1)
            mod = model.get_submodule(mod_name)
            if not isinstance(mod, nn.Linear) or attr not in ("weight", "bias"):
                raise NotImplementedError(
                    f"vectorised Fisher supports LoRA nn.Linear weights/biases only, not {n!r} "
                    f"({type(mod).__name__}); use fisher_layer_scores_loop"
                )
            modules[mod_name] = mod
            param_of[n] = (mod_name, attr)
    return modules, param_of


def _add_squared_grads(calls, grads, bsz: int, param_of: dict[str, tuple[str, str]], sq_sum: dict[str, float]) -> None:
    """Add each sample's squared weight and bias gradients to ``sq_sum``: from the recorded
    (module, input ``x``, output) calls and the output gradients ``dz``, the per-sample weight
    gradient ``einsum('bto,bti->boi', dz, x)`` (calls of one module summed before squaring)."""
    import torch

    per_sample: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for (mod_name, x, _), dz in zip(calls, grads):
            if dz is None:
                continue
            x3 = x.reshape(bsz, -1, x.shape[-1]).to(dz.dtype)
            dz3 = dz.reshape(bsz, -1, dz.shape[-1])
            acc = per_sample.setdefault(mod_name, {})
            gw = torch.einsum("bto,bti->boi", dz3, x3)
            acc["weight"] = acc["weight"] + gw if "weight" in acc else gw
            gb = dz3.sum(dim=1)
            acc["bias"] = acc["bias"] + gb if "bias" in acc else gb
        for n, (mod_name, attr) in param_of.items():
            g = per_sample.get(mod_name, {}).get(attr)
            if g is not None:
                sq_sum[n] += float(g.double().pow(2).sum())


def fisher_layer_scores(
    model: nn.Module, layermap, batches: Iterable[Mapping[str, Any]], bucket_size: int = 16,
    log_likelihood: LogLikelihood = class_log_likelihoods,
) -> np.ndarray:
    """Per-layer empirical diagonal Fisher (length L), vectorised per-sample gradients.

    ``batches``: dicts of tensors the Hugging Face model accepts (``input_ids``,
    ``attention_mask``, ...) plus ``labels``. The model is scored in eval mode;
    its train/eval modes and ``requires_grad`` flags are restored afterwards, no
    hook is left behind and no ``.grad`` is written. ``bucket_size``: the most
    samples per forward pass after re-cutting right-padded batches into length
    buckets (on CPU, 16 short queries already fill the matrix units; a larger
    bucket mostly adds padding). ``log_likelihood``: the task's per-sample log-likelihood.
    """
    import torch

    names_by_layer, params = lora_params(model, layermap)
    modules, param_of = _lora_linears(model, names_by_layer)
    all_params = [params[n] for names in names_by_layer for n in names]
    device = _device(model)
    sq_sum = {n: 0.0 for n in param_of}  # float64 sums over samples of squared per-sample grads
    total = 0
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def make_hook(mod_name: str):
        def hook(module, args, output):
            calls.append((mod_name, args[0], output))

        return hook

    handles = []
    try:
        with scoring_mode(model, all_params):
            for mod_name, mod in modules.items():
                handles.append(mod.register_forward_hook(make_hook(mod_name)))
            pieces = (
                piece
                for batch in batches
                for piece in length_buckets(*split_batch(batch, device), max(1, int(bucket_size)))
            )
            for inputs, labels in pieces:
                calls.clear()
                with torch.enable_grad():
                    ll = log_likelihood(model, inputs, labels)
                    outs = [z for _, _, z in calls]
                    if not outs:
                        raise RuntimeError("no LoRA module ran in the forward pass (adapters merged or disabled?)")
                    grads = torch.autograd.grad(ll.sum(), outs, allow_unused=True)
                _add_squared_grads(calls, grads, labels.shape[0], param_of, sq_sum)
                calls.clear()
                total += labels.shape[0]
    finally:
        for h in handles:
            h.remove()
        calls.clear()
    if total == 0:
        raise ValueError("Fisher scores need at least one calibration sample")
    return np.array([sum(sq_sum[n] for n in names) / total for names in names_by_layer], dtype=float)


def fisher_layer_scores_loop(
    model: nn.Module, layermap, batches: Iterable[Mapping[str, Any]],
    log_likelihood: LogLikelihood = class_log_likelihoods,
) -> np.ndarray:
    """Slow reference of :func:`fisher_layer_scores`: one backward pass per sample."""
    import torch

    names_by_layer, params = lora_params(model, layermap)
    flat = [n for names in names_by_layer for n in names]
    plist = [params[n] for n in flat]
    device = _device(model)
    sq_sum = np.zeros(len(flat))
    total = 0
    with scoring_mode(model, plist):
        for batch in batches:
            inputs, labels = split_batch(batch, device)
            for i in range(labels.shape[0]):
                one = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
                with torch.enable_grad():
                    ll = log_likelihood(model, one, labels[i : i + 1])
                    grads = torch.autograd.grad(ll.sum(), plist, allow_unused=True)
                for j, g in enumerate(grads):
                    if g is not None:
                        sq_sum[j] += float(g.double().pow(2).sum())
                total += 1
    if total == 0:
        raise ValueError("Fisher scores need at least one calibration sample")
    per_param = dict(zip(flat, sq_sum / total))
    return np.array([sum(per_param[n] for n in names) for names in names_by_layer], dtype=float)
