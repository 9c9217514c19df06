"""TensorBoard scalars of a run, written from its metrics records into ``RUNDIR/tb/``.

Tags (step = round, numbered from 0 as in metrics.jsonl): ``accuracy/test``, ``accuracy/val``,
``loss/train``, ``loss/test``, ``loss/val``, ``time/round_s``, ``upload/mb``
(client upload of the round, 1 MB = 1e6 bytes), ``upload/cumulative_mb``,
``clients/failed`` and ``train/lr``.

Resumable without duplicate steps: the first write of a process writes *all*
records so far into a fresh event file and deletes the event files of earlier
processes; later writes append only the new rounds. ``fedhello report``
rewrites the whole file the same way. Needs the ``tensorboard`` package (a
dependency of fedhello).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

TB = "tb"


def scalars(rec: dict) -> dict[str, float]:
    """The scalars of one round record."""
    out: dict[str, float] = {}
    for tag, key in (
        ("accuracy/test", "test_accuracy"),
        ("accuracy/val", "val_accuracy"),
        ("loss/train", "train_loss"),
        ("loss/test", "test_loss"),
        ("loss/val", "val_loss"),
        ("time/round_s", "round_time_s"),
        ("train/lr", "lr"),
    ):
        v = rec.get(key)
        if v is not None:
            out[tag] = float(v)
    out["upload/mb"] = sum(c.get("upload_bytes", 0) for c in rec.get("clients", [])) / 1e6
    out["clients/failed"] = float(len(rec.get("failed_clients") or []))
    return out


class TensorBoardLog:
    """Keeps ``RUNDIR/tb/`` equal to the records (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / TB
        self.writer = None
        self.written = 0
        self.cumulative = 0.0

    def update(self, records: list[dict]) -> None:
        """Write the records not written yet."""
        if self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            old = sorted(self.dir.glob("events.out.tfevents.*"))
            self.writer = SummaryWriter(log_dir=str(self.dir))
            self._write(records)
            for p in old:  # the new file holds every round: older files would duplicate steps
                p.unlink(missing_ok=True)
            return
        if len(records) < self.written:  # records replaced (should not happen): start over
            self.close()
            self.update(records)
            return
        self._write(records[self.written:])

    def _write(self, records: list[dict]) -> None:
        for rec in records:
            step = int(rec["round"])  # numbered from 0, as in metrics.jsonl
            vals = scalars(rec)
            self.cumulative += vals["upload/mb"]
            vals["upload/cumulative_mb"] = self.cumulative
            for tag, v in vals.items():
                self.writer.add_scalar(tag, v, step)
        self.written += len(records)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file; the next :meth:`update` writes every record into a fresh one."""
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.written = 0
        self.cumulative = 0.0


def write_tensorboard(run_dir: str | Path, records: list[dict]) -> None:
    """Rewrite ``RUNDIR/tb/`` from all records at once."""
    log = TensorBoardLog(run_dir)
    try:
        log.update(records)
    finally:
        log.close()
