"""What a run's reports write besides its records: TensorBoard after every round,
plots when it finishes (``run_experiment(reporter=RunReporter)``). A failure here
never loses the run: it is logged and the run goes on (the records and the
checkpoint are already written).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedhello.report.plots import run_plots, sweep_plots
from fedhello.report.table import collect, write_results
from fedhello.report.tensorboard import TensorBoardLog

log = logging.getLogger("fedhello")


class RunReporter:
    """TensorBoard scalars after every round, the run's plots at its end."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.tb = TensorBoardLog(self.run_dir)

    def _warn(self, what: str, err: BaseException) -> None:
        log.warning("%s failed: %s: %s", what, type(err).__name__, err)

    def round(self, records: list[dict]) -> None:
        """After a round: append the new records' TensorBoard scalars (a failure is logged)."""
        try:
            self.tb.update(records)
        except Exception as err:
            self._warn("TensorBoard scalars", err)

    def finish(self, records: list[dict]) -> None:
        """At the end of a run: TensorBoard up to date, then the plots."""
        self.round(records)
        try:
            run_plots(self.run_dir)
        except Exception as err:
            self._warn("plots", err)

    def close(self) -> None:
        """Close the TensorBoard event file."""
        self.tb.close()

    def __del__(self) -> None:  # a run that raised: release the event file when the reporter goes
        try:
            self.tb.close()
        except Exception:
            pass


def write_sweep_reports(out: str | Path, target: float | None = None) -> None:
    """After a sweep's cell: the results table, then the sweep plots (a plotting problem
    is logged and does not stop the sweep: the table is there)."""
    cells = collect(out)  # every cell's records, read once for the table and the plots
    write_results(out, target, cells)
    try:
        sweep_plots(out, cells)
    except Exception as err:
        log.warning("sweep plots not written: %s: %s", type(err).__name__, err)
