"""PNG plots of a run directory and of a sweep directory, from the files alone.

Run directory (``RUNDIR/plots/``):

- ``accuracy.png``: validation/test accuracy and training loss per round;
- ``layers_heatmap.png``: layers x rounds, how many clients trained each layer
  (the allocation pattern over time; layer 0 nearest the input, at the bottom);
- ``layer_distribution.png``: the collective distribution, each layer's share of
  all client layer-trainings over the run (the geometric shape), with the
  strategy's mean sampling probabilities where it records them;
- ``fim_scores.png``: per-layer Fisher scores (share of the round's total) on the
  rounds they were computed, when the strategy uses them;
- ``group_costs.png``: per resource group (:func:`group_costs`), training time
  per sample (ms; each client record's ``train_time_s / num_samples``, averaged
  over the group's client-rounds, so that a client with more data does not look
  slower for it), upload per client-round (MB), and peak accelerator memory per
  client-round (MB) where the records have ``peak_memory_bytes`` (GPU runs
  only; the panel says "not recorded" otherwise). The fields are those of
  ``ClientRecord`` in ``fedhello/federation/records.py``.

Sweep directory (``DIR/plots/``): ``accuracy_<partition>.png``, mean test
accuracy per round over seeds for each strategy (band: ± one standard deviation).

Rounds are numbered from 0 on every axis, as in metrics.jsonl. Figures use matplotlib's Agg canvas
(no display needed) and are written atomically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedhello.report.table import collect, manifest, order_by
from fedhello.run.rundir import METRICS, RunDir, atomic_write_bytes

PLOTS = "plots"


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(**kw)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _read_json(p: Path) -> Any:
    return json.loads(p.read_text()) if p.is_file() else None


def _title(run: Path, cfg: dict) -> str:
    strat = (cfg.get("strategy") or {}).get("name", "?")
    part = cfg.get("partition") or {}
    pname = part.get("name", "?")
    if pname == "pathological":
        pname = f"pat-{part.get('classes_per_client')}"
    elif pname == "dirichlet":
        pname = f"dir-{part.get('alpha')}"
    return f"{strat}, {pname}, seed {cfg.get('seed')}"


def layer_counts(records: list[dict], num_layers: int) -> np.ndarray:
    """counts[l, t]: clients that trained layer l in round t (successful updates only)."""
    counts = np.zeros((num_layers, len(records)), dtype=np.int64)
    for t, r in enumerate(records):
        for c in r.get("clients", []):
            for layer in c.get("layers", []):
                if 0 <= layer < num_layers:
                    counts[layer, t] += 1
    return counts


def _num_layers(run: Path, records: list[dict]) -> int:
    clients = _read_json(run / "clients.json") or {}
    if clients.get("num_layers"):
        return int(clients["num_layers"])
    seen = [layer for r in records for c in r.get("clients", []) for layer in c.get("layers", [])]
    return max(seen) + 1 if seen else 0


def run_plots(run_dir: str | Path, records: list[dict] | None = None) -> list[Path]:
    """Write every plot of one run directory; returns the files written.

    ``records``: the run's metrics.jsonl when the caller has already read it.
    """
    run = Path(run_dir)
    rd = RunDir(run)
    if records is None:
        records = rd.read_metrics()
    if not records:
        return []
    cfg = rd.read_config_dict() if rd.has_run() else {}
    clients = _read_json(run / "clients.json") or {}
    budgets = clients.get("budgets") or (cfg.get("clients") or {}).get("budgets") or []
    out = run / PLOTS
    title = _title(run, cfg)
    written = [_accuracy_plot(records, title, out / "accuracy.png")]
    n_layers = _num_layers(run, records)
    if n_layers:
        written += _layer_plots(records, n_layers, title, out)
    n_groups = len(budgets) or 1 + max((c.get("group", 0) for r in records for c in r.get("clients", [])), default=0)
    written.append(_group_cost_plot(records, budgets, n_groups, title, out / "group_costs.png"))
    limits = limit_plot(records, n_groups, title, out / "limits.png")
    if limits is not None:
        written.append(limits)
    return written


def _accuracy_plot(records: list[dict], title: str, path: Path) -> Path:
    """Validation and test accuracy, and the clients' training loss, per round."""
    from matplotlib.ticker import MaxNLocator

    rounds = np.array([r["round"] for r in records])  # numbered from 0, as in metrics.jsonl
    fig = _figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for a in (ax1, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    for key, label in (("val_accuracy", "validation"), ("test_accuracy", "test")):
        pts = [(r["round"], 100 * r[key]) for r in records if r.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            ax1.plot(x, y, marker="o", ms=3, label=label)
    ax1.set(xlabel="round", ylabel="accuracy (%)", title="global model accuracy")
    ax1.legend()
    ax1.grid(alpha=0.3)
    loss = [r.get("train_loss") for r in records]
    ax2.plot(rounds, [np.nan if v is None else v for v in loss], color="C2")
    ax2.set(xlabel="round", ylabel="train loss", title="client training loss (sample-weighted)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _layer_plots(records: list[dict], n_layers: int, title: str, out: Path) -> list[Path]:
    """The layers x rounds heatmap, the collective distribution and (where recorded) the Fisher scores."""
    from matplotlib.ticker import MaxNLocator

    written = []
    counts = layer_counts(records, n_layers)
    # heatmap: layers x rounds
    fig = _figure(figsize=(max(5.0, min(14.0, 2 + 0.12 * len(records))), 1.5 + 0.35 * n_layers))
    ax = fig.subplots()
    im = ax.imshow(counts, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(-0.5, len(records) - 0.5, -0.5, n_layers - 0.5))
    ax.set(xlabel="round", ylabel="layer (0 = nearest the input)", title=f"clients training each layer: {title}")
    ax.set_yticks(range(n_layers))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label="clients")
    written.append(_save(fig, out / "layers_heatmap.png"))

    # collective distribution
    total = counts.sum(axis=1)
    fig = _figure(figsize=(max(4.5, 0.45 * n_layers + 2), 3.6))
    ax = fig.subplots()
    share = total / total.sum() if total.sum() else total.astype(float)
    ax.bar(np.arange(n_layers), 100 * share, color="C0", label="share of client layer-trainings")
    probs = [r["layer_probs"] for r in records if r.get("layer_probs") and len(r["layer_probs"]) == n_layers]
    if probs:
        ax.plot(np.arange(n_layers), 100 * np.mean(probs, axis=0), "o-", color="C3", label="mean layer_probs")
    ax.set(xlabel="layer (0 = nearest the input)", ylabel="% of layer-trainings",
           title=f"collective distribution: {title}")
    ax.set_xticks(range(n_layers))
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "layer_distribution.png"))

    fim = _fim_plot(records, n_layers, title, out / "fim_scores.png")
    return written + ([fim] if fim is not None else [])


