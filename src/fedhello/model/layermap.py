"""LayerMap: which LoRA parameters belong to which transformer block.

Layers are discovered from parameter names, never hard-coded, and matched by
the exact block index parsed from the module path (``...layer.1.`` is block 1,
never block 10 or 11). The Fed-HeLLo authors' reference implementation
(arXiv:2506.12213) matched layers by substring, so freezing layer 1 also froze
layers 10 and 11.

Recognised block containers (the index follows the container name):
BERT/MiniLM/RoBERTa/DeBERTa ``encoder.layer.N``, ViT ``vit.layers.N`` (transformers 5),
DistilBERT ``transformer.layer.N``, decoder LMs ``model.layers.N``, GPT-2 style
``h.N``, and ``blocks.N``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch

from fedhello.errors import ConfigError

_BLOCK_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block)\.(\d+)\.")
_LORA_RE = re.compile(r"\.lora_(A|B)\.")


@dataclass(frozen=True)
class LayerMap:
    """Layer index -> LoRA parameter names, plus the task head's parameter names."""

    layers: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        """L, the number of transformer blocks that carry LoRA adapters."""
        return len(self.layers)

    @property
    def lora_names(self) -> list[str]:
        """Every LoRA parameter name, layer 0 first."""
        return [n for names in self.layers for n in names]

    @property
    def all_names(self) -> list[str]:
        """Every federated parameter name: the LoRA tensors, then the head."""
        return self.lora_names + list(self.head)

    def names_for(self, layers: Iterable[int], include_head: bool = True) -> list[str]:
        """The LoRA parameter names of ``layers`` (layer order, each layer once), then the head's.

        ``include_head=False`` leaves the head out.
        """
        out: list[str] = []
        for layer in sorted(set(int(x) for x in layers)):
            out.extend(self.layers[layer])
        if include_head:
            out.extend(self.head)
        return out

    @classmethod
    def from_model(cls, model: torch.nn.Module, num_hidden_layers: int | None = None) -> "LayerMap":
        """The layer map of a PEFT model, from its parameter names.

        LoRA tensors (``.lora_A.``/``.lora_B.``) are grouped by the block index in
        their module path; ``modules_to_save`` parameters form the head. Raises
        :class:`~fedhello.errors.ConfigError` when a LoRA tensor has no recognised block
        index, when there is no LoRA tensor at all, or when the blocks carrying LoRA are
        not exactly ``0 .. n-1`` (``n``: ``num_hidden_layers``, default the number of
        blocks found).
        """
        by_layer: dict[int, list[str]] = {}
        head: list[str] = []
        unmatched: list[str] = []
        for name, _ in model.named_parameters():
            if _LORA_RE.search(name):
                m = _BLOCK_RE.search(name)
                if m is None:
                    unmatched.append(name)
                    continue
                by_layer.setdefault(int(m.group(1)), []).append(name)
            elif ".modules_to_save." in name:
                head.append(name)
        if unmatched:
            raise ConfigError(
                "unknown architecture: cannot find the transformer block index of LoRA parameters "
                f"such as {unmatched[0]!r} (expected a module path like 'encoder.layer.N' or 'model.layers.N')"
            )
        if not by_layer:
            paths = sorted({n.rsplit(".", 1)[0] for n, _ in model.named_parameters()})[:8]
            raise ConfigError(
                "no LoRA parameters found: lora.target_modules matched no module; "
                f"module paths seen include {paths}"
            )
        indices = sorted(by_layer)
        n = num_hidden_layers if num_hidden_layers is not None else len(indices)
        if indices != list(range(n)):
            raise ConfigError(
                f"LoRA adapters found on blocks {indices}, expected every block 0..{n - 1}: "
                "check lora.target_modules"
            )
        return cls(tuple(tuple(by_layer[i]) for i in indices), tuple(head))
