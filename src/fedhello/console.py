"""What people see while something runs: the rich console, the one-line round summary,
and the ``fedhello`` logger's handler.

Every diagnostic of the library goes through ``logging.getLogger("fedhello")``;
the commands (``fedhello run``, ``sweep``, ``demo``, ``deploy-local``) attach
:func:`setup_logging`'s rich handler, so a library user sees nothing unless they
configure logging themselves.
"""

from __future__ import annotations

import logging

from rich.console import Console

LOGGER = "fedhello"


def make_console() -> Console:
    """The commands' console: stderr, no syntax highlighting, long lines wrapped softly."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleHandler(logging.Handler):
    """Log records as plain lines on a rich console, above any live progress bar; warnings
    in yellow, errors in red. Lines are never wrapped (they are read and grepped whole)."""

    STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        """Print one record on the console; a failure goes to ``handleError``, never raises."""
        try:
            self.console.print(self.format(record), style=self.STYLES.get(record.levelno), markup=False,
                               highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(console: Console, level: int = logging.INFO) -> logging.Handler:
    """Send the ``fedhello`` logger to ``console``, replacing a handler set here before."""
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if isinstance(h, ConsoleHandler):
            logger.removeHandler(h)
    handler = ConsoleHandler(console)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def round_line(rec: dict, rounds: int) -> str:
    """One round's summary: loss, validation and test accuracy.

    Rounds are numbered from 0 to ``rounds - 1`` everywhere (metrics.jsonl, summary.json,
    console, plots, TensorBoard, ``allocate``): the line says ``round t/last``.
    """

    def pct(x):
        return "  -  " if x is None else f"{100 * x:5.1f}"

    return (
        f"round {rec['round']:>3}/{rounds - 1}  loss {rec['train_loss']:.3f}  "
        f"val {pct(rec['val_accuracy'])}%  test {pct(rec['test_accuracy'])}%  "
        f"{rec['round_time_s']:.1f}s  clients {len(rec['clients'])}"
        + (f"  failed {len(rec['failed_clients'])}" if rec.get("failed_clients") else "")
    )


class RichProgress:
    """Progress bars with an ETA on the console for the phases of
    :mod:`fedhello.federation.progress` (a :class:`~fedhello.federation.progress.ProgressHook`).

    Shown only when ``console`` is a terminal and not ``quiet``; otherwise every
    call does nothing. Use it as a context manager around the run (the live display
    is stopped however the run ends); lines printed on the same console go above it.
    """

    def __init__(self, console: Console, quiet: bool = False):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.enabled = not quiet and console.is_terminal
        self.bars = Progress(
            SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
            disable=not self.enabled,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "RichProgress":
        if self.enabled:
            self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bars.stop()

    def start(self, phase: str, total: int | None, done: int = 0) -> None:
        """A bar for ``phase`` (replacing an earlier one of the same name)."""
        if not self.enabled:
            return
        self.end(phase)
        self.tasks[phase] = self.bars.add_task(phase, total=total, completed=done)

    def advance(self, phase: str, n: int = 1) -> None:
        """Move ``phase``'s bar by ``n``."""
        if self.enabled and phase in self.tasks:
            self.bars.advance(self.tasks[phase], n)

    def end(self, phase: str) -> None:
        """Remove ``phase``'s bar."""
        if self.enabled and phase in self.tasks:
            self.bars.remove_task(self.tasks.pop(phase))
