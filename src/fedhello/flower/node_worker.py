"""The node worker: one long-lived process per SuperNode that keeps the backbone loaded.

Flower's deployment runtime starts a fresh ClientApp process for every message. On
its own, each such process would import torch and transformers, build the frozen
backbone, tokenize the data and partition it again: seconds per round that the
in-process engine pays once. A deployment kit's ``supernode.sh`` therefore starts
``fedhello node-worker --socket PATH --parent PID`` beside ``flower-supernode`` and
exports ``FEDHELLO_NODE_WORKER=PATH``; the ClientApp process hands each message's
work to the worker (:func:`call_worker`) and the worker runs
:func:`fedhello.flower.client_app.compute`, the ClientApp's own code, on its
module-level cache (keyed by experiment, partition and data path). The global
adapter travels in every request, so nothing but the frozen parts is kept between
rounds: a restarted node or worker computes the same update.

Transport: a Unix socket in a directory only its owner can enter (0700), one request
per connection: ``[8-byte length][JSON header][8-byte length][.npz of the arrays]``,
the reply the same with ``{"metrics": ...}`` or ``{"error": "..."}``. Arrays are read
with ``allow_pickle=False``: nothing received can run code.

Lifetime: the worker exits when the process that started it (``--parent``, the
SuperNode: ``supernode.sh`` execs into it) is gone, on SIGTERM/SIGINT, and removes
its socket. A ClientApp that finds no worker at the path computes the work itself.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np

ENV = "FEDHELLO_NODE_WORKER"
_LEN = struct.Struct("!Q")
MAX_PART = 1 << 34  # 16 GiB: larger than any adapter or header this project sends


def _send(sock: socket.socket, header: dict, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    head = json.dumps(header).encode()
    body = buf.getvalue()
    sock.sendall(_LEN.pack(len(head)) + head + _LEN.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise ConnectionError("the connection closed mid-message")
        out += chunk
    return bytes(out)


def _recv(sock: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    parts = []
    for _ in range(2):
        (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        if n > MAX_PART:
            raise ValueError(f"message part of {n} bytes")
        parts.append(_recv_exact(sock, n))
    header = json.loads(parts[0])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    with np.load(io.BytesIO(parts[1]), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return header, arrays


def call_worker(op: str, header: dict, arrays: dict[str, np.ndarray],
                path: str | None = None) -> tuple[dict[str, np.ndarray], dict] | None:
    """Have the node worker at ``path`` (default: ``$FEDHELLO_NODE_WORKER``) compute ``op``.

    Returns (reply arrays, metrics), or None when no worker listens there (the caller
    computes the work itself). An error inside the worker is raised here as a
    ``RuntimeError`` with the worker's message.
    """
    path = path or os.environ.get(ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        _send(sock, dict(header, op=op), arrays)
        reply, out = _recv(sock)
    finally:
        sock.close()
    if "error" in reply:
        raise RuntimeError(f"node worker: {reply['error']}")
    return out, dict(reply["metrics"])


def serve(path: str | Path, parent: int | None = None, log=print, stop: threading.Event | None = None) -> None:
    """Serve requests on the Unix socket ``path`` until ``parent`` exits, ``stop`` is set, or
    (without ``stop``) SIGTERM/SIGINT arrives.

    The socket's directory is created owner-only (0700) when missing and must not be
    accessible to anyone else.
    """
    from fedhello.errors import FedHelloError

    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:
        raise FedHelloError(f"{path.parent} is accessible to other users: the node worker's socket needs a "
                            "private directory")
    if path.exists():
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # listening before the slow imports: a ClientApp that comes early waits for us
    os.chmod(path, 0o600)
    server.listen(8)
    server.settimeout(1.0)

    import fedhello.run.experiment  # noqa: F401  (the heavy imports once, before the first round)
    from fedhello.flower.client_app import compute
    if stop is None:
        stop = threading.Event()

        def _stop(signum, frame):
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log(f"fedhello node worker on {path} (parent {parent})")
    try:
        while not stop.is_set():
            if parent is not None and not _alive(parent):
                log("fedhello node worker: the SuperNode is gone, exiting")
                break
            try:
                conn, _ = server.accept()
            except (socket.timeout, InterruptedError):
                continue
            with conn:
                conn.settimeout(None)
                t0 = time.perf_counter()
                try:
                    header, arrays = _recv(conn)
                    op = str(header.pop("op"))
                    out, metrics = compute(op, header, arrays)
                    _send(conn, {"metrics": metrics}, out)
                    log(f"fedhello node worker: {op} for partition {header.get('partition-id')} "
                        f"in {time.perf_counter() - t0:.2f}s")
                except Exception as err:  # the ClientApp turns it into an error reply
                    try:
                        _send(conn, {"error": f"{type(err).__name__}: {err}"}, {})
                    except OSError:
                        pass
    finally:
        server.close()
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the private directory supernode.sh made for it, when empty
        except OSError:
            pass


def _alive(pid: int) -> bool:
    """True while ``pid`` is still this process's parent (an orphan is re-parented: no reused-id confusion)."""
    return os.getppid() == pid


def add_worker_parser(sub) -> None:
    """``fedhello node-worker`` (started by a deployment kit's supernode.sh)."""
    p = sub.add_parser("node-worker", help="keep a SuperNode's backbone and data loaded across rounds "
                       "(started by a deployment kit's supernode.sh)")
    p.add_argument("--socket", required=True, help="Unix socket path (in a directory only you can enter)")
    p.add_argument("--parent", type=int, default=None, help="exit when this process (the SuperNode) is gone")
    p.set_defaults(func=cmd_node_worker)


def cmd_node_worker(args) -> int:
    serve(args.socket, args.parent, log=lambda m: print(m, flush=True))
    return 0