def _fim_plot(records: list[dict], n_layers: int, title: str, path: Path) -> Path | None:
    """Each layer's share of the round's Fisher scores, on the rounds they were computed (None: never)."""
    fim = [(r["round"], np.asarray(r["fim_scores"], dtype=float)) for r in records
           if r.get("fim_scores") is not None and len(r["fim_scores"]) == n_layers]
    if not fim:
        return None
    fig = _figure(figsize=(7, 3.8))
    ax = fig.subplots()
    x = [t for t, _ in fim]
    shares = np.array([s / s.sum() if s.sum() > 0 else s for _, s in fim])
    cmap = __import__("matplotlib").colormaps["viridis"]
    for layer in range(n_layers):
        ax.plot(x, 100 * shares[:, layer], marker="o", ms=3, color=cmap(layer / max(1, n_layers - 1)),
                label=f"layer {layer}")
    ax.set(xlabel="round", ylabel="% of the round's total FIM", title=f"Fisher scores per layer: {title}")
    ax.legend(fontsize=7, ncol=2 if n_layers > 6 else 1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _group_cost_plot(records: list[dict], budgets: list, n_groups: int, title: str, path: Path) -> Path:
    """Per resource group: training time per sample, upload and peak memory per client-round."""
    costs = group_costs(records, n_groups)
    panels = [("ms_per_sample", "training time per sample (ms)", 1.0),
              ("upload_bytes", "upload per client-round (MB)", 1e-6),
              ("peak_memory_bytes", "peak memory per client-round (MB)", 1e-6)]
    fig = _figure(figsize=(3.3 * len(panels), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    labels = [f"g{g}" + (f" ({budgets[g]} layers)" if g < len(budgets) else "") for g in range(n_groups)]
    for ax, (key, label, scale) in zip(axes, panels):
        ax.set_title(label, fontsize=9)
        vals = [c[key] for c in costs]
        if all(v is None for v in vals):
            ax.set_axis_off()
            ax.text(0.5, 0.5, "not recorded" + ("\n(GPU runs only)" if key == "peak_memory_bytes" else ""),
                    ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
            continue
        ax.bar(labels, [0.0 if v is None else scale * v for v in vals], color=[f"C{g}" for g in range(n_groups)])
        for i, (v, c) in enumerate(zip(vals, costs)):
            if v is None:
                ax.text(i, 0, "not recorded" if c["client_rounds"] else "no client-rounds", ha="center",
                        va="bottom", rotation=90, fontsize=7, color="0.4")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"cost per resource group: {title}")
    return _save(fig, path)


# (record key of the limit, of the worst-case bound, of the prediction, of the measure, panel title, scale);
# the measured time is on the profile's clock (measured_time)
_LIMIT_PANELS = (
    ("memory_limit_bytes", "bound_memory_bytes", "predicted_memory_bytes", "train_memory_bytes",
     "training memory (MB)", 1e-6),
    ("time_limit_s", "bound_time_s", "predicted_time_s", "measured_time_s",
     "training time per round (s, on the profile's clock)", 1.0),
)


def measured_time(c: dict) -> float | None:
    """A client record's measured training time on the clock its prediction is on
    (``predicted_time_clock``): ``train_cpu_time_s`` for ``cpu`` (a CPU profile times CPU
    seconds), ``train_time_s`` otherwise."""
    v = c.get("train_cpu_time_s" if c.get("predicted_time_clock") == "cpu" else "train_time_s")
    return None if v is None else float(v)


def limit_costs(records: list[dict], n_groups: int) -> list[dict[str, Any]]:
    """Per resource group, for memory and time: the declared limit and the largest worst-case bound,
    predicted and measured cost over its client-rounds (None where not recorded): keys are the record
    keys of :data:`_LIMIT_PANELS` (``memory_limit_bytes``, ``bound_memory_bytes``, ``predicted_memory_bytes``,
    ``train_memory_bytes``, ...), the measured time as ``measured_time_s`` (:func:`measured_time`)."""
    out = []
    for g in range(n_groups):
        cs = [c for r in records for c in r.get("clients", []) if c.get("group") == g]
        row: dict[str, Any] = {"client_rounds": len(cs)}
        for keys in _LIMIT_PANELS:
            for k in keys[:4]:
                vals = [measured_time(c) if k == "measured_time_s" else c.get(k) for c in cs]
                vals = [float(v) for v in vals if v is not None]
                row[k] = max(vals) if vals else None
        out.append(row)
    return out


def limit_plot(records: list[dict], n_groups: int, title: str, path: Path) -> Path | None:
    """limits.png: per group, the declared limit (black bar) against the largest worst-case bound (what
    the limit is checked with), predicted (from the batches trained) and measured cost, for memory and
    time (on the profile's clock); None (nothing written) when no client record carries a prediction."""
    if not any(c.get("predicted_memory_bytes") is not None for r in records for c in r.get("clients", [])):
        return None
    rows = limit_costs(records, n_groups)
    fig = _figure(figsize=(4.2 * len(_LIMIT_PANELS), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(_LIMIT_PANELS)))
    x = np.arange(n_groups)
    for ax, (lim, bound, pred, meas, label, scale) in zip(axes, _LIMIT_PANELS):
        bars = ((bound, "bound (max)", "C2"), (pred, "predicted (max)", "C0"), (meas, "measured (max)", "C1"))
        for i, (key, name, color) in enumerate(bars):
            vals = [np.nan if r[key] is None else scale * r[key] for r in rows]
            ax.bar(x + (i - 1) * 0.27, vals, width=0.25, color=color, label=name)
        for g, r in enumerate(rows):
            if r[lim] is not None:
                ax.hlines(scale * r[lim], g - 0.45, g + 0.45, colors="k", linewidth=2,
                          label="declared limit" if g == next(i for i, q in enumerate(rows) if q[lim] is not None)
                          else None)
        ax.set_xticks(x, [f"g{g}" for g in range(n_groups)])
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"declared limits, worst-case bound, predicted and measured cost per group: {title}")
    return _save(fig, path)


def group_costs(records: list[dict], n_groups: int) -> list[dict[str, Any]]:
    """What a client-round of each resource group costs, from the client records of ``records``.

    One dict per group (index = group): ``client_rounds`` (its client records),
    ``ms_per_sample`` (the mean over its client records of ``1000 * train_time_s /
    num_samples``: time per sample, which does not grow with a client's data size
    as time per client-round does), ``upload_bytes`` (mean per client-round) and
    ``peak_memory_bytes`` (mean per client-round). A figure is None where no record
    of the group has it (``peak_memory_bytes``: GPU runs only).
    """
    out = []
    for g in range(n_groups):
        cs = [c for r in records for c in r.get("clients", []) if c.get("group") == g]
        per_sample = [1000.0 * float(c["train_time_s"]) / c["num_samples"] for c in cs
                      if c.get("train_time_s") is not None and c.get("num_samples")]
        out.append({
            "client_rounds": len(cs),
            "ms_per_sample": _mean(per_sample),
            "upload_bytes": _mean([c["upload_bytes"] for c in cs if c.get("upload_bytes") is not None]),
            "peak_memory_bytes": _mean([c["peak_memory_bytes"] for c in cs if c.get("peak_memory_bytes") is not None]),
        })
    return out


def _mean(xs: list) -> float | None:
    return float(np.mean([float(x) for x in xs])) if xs else None


def sweep_plots(sweep_dir: str | Path, cells: list | None = None) -> list[Path]:
    """Mean test accuracy per round over seeds, one figure per partition, every strategy on it.

    ``cells``: :func:`collect` of ``sweep_dir`` when the caller has already read it.
    """
    from matplotlib.ticker import MaxNLocator

    out = Path(sweep_dir)
    man = manifest(out)
    if cells is None:
        cells = collect(out)
    written = []
    parts = order_by(sorted({c.cell.partition for c in cells}), man.get("partitions"))
    strats = order_by(sorted({c.cell.strategy for c in cells}), man.get("strategies"))
    for part in parts:
        fig = _figure(figsize=(7, 4.2))
        ax = fig.subplots()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn = False
        for i, strat in enumerate(strats):
            curves = []
            for c in cells:
                if c.cell.partition == part and c.cell.strategy == strat:
                    pts = {r["round"]: 100 * r["test_accuracy"] for r in c.records
                           if r.get("test_accuracy") is not None}
                    if pts:
                        curves.append(pts)
            if not curves:
                continue
            xs = sorted(set().union(*curves))
            ys = [[cv[x] for cv in curves if x in cv] for x in xs]
            mean = np.array([np.mean(y) for y in ys])
            std = np.array([np.std(y, ddof=1) if len(y) > 1 else 0.0 for y in ys])
            seeds = f"{len(curves)} seed{'s' if len(curves) != 1 else ''}"
            ax.plot(xs, mean, marker="o", ms=2.5, color=f"C{i % 10}", label=f"{strat} ({seeds})")
            ax.fill_between(xs, mean - std, mean + std, color=f"C{i % 10}", alpha=0.15, linewidth=0)
            drawn = True
        if not drawn:
            continue
        ax.set(xlabel="round", ylabel="test accuracy (%)", title=f"test accuracy per round: {part}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / PLOTS / f"accuracy_{part}.png"))
    return written


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run: its metrics.jsonl and config.yaml."""
    return (path / METRICS).is_file() and (path / "config.yaml").is_file()


def compare_runs(runs: dict[str, str | Path], path: str | Path, before: float | None = None) -> Path:
    """One figure of several runs side by side: test accuracy per round (left) and cumulative upload (right).

    ``runs`` maps a label (the strategy) to its run directory; ``before``, the test
    accuracy before fine-tuning, is drawn as a dashed line. Written to ``path`` (PNG).
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for i, (label, run) in enumerate(runs.items()):
        records = RunDir(run).read_metrics()
        pts = [(r["round"], 100 * r["test_accuracy"]) for r in records if r.get("test_accuracy") is not None]
        if pts:
            x, y = zip(*pts)
            ax1.plot(x, y, marker="o", ms=3, color=f"C{i}", label=label)
        up = np.cumsum([sum(c["upload_bytes"] for c in r["clients"]) / 1e6 for r in records])
        ax2.plot([r["round"] for r in records], up, marker="o", ms=3, color=f"C{i}", label=label)
    if before is not None:
        ax1.axhline(100 * before, color="grey", ls="--", lw=1, label="before fine-tuning")
    ax1.set(xlabel="round", ylabel="test accuracy (%)", title="global model test accuracy")
    ax2.set(xlabel="round", ylabel="upload (MB, cumulative)", title="client upload")
    for a in (ax1, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        a.legend()
    return _save(fig, Path(path))
