"""Progress of long steps, reported to a hook the caller passes down.

The round loop and the in-process runner say where they are (a phase started
with how many steps, a step done, the phase over); what is shown, and whether
anything is, is the caller's (the commands draw rich progress bars with an ETA,
:class:`fedhello.console.RichProgress`). Lower floors never draw or print.

Phases: :data:`ROUNDS` (every round of the run), :data:`CLIENTS` (the clients of
one round), :data:`STATISTICS` (the class-statistics round before round 0),
:data:`EVALUATION` (one evaluation of the global model; no step count).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

ROUNDS = "rounds"
CLIENTS = "clients"
STATISTICS = "class statistics"
EVALUATION = "evaluation"


class ProgressHook(Protocol):
    """Told where a long step stands; must never raise into the run."""

    def start(self, phase: str, total: int | None, done: int = 0) -> None:
        """``phase`` begins: ``total`` steps (None: unknown), ``done`` of them already finished."""

    def advance(self, phase: str, n: int = 1) -> None:
        """``n`` more steps of ``phase`` are done."""

    def end(self, phase: str) -> None:
        """``phase`` is over."""


class NoProgress:
    """The hook that shows nothing (the default)."""

    def start(self, phase: str, total: int | None, done: int = 0) -> None:
        """Nothing."""

    def advance(self, phase: str, n: int = 1) -> None:
        """Nothing."""

    def end(self, phase: str) -> None:
        """Nothing."""


NO_PROGRESS = NoProgress()


@contextmanager
def phase(hook: ProgressHook, name: str, total: int | None, done: int = 0) -> Iterator[None]:
    """``hook.start`` ... ``hook.end`` around a block, the end also when it raises."""
    hook.start(name, total, done)
    try:
        yield
    finally:
        hook.end(name)
