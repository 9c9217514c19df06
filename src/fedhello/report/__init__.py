"""Results people look at: sweeps over (strategy, partition, seed), the results
table, plots, TensorBoard scalars and the exported PEFT adapter.

- :mod:`fedhello.report.table`: a sweep's results table (``results.csv`` /
  ``results.md``) computed from the cells' run directories alone.
- :mod:`fedhello.report.plots`: PNG plots of a run directory and of a sweep.
- :mod:`fedhello.report.tensorboard`: TensorBoard scalars written from the records.
- :mod:`fedhello.report.export`: ``fedhello predict`` with a run's exported adapter.
- :mod:`fedhello.report.hooks`: the reports a run or a sweep writes as it goes.

This layer reads run directories; it never runs an experiment.
"""

from __future__ import annotations

from pathlib import Path


def report(path: str | Path, adapter: bool = False) -> list[Path]:
    """Regenerate everything derivable from a run or sweep directory; returns the files written.

    Run directory: plots and TensorBoard scalars (and, with ``adapter``, the PEFT
    adapter from ``checkpoint.pt``). Sweep directory: results.csv/md, sweep plots,
    and the same for every cell.
    """
    from fedhello.errors import FedHelloError
    from fedhello.report.plots import is_run_dir, run_plots, sweep_plots
    from fedhello.report.table import RESULTS_CSV, RESULTS_MD, collect, write_results
    from fedhello.run.sweep import SWEEP
    from fedhello.report.tensorboard import TB, write_tensorboard
    from fedhello.run.rundir import RunDir

    path = Path(path)
    if not path.is_dir():
        raise FedHelloError(f"{path}: no such directory")

    def one_run(run: Path, records: list[dict]) -> list[Path]:
        files = run_plots(run, records)
        write_tensorboard(run, records)
        files.append(run / TB)
        if adapter:
            files.append(export_from_checkpoint(run))
        return files

    if is_run_dir(path):
        return one_run(path, RunDir(path).read_metrics())
    cells = collect(path)
    if not cells and not (path / SWEEP).is_file():
        raise FedHelloError(
            f"{path}: neither a run directory (config.yaml + metrics.jsonl) nor a sweep directory "
            "(<partition>/<strategy>/seed<S>/ run directories)"
        )
    files: list[Path] = []
    for c in cells:
        if is_run_dir(c.path):
            files += one_run(c.path, c.records)  # the records collect() has read
    write_results(path, cells=cells)  # the records read above serve the table and the plots
    files += [path / RESULTS_CSV, path / RESULTS_MD]
    files += sweep_plots(path, cells)
    return files


def export_from_checkpoint(run: str | Path) -> Path:
    """Re-export ``run/adapter`` from the global state in ``run/checkpoint.pt``."""
    from fedhello.config import build_config
    from fedhello.errors import FedHelloError
    from fedhello.model import build_backbone, get_state
    from fedhello.model.adapter import export_adapter
    from fedhello.model.state import check_state
    from fedhello.run.rundir import CHECKPOINT, RunDir, write_error

    rd = RunDir(run)
    ckpt = rd.load_checkpoint()
    if ckpt is None:
        raise FedHelloError(f"{rd.file('checkpoint.pt')}: no checkpoint to export an adapter from")
    cfg = build_config(rd.read_config_dict())
    labels = rd.read_json("labels.json")
    backbone = build_backbone(cfg, len(labels), "cpu")
    check_state(ckpt["global_state"], get_state(backbone.model, backbone.layermap.all_names), rd.file(CHECKPOINT))
    summary = rd.read_json("summary.json") if rd.file("summary.json").is_file() else None
    try:
        return export_adapter(backbone.model, ckpt["global_state"], rd.path, labels, cfg, backbone.pooling,
                              tokenizer=backbone.tokenizer or backbone.image_processor, summary=summary)
    except OSError as err:  # a full disk, a read-only run directory: one line, nothing half-written
        raise write_error(rd.file("adapter"), err) from None
