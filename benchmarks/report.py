"""``python -m benchmarks.report RESULT.json``: the figures of a bench.json as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.run import TARGETS, _fmt, _get, check_targets


def markdown(result: dict, source: str) -> str:
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.report RESULT.json", file=sys.stderr)
        return 2
    p = Path(argv[0])
    try:
        result = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        print(f"error: {p}: {err}", file=sys.stderr)
        return 2
    print(markdown(result, p.as_posix()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
