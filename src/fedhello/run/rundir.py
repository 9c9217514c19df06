"""The run directory contract, written atomically.

```
DIR/config.yaml      the resolved config
DIR/metrics.jsonl    one JSON object per round
DIR/summary.json     the run's result (written when the last round is done)
DIR/checkpoint.pt    global state + strategy state + metrics after the last finished round
DIR/partition.json   per-client indices and statistics; DIR/clients.json groups; DIR/labels.json
DIR/data.json        rows kept and dropped, and the data's fingerprint (checked on resume)
DIR/.lock            held (flock) by the process running in DIR
```
Every file is written to a temporary name beside it and renamed into place, so
a killed run never leaves a truncated file (leftover temporary files are removed
when a run opens the directory). The checkpoint holds the metrics records too:
on resume, metrics.jsonl is rewritten from it, so the two never disagree.

The checkpoint holds only tensors and plain data (dicts, lists, numbers,
strings, None) and is read with ``torch.load(weights_only=True)``: a file
holding anything else (a pickled object, which could run code) is refused.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from fedhello.errors import FedHelloError
from fedhello.federation.records import to_json
from fedhello.federation.server import check_checkpoint

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
DATA = "data.json"
LOCK = ".lock"


def write_error(path: str | Path, err: OSError) -> FedHelloError:
    """A one-line error for a file or folder that cannot be written (read-only, full disk, ...)."""
    why = err.strerror or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        why += " (free some space, then run the same command again)"
    return FedHelloError(f"cannot write {path}: {why}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: setting the umask to read it is not thread-safe


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsynced, renamed.

    Creates the parent folders. A file that cannot be written raises a one-line
    :class:`~fedhello.errors.FedHelloError` (:func:`write_error`); the temporary
    file never stays behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        # mkstemp makes the file owner-only; give it the mode any other new file gets
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` as UTF-8, written atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as strict, indented JSON (:func:`~fedhello.federation.records.to_json`).

    Written atomically (:func:`atomic_write_bytes`).
    """
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists.

    What a checkpoint may hold under ``torch.load(weights_only=True)``: tensors,
    dicts, lists, tuples, numbers, strings, None. Tensors are kept as they are;
    non-finite floats too (unlike :func:`~fedhello.federation.records.to_json`).
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    for kind in (bool, int, float, str):  # subclasses (numpy's float64 is a float) -> the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return (list if isinstance(obj, list) else tuple)(plain(v) for v in obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays
        return plain(obj.tolist())
    raise TypeError(f"a checkpoint holds only tensors and plain data, not {type(obj).__name__}")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` of ``obj`` (made :func:`plain`), written atomically.

    Serialized in memory first: a full disk is then an OSError of our own write
    (one clear error line), not a failure inside torch's writer.
    """
    buf = io.BytesIO()
    torch.save(plain(obj), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def _is_leftover(p: Path) -> bool:
    """A file only a killed writer leaves: a temporary file or an adapter staging folder."""
    return p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".adapter."))


class RunDir:
    """A run directory (see the module docstring): its files, its lock, its checkpoint."""
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def file(self, name: str) -> Path:
        """The path of ``name`` in the directory."""
        return self.path / name

    # -- the directory itself ---------------------------------------------------
    def foreign_entries(self) -> list[Path]:
        """Entries that are neither the lock nor a killed writer's leftovers."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name != LOCK and not _is_leftover(p))

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the directory's lock (creating the directory) for the duration of a run.

        A second process asking for it gets ``... is in use by another run (pid N)``.
        The lock is an ``flock`` on ``DIR/.lock``: the system releases it when the
        process ends, however it ends, so a killed run never leaves it held.
        """
        import fcntl

        lock = self.file(LOCK)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise write_error(lock, err) from None
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FedHelloError(f"--out {self.path} is in use by another run (pid {pid})") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            yield self
        finally:
            self._lock_fd = None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # releases the flock

    def remove_leftovers(self) -> list[str]:
        """Delete temporary files and staging folders of killed writers; returns their names."""
        gone = []
        for p in sorted(self.path.iterdir()) if self.path.is_dir() else []:
            if _is_leftover(p):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone

    def clear(self) -> None:
        """Remove every file and folder of the run in the directory (all but the lock).

        config.yaml goes last: a clear killed halfway still leaves a run directory
        (which ``--overwrite`` clears again), never a folder of orphaned files.
        """
        entries = sorted(self.path.iterdir(), key=lambda p: p.name == CONFIG)
        for p in entries:
            if p.name == LOCK:
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except OSError as err:
                raise FedHelloError(f"--overwrite: cannot remove {p}: {err.strerror or err}") from None

    # -- config -------------------------------------------------------------
    def has_run(self) -> bool:
        """Whether the directory holds a run (its config.yaml)."""
        return self.file(CONFIG).is_file()

    def read_config_dict(self) -> dict:
        """The saved config.yaml as a mapping (not validated).

        Raises :class:`~fedhello.errors.FedHelloError` when it is missing, not valid
        YAML or not a mapping.
        """
        p = self.file(CONFIG)
        if not p.is_file():
            raise FedHelloError(f"{p}: no run to resume here (config.yaml missing)")
        try:
            raw = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise FedHelloError(f"{p}: not a readable run config, not valid YAML{where}") from None
        if raw is not None and not isinstance(raw, dict):
            raise FedHelloError(f"{p}: not a run config (it must hold a mapping of keys)")
        return raw or {}

    def write_config(self, cfg_dict: dict) -> None:
        """Write config.yaml (atomically)."""
        atomic_write_text(self.file(CONFIG), yaml.safe_dump(cfg_dict, sort_keys=False))

    # -- metrics / summary ----------------------------------------------------
    def write_metrics(self, records: list[dict]) -> None:
        """Rewrite metrics.jsonl (atomically) with one line per record."""
        text = "".join(to_json(r) + "\n" for r in records)
        atomic_write_text(self.file(METRICS), text)

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl; a line that is not a JSON object is an error naming it."""
        p = self.file(METRICS)
        if not p.is_file():
            return []
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise FedHelloError(f"{p}: unreadable ({type(err).__name__})") from None
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("round"), int):
                raise FedHelloError(f"{p}: line {i} is not a round record (a JSON object with a 'round')")
            out.append(rec)
        return out

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``name`` as strict, indented JSON (atomically)."""
        atomic_write_json(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        """The parsed JSON of ``name``; FedHelloError when it is missing or unreadable."""
        p = self.file(name)
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise FedHelloError(f"{p}: missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FedHelloError(f"{p}: not valid JSON ({type(err).__name__})") from None

    # -- checkpoint ------------------------------------------------------------
    def save_checkpoint(self, ckpt: dict) -> None:
        """Write checkpoint.pt (atomically; plain data and tensors only, see :func:`plain`)."""
        atomic_torch_save(self.file(CHECKPOINT), ckpt)

    def load_checkpoint(self) -> dict | None:
        """The checkpoint (structure checked by :func:`check_checkpoint`), or None if there is none.

        Read with ``weights_only=True``: a pickled object is refused before any of it runs.
        """
        p = self.file(CHECKPOINT)
        if not p.is_file():
            return None
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise FedHelloError(
                f"{p}: refused: it holds objects other than tensors and plain data (not a checkpoint written by "
                "this fedhello; loading it could run code). Start the run again with --overwrite"
            ) from None
        except Exception as err:  # corrupt file: say which
            raise FedHelloError(f"{p}: cannot read checkpoint ({type(err).__name__})") from None
        return check_checkpoint(ckpt, p)
