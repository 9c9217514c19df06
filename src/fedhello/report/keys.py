"""``fedhello config show``: every config key with its value, default and description.

Read from the pydantic models of :mod:`fedhello.config` (their ``Field``
descriptions), so the listing cannot drift from what the config accepts.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fedhello.config import ExperimentConfig


def _section(field) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def config_keys(cfg: ExperimentConfig | None = None) -> Iterator[tuple[str, Any, Any, str]]:
    """(dotted key, value in ``cfg`` (the defaults when None), default, description) for every leaf key."""
    cfg = cfg if cfg is not None else ExperimentConfig()

    def walk(model: BaseModel, prefix: str):
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            sub = _section(field)
            if sub is not None:
                yield from walk(value, f"{prefix}{name}.")
                continue
            default = field.default if field.default is not PydanticUndefined else (
                field.default_factory() if field.default_factory else None)
            yield f"{prefix}{name}", value, default, field.description or ""

    yield from walk(cfg, "")


def _text(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def render_keys(cfg: ExperimentConfig | None = None) -> str:
    """One line per key: ``key = value  (default D)  description``; a value that differs from the default is starred."""
    rows = list(config_keys(cfg))
    width = max(len(k) for k, *_ in rows)
    lines = []
    for key, value, default, desc in rows:
        mark = "*" if value != default else " "
        dflt = "" if value == default else f"  (default {_text(default)})"
        lines.append(f"{mark} {key:<{width}} = {_text(value)}{dflt}  {desc}")
    return "\n".join(lines)
