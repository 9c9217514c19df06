"""A bench.json's figures against their targets: the plain table ``fedhello bench`` prints and
the Markdown table ``fedhello bench-report RESULT.json`` prints (BENCHMARKS.md's tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from fedhello.errors import FedHelloError

# figure -> (target text, check on the value or None)
TARGETS: dict[str, tuple[str, Callable[[float], bool] | None]] = {
    "engine_overhead_ratio": ("<= 1.10", lambda v: v <= 1.10),
    "freeze_time_ratio.top_half": ("<= 0.75", lambda v: v <= 0.75),
    "freeze_time_ratio.bottom_half": ("(context)", None),
    "freeze_time_ratio.bottleneck": ("(context)", None),
    "freeze_time_ratio.lr0_all": ("~1 (no saving)", lambda v: v >= 0.9),
    "freeze_peak_memory_ratio.top_half": ("< bottom_half", None),
    "freeze_peak_memory_ratio.bottom_half": ("~1", None),
    "freeze_peak_memory_ratio.bottleneck": ("~1 (trains layer 0)", None),
    "freeze_peak_memory_ratio.lr0_all": ("~1 (no saving)", lambda v: v >= 0.9),
    "fim_speedup": (">= 2 (CPU), >= 10 (GPU)", None),
    "fim_max_rel_error": ("<= 1e-5", lambda v: v <= 1e-5),
    "length_grouping_speedup": (">= 1.5", lambda v: v >= 1.5),
}


def _get(result: dict, dotted: str):
    cur: Any = result
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def check_targets(result: dict) -> dict[str, Any]:
    """Which figures of ``result`` meet their target (:data:`TARGETS`); figures absent are left out.

    ``fim_speedup`` is held to 10 on CUDA and 2 elsewhere, and the top half's peak
    memory ratio to below the bottom half's.
    """
    out: dict[str, Any] = {}
    for key, (_, ok) in TARGETS.items():
        v = _get(result, key)
        if v is None or ok is None:
            continue
        out[key] = bool(ok(v))
    fim_ok = result.get("fim_speedup")
    if fim_ok is not None:
        need = 10.0 if result["machine"]["device"] == "cuda" else 2.0
        out["fim_speedup"] = fim_ok >= need
    mem = result.get("freeze_peak_memory_ratio")
    if mem:
        out["freeze_peak_memory_ratio.top_half"] = mem["top_half"] < mem["bottom_half"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return str(v)


def table(result: dict) -> str:
    """The plain-text table ``fedhello bench`` prints: figure, value, target, met.

    Then the upload per group, the scale rows, the grouping accuracy and a line on
    the machine and settings.
    """
    rows = [("figure", "value", "target", "met")]
    met = result.get("targets_met", {})
    for key, (target, _) in TARGETS.items():
        v = _get(result, key)
        if v is None:
            continue
        rows.append((key, _fmt(v), target, {True: "yes", False: "NO"}.get(met.get(key), "-")))
    for g, b in (result.get("upload_bytes_per_group") or {}).items():
        rows.append((f"upload_bytes_per_group.{g}", str(b), "<= fedit" if g != "fedit" else "", "-"))
    for r in result.get("scale") or []:
        rows.append((f"scale.{r['clients']}_clients", f"{r['rss_mb']:.0f} MB, {r['round_time_s']:.2f} s/round", "flat", "-"))
    acc = result.get("length_grouping_accuracy")
    if acc:
        rows.append(("grouping accuracy (grouped / shuffled / shuffled seed 1)",
                     f"{acc['grouped']:.3f} / {acc['shuffled']:.3f} / {acc['shuffled_seed1']:.3f}", "within noise", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    m = result["machine"]
    lines.append("")
    lines.append(f"machine: {m['device_name']} ({m['device']}), {m['cpu_count']} CPUs, torch {m['torch']}, "
                 f"{m['torch_threads']} threads; size {result['settings']['size']}; data {result['data']}")
    return "\n".join(lines)


def markdown(result: dict, source: str) -> str:
    """The figures of ``result`` as BENCHMARKS.md's Markdown table, targets checked again.

    ``source`` (the bench.json's path) is named in the closing line on the machine.
    """
    met = check_targets(result)
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for key, (target, _) in TARGETS.items():
        v = _get(result, key)
        if v is None:
            continue
        lines.append(f"| `{key}` | {_fmt(v)} | {target} | {({True: 'yes', False: '**no**'}).get(met.get(key), '-')} |")
    up = result.get("upload_bytes_per_group") or {}
    fedit = up.get("fedit")
    for g in (result.get("communication") or {}).get("groups", []):
        lines.append(
            f"| `upload_bytes_per_group.{g['group']}` (budget {g['budget']}) | {g['upload_bytes']:,} B "
            f"({g['upload_vs_fedit']:.2f}x FedIT) | <= FedIT | {'yes' if fedit and g['upload_bytes'] <= fedit else '-'} |"
        )
    if fedit:
        dl = result["communication"]["fedit"]["download_bytes"]
        lines.append(f"| `upload_bytes_per_group.fedit` | {fedit:,} B (download {dl:,} B for every client) | | |")
    for r in result.get("scale") or []:
        lines.append(
            f"| `scale` {r['clients']:,} clients | peak RSS {r['rss_mb']:.0f} MB, {r['round_time_s']:.2f} s/round "
            f"(partition indices {r['partition_index_bytes'] / 1024:.0f} KiB) | flat in clients | - |"
        )
    acc = result.get("length_grouping_accuracy")
    if acc:
        lines.append(
            f"| test accuracy grouped / shuffled / shuffled seed 1 | {100 * acc['grouped']:.1f}% / "
            f"{100 * acc['shuffled']:.1f}% / {100 * acc['shuffled_seed1']:.1f}% | within noise | - |"
        )
    m = result["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['device_name']} ({m['device']}), {m['cpu_count']} CPUs, {m['torch_threads']} torch thread(s), "
        f"torch {m['torch']}, Python {m['python']}, load average at start {m.get('loadavg_at_start')}; "
        f"size `{result['settings']['size']}`, data: {result['data']}; source `{source}`."
    )
    return "\n".join(lines)


def load_result(path: str | Path) -> dict:
    """A bench.json, or a FedHelloError naming the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise FedHelloError(f"{p}: {err}") from None
