"""What a run writes besides its records: TensorBoard after every round; plots
and the PEFT adapter when it finishes. A failure here never loses the run: it is
logged and the run goes on (the records and the checkpoint are already written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedhello.report.tensorboard import TensorBoardLog, missing_note


class RunReporter:
    def __init__(self, run_dir: str | Path, log: Callable[[str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.log = log or (lambda msg: None)
        self.tb = TensorBoardLog(self.run_dir)
        self._tb_note = False

    def _warn(self, what: str, err: BaseException) -> None:
        self.log(f"{what} failed: {type(err).__name__}: {err}")

    def round(self, records: list[dict]) -> None:
        try:
            if not self.tb.update(records) and not self._tb_note:
                self._tb_note = True
                self.log(missing_note())
        except Exception as err:
            self._warn("TensorBoard scalars", err)

    def finish(self, exp, global_state, records: list[dict]) -> None:
        """At the end of a run: TensorBoard up to date, plots, the adapter export."""
        from fedhello.report.export import export_adapter
        from fedhello.report.plots import run_plots

        self.round(records)
        try:
            run_plots(self.run_dir)
        except Exception as err:
            self._warn("plots", err)
        try:
            export_adapter(exp.model, global_state, self.run_dir, exp.label_names, exp.cfg, exp.backbone.pooling)
        except Exception as err:
            self._warn("adapter export", err)

    def close(self) -> None:
        self.tb.close()

    def __del__(self) -> None:  # a run that raised: release the event file when the reporter goes
        try:
            self.tb.close()
        except Exception:
            pass
