"""``fedhello deploy-local``: a real Flower deployment on this machine's loopback.

Writes a deployment kit for 127.0.0.1 (:mod:`fedhello.flower.kit`: a throwaway CA,
a server certificate, one key pair per node) and runs its scripts as a user would on
separate hosts, each with its own ``FLWR_HOME``: the SuperLink with TLS and SuperNode
authentication, every node's key registered, N SuperNodes, and the Fed-HeLLo app
submitted with ``flwr run`` over TLS (``--insecure``: the same without TLS and
authentication). It waits for the run to end (summary.json in the run directory, or
the run's final status), reports a process that exits on its own (a refused node, an
unreachable SuperLink) with Flower's reason, and stops every process it started: on
success, on error and on Ctrl-C. Only loopback addresses are used.

An interrupted run (Ctrl-C, the SuperLink or the ServerApp died) keeps its finished
rounds in the run directory; ``resume=True`` (``fedhello deploy-local --resume DIR``)
starts a fresh deployment that continues it from its checkpoint under its own
config.yaml, as ``fedhello run --resume`` does in-process.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil

from fedhello.errors import FedHelloError
from fedhello.flower.kit import CONNECTION

APP_PYPROJECT_HEAD = """[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "fedhello-app"
version = "0.1.0"
description = "Fed-HeLLo on Flower (the code is the installed fedhello package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedhello"
fab-include = ["pyproject.toml"]

[tool.flwr.app.components]
serverapp = "fedhello.flower.server_app:app"
clientapp = "fedhello.flower.client_app:app"
"""


def app_pyproject() -> str:
    """The pyproject.toml of the app that ``flwr run`` submits (the code is the installed package).

    Its ``[tool.flwr.app.config]`` is :data:`fedhello.flower.server_app.DEFAULTS`, the
    one list of run-config keys and defaults (the repository's pyproject.toml states
    the same, which a test checks).
    """
    from fedhello.flower.server_app import DEFAULTS

    return APP_PYPROJECT_HEAD + "\n[tool.flwr.app.config]\n" + "".join(
        f"{key} = {_toml_value(value)}\n" for key, value in DEFAULTS.items())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """A Flower console script of this interpreter's environment (or PATH)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise FedHelloError(f"'{name}' not found: install flwr[simulation]>=1.42,<1.43")
    return found


def _toml_value(v) -> str:
    """A run-config value (str, bool, int, float) as TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


class LocalFederation:
    """The processes of one loopback deployment, started from a kit's scripts
    (:mod:`fedhello.flower.kit`); :meth:`stop` ends all of them.

    Each host of the kit gets its own ``FLWR_HOME`` under ``workdir/homes``, as on
    separate machines; every process's output goes to ``workdir/NAME.log``.
    """

    def __init__(self, workdir: Path, env: dict[str, str], kit: Path | None = None, max_wait_s: float = 30.0):
        self.workdir = workdir
        self.env = env
        self.kit = kit if kit is not None else workdir / "kit"
        self.max_wait_s = max_wait_s
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0
        # app processes seen under the SuperLink (flwr-serverapp): Flower starts them in sessions of
        # their own, so once the SuperLink dies they are no one's descendants and stop() must know them
        self.apps: set[psutil.Process] = set()
        self.reported: set[str] = set()  # processes whose exit has been reported

    def host_env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of a process of ``host``: its own FLWR_HOME, plus ``extra``."""
        home = self.workdir / "homes" / host
        home.mkdir(parents=True, exist_ok=True)
        return dict(self.env, FLWR_HOME=str(home), **extra)

    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.workdir, start_new_session=True)
        log.close()
        self.procs[name] = p
        self.reported.discard(name)
        return p

    def start_superlink(self) -> None:
        """Start the kit's ``superlink/superlink.sh`` (its port: :attr:`port`)."""
        self._start("superlink", ["bash", str(self.kit / "superlink" / "superlink.sh")], self.host_env("superlink"))

    def start_supernode(self, i: int) -> None:
        """Start the kit's ``supernode-I/supernode.sh`` (again, when it ran before: a restart)."""
        self._start(f"supernode-{i}", ["bash", str(self.kit / f"supernode-{i}" / "supernode.sh")],
                    self.host_env(f"supernode-{i}", FEDHELLO_NODE_API_PORT=str(free_port()),
                                  FEDHELLO_MAX_WAIT_S=str(self.max_wait_s)))

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop ``supernode-I`` (``sig`` to its process group: SIGTERM is a clean stop, SIGKILL a
        crash) and start it again from its script."""
        self.kill(name, sig)
        self.procs[name].wait(timeout=30)
        self.start_supernode(int(name.rsplit("-", 1)[1]))

    def cli(self, script: str, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        """Run the SuperLink host's ``script`` (register.sh, submit.sh) with ``args``; its output is captured."""
        return subprocess.run(["bash", str(self.kit / "superlink" / script), *args],
                              env=self.host_env("superlink", **extra), cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)

    def exited(self) -> list[str]:
        """One line for each process that exited since the last call (its exit code and Flower's reason)."""
        out = []
        for name, p in self.procs.items():
            if p.poll() is not None and name not in self.reported:
                self.reported.add(name)
                out.append(f"{name} exited (code {p.returncode}){exit_reason(self.log_tail(name, 60))}")
        return out

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``name`` if its leader still runs."""
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            self.reported.add(name)  # killed on purpose: not news
            _killpg(p.pid, sig)

    def stop(self) -> None:
        """End every process started here and their descendants.

        SIGTERM first (to the process groups and to every descendant found beforehand),
        then SIGKILL after about 5 seconds to whatever is left.
        """
        # Flower starts helpers in sessions of their own (SuperExec, ServerApp, ClientApp
        # processes): find every descendant first, while the parents still live.
        extra = {d for p in self.procs.values() for d in _descendants(p.pid)}
        extra |= {a for a in self.apps if a.is_running()}
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        for proc in extra:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # the group too, even when its leader is gone: app processes the node or link spawned
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(extra, timeout=0.2)
        for proc in alive:
            _signal(proc, signal.SIGKILL)

    def log_tail(self, name: str, n: int = 20) -> str:
        """The last ``n`` lines of process ``name``'s log ("" when it has none)."""
        p = self.workdir / f"{name}.log"
        if not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exit_reason(log: str) -> str:
    """``": <reason>"`` from a Flower process's log tail (the lines after its last ``Exit Code:``), or ""."""
    lines = [_ANSI.sub("", line).strip() for line in log.splitlines()]
    at = max((k for k, line in enumerate(lines) if "Exit Code:" in line), default=None)
    if at is None:
        return ""
    why = []
    for line in lines[at + 1:]:
        if not line or line.startswith("For more information"):
            break
        why.append(line)
    code = lines[at].split("Exit Code:", 1)[1].strip()
    return f": Flower exit code {code}: " + " ".join(why)[:400]


def deploy_local(
    config: str | Path | None,
    overrides: Sequence[str],
    out: str | Path,
    nodes: int | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    round_timeout: float = 120.0,
    budgets: Sequence[int] | None = None,
    timeout: float = 3600.0,
    workdir: str | Path | None = None,
    insecure: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_started: Callable[[LocalFederation], None] | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Run the experiment on a loopback deployment of ``nodes`` SuperNodes; returns the summary.

    The deployment is a kit (:func:`fedhello.flower.kit.write_kit`) for 127.0.0.1 whose
    scripts run here: TLS with a throwaway CA and SuperNode authentication with one
    registered key per node, unless ``insecure``.
    ``budgets``: optional per-node ``budget=`` node config (node i declares budgets[i]).
    ``on_round`` gets each new metrics record as the run directory grows;
    ``on_started`` gets the federation once every process is up (tests kill nodes with it).
    ``resume``: continue the run in ``out`` under its own config.yaml (``config`` and
    ``overrides`` must be empty; ``nodes`` None or the run's ``clients.num_clients``).
    A process that exits on its own (a refused or unreachable node, say) is reported with
    ``log``, with Flower's reason.
    """
    import yaml

    from fedhello.flower.kit import write_kit

    out = Path(out).expanduser().resolve()
    cfg = _deploy_config(config, overrides, out, nodes, resume=resume, overwrite=overwrite, budgets=budgets,
                         round_timeout=round_timeout)
    nodes = cfg.clients.num_clients
    own_tmp = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="fedhello-deploy-")) if own_tmp else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    kit = write_kit(wd / "kit", nodes, f"127.0.0.1:{port}", experiment_yaml=yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                    budgets=budgets, round_timeout=round_timeout, insecure=insecure, overwrite=True)
    fed = LocalFederation(wd, _app_env(), kit)
    fed.port = port
    old_term = _sigterm_as_interrupt()
    try:
        run_id = _start_and_submit(fed, nodes, out, overwrite=overwrite, round_timeout=round_timeout,
                                   on_started=on_started)
        log(f"submitted run {run_id} to the SuperLink on 127.0.0.1:{port} "
            f"({'INSECURE' if insecure else 'TLS, SuperNode authentication'}; {nodes} SuperNodes; "
            f"logs in {wd}" + (f", kept in {out / DEPLOY_LOGS} when it ends)" if own_tmp else ")"))
        return _watch_run(fed, run_id, cfg.rounds, out, wd, timeout=timeout, on_round=on_round, log=log)
    finally:
        fed.stop()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if own_tmp:
            keep_logs(wd, out)
            shutil.rmtree(wd, ignore_errors=True)


def _deploy_config(config, overrides: Sequence[str], out: Path, nodes: int | None, *, resume: bool, overwrite: bool,
                   budgets: Sequence[int] | None, round_timeout: float):
    """The run's config (``clients.num_clients`` the number of nodes) with every error of the
    options raised before any process starts."""
    from fedhello.config import load_config
    from fedhello.run.experiment import open_rundir

    if resume:
        cfg = resume_deploy_config(out, config, overrides, nodes, overwrite)
        nodes = cfg.clients.num_clients
    else:
        if nodes is None or nodes < 1:
            raise FedHelloError("--nodes must be at least 1")
        overrides = list(overrides) + [f"clients.num_clients={nodes}"]
        cfg = load_config(config, overrides)  # every config error before any process starts
    open_rundir(cfg, out, overwrite)  # a different run already there: error now
    if budgets is not None and len(budgets) != nodes:
        raise FedHelloError(f"--budgets has {len(budgets)} entries for {nodes} nodes")
    unknown = sorted({int(b) for b in budgets or [] if int(b)} - {int(b) for b in cfg.clients.budgets})
    if unknown:  # the ServerApp would refuse the node only after every process has started
        raise FedHelloError(f"--budgets: {unknown[0]} is not one of the config's clients.budgets {cfg.clients.budgets}")
    if cfg.attack.kind != "none":
        raise FedHelloError("config key 'attack.kind': a simulated attack is for in-process runs only")
    if not math.isfinite(round_timeout) or round_timeout <= 0:
        raise FedHelloError(f"--round-timeout must be a positive number of seconds, got {round_timeout}")
    return cfg


def _app_env() -> dict[str, str]:
    """The environment of the deployment's processes: quiet Flower, and this fedhello on their paths."""
    env = dict(os.environ)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    src_root = Path(__file__).resolve().parents[2]  # the fedhello package's parent, for app processes
    # Flower starts its helper processes (flower-superexec, flwr-serverapp, ...) by name
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(src_root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _sigterm_as_interrupt():
    """In the main thread, `kill` of this process raises KeyboardInterrupt (so that what it started
    is stopped, as on Ctrl-C); the handler it replaces, to restore (None elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _term(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _term)


def _start_and_submit(fed: LocalFederation, nodes: int, out: Path, *, overwrite: bool, round_timeout: float,
                      on_started) -> int | None:
    """The SuperLink, the nodes' keys registered, every SuperNode, then the app submitted; its run id."""
    fed.start_superlink()
    _wait_port(fed, timeout=30)
    reg = fed.cli("register.sh")
    if reg.returncode != 0:
        raise FedHelloError(f"registering the SuperNodes' keys failed: {(reg.stdout + reg.stderr).strip()[-500:]}")
    for i in range(nodes):
        fed.start_supernode(i)
    if on_started is not None:
        on_started(fed)
    sub = fed.cli("submit.sh", "--format", "json", FEDHELLO_OUT=str(out),
                  FEDHELLO_OVERWRITE="true" if overwrite else "false",
                  FEDHELLO_ROUND_TIMEOUT=repr(float(round_timeout)))
    if sub.returncode != 0:
        raise FedHelloError(f"flwr run failed: {(sub.stdout + sub.stderr).strip()[-500:]}")
    return _run_id(sub.stdout)


def _watch_run(fed: LocalFederation, run_id: int | None, rounds: int, out: Path, wd: Path, *, timeout: float,
               on_round, log) -> dict:
    """Follow the run directory until the run's summary; a run, SuperLink or ServerApp that ends
    without one, or the ``timeout``, is a FedHelloError saying what was kept."""
    from fedhello.run.rundir import RunDir

    rundir = RunDir(out)
    deadline = time.monotonic() + timeout
    seen = 0
    serverapp_seen = False
    while True:
        recs = rundir.read_metrics() if rundir.file("metrics.jsonl").exists() else []
        for rec in recs[seen:]:
            if on_round is not None:
                on_round(rec)
        seen = max(seen, len(recs))
        if rundir.file("summary.json").exists() and len(recs) >= rounds:
            time.sleep(0.5)
            return rundir.read_json("summary.json")
        for line in fed.exited():
            log(f"warning: {line}")
        status = _run_status(fed, run_id)
        if status and status.startswith("finished") and not rundir.file("summary.json").exists():
            time.sleep(2)
            if not rundir.file("summary.json").exists():
                raise FedHelloError(
                    f"the Flower run ended ({status}) without a summary"
                    f"{_server_error(_flwr(fed, 'log', str(run_id), CONNECTION, '--show'))}; "
                    f"{len(recs)} finished rounds kept in {out}{_resume_hint(out)}; logs in {wd}"
                )
        if fed.procs["superlink"].poll() is not None:
            raise FedHelloError(f"the SuperLink exited; {len(recs)} finished rounds kept in {out}"
                                f"{_resume_hint(out)}; its log:\n" + fed.log_tail("superlink"))
        # a dead ServerApp is only told by Flower after its heartbeat runs out (a minute or more)
        alive = _serverapp_running(fed)
        serverapp_seen = serverapp_seen or alive
        if serverapp_seen and not alive:
            time.sleep(1.0)  # it may have written the summary just before it ended
            if not rundir.file("summary.json").exists():
                raise FedHelloError(f"the ServerApp exited without a summary; {len(recs)} finished rounds "
                                    f"kept in {out}{_resume_hint(out)}; logs in {wd}")
        if time.monotonic() > deadline:
            raise FedHelloError(f"the run did not finish within {timeout:.0f}s")
        time.sleep(1.0)


DEPLOY_LOGS = "deploy-logs"


def resume_deploy_config(out: Path, config, overrides: Sequence[str], nodes: int | None, overwrite: bool):
    """The config of the run to continue in ``out`` (its config.yaml), checked against the
    options given with ``--resume``: no config, no overrides, no overwrite, and the run's
    number of nodes."""
    from fedhello.run.experiment import resume_config

    if config is not None or list(overrides):
        raise FedHelloError("--resume takes the run's own config.yaml: drop --config/--set")
    if overwrite:
        raise FedHelloError("--resume continues the run in its directory: drop --overwrite")
    cfg = resume_config(out)
    if nodes is not None and nodes != cfg.clients.num_clients:
        raise FedHelloError(f"--nodes {nodes}: the run in {out} has clients.num_clients={cfg.clients.num_clients}")
    return cfg


def _resume_hint(out: Path) -> str:
    """``": continue with --resume OUT"`` when ``out`` holds a checkpoint to continue from, else ""."""
    from fedhello.run.rundir import CHECKPOINT

    return f" (continue with --resume {out})" if (out / CHECKPOINT).is_file() else ""


def _serverapp_running(fed: LocalFederation) -> bool:
    """Whether a ServerApp process (``flwr-serverapp``) runs under the SuperLink."""
    p = fed.procs.get("superlink")
    if p is None:
        return False
    for proc in _descendants(p.pid):
        try:
            if any("flwr-serverapp" in part for part in proc.cmdline()[:2]):
                fed.apps.add(proc)
                return True
        except psutil.Error:
            continue
    return False


def keep_logs(workdir: Path, out: Path) -> Path | None:
    """Copy the processes' logs into ``out/deploy-logs/`` (only into a run directory: one with config.yaml)."""
    logs = sorted(workdir.glob("*.log"))
    if not logs or not (out / "config.yaml").is_file():
        return None
    dest = out / DEPLOY_LOGS
    dest.mkdir(exist_ok=True)
    for f in logs:
        shutil.copyfile(f, dest / f.name)
    return dest


def _server_error(log: str) -> str:
    """``": <the ServerApp's last error>"`` from the run's log (``flwr log --show``), or ""."""
    lines = [_ANSI.sub("", line).strip() for line in log.splitlines()]
    for line in reversed(lines):
        if "FedHelloError:" in line:
            return ": " + line.split("FedHelloError:", 1)[1].strip()[:300]
    for line in reversed(lines):
        if "Error:" in line and not line.startswith("File "):
            return ": " + line[:300]
    return ""


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group is empty (or its id reused)
        pass


def _descendants(pid: int) -> list[psutil.Process]:
    """All live descendants of ``pid``."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses a pid that now belongs to another process
    except psutil.Error:  # gone already, or not ours to signal
        pass


def _wait_port(fed: LocalFederation, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fed.procs["superlink"].poll() is not None:
            raise FedHelloError("the SuperLink did not start:\n" + fed.log_tail("superlink"))
        try:
            with socket.create_connection(("127.0.0.1", fed.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise FedHelloError(f"the SuperLink did not open 127.0.0.1:{fed.port} within {timeout:.0f}s")


def _run_id(stdout: str) -> int | None:
    try:
        return int(json.loads(stdout[stdout.index("{"):])["run-id"])
    except (ValueError, KeyError, TypeError):
        return None


def _flwr(fed: LocalFederation, *args: str) -> str:
    """The output of ``flwr ARGS`` over the kit's connection (the one register.sh / submit.sh wrote); "" on failure."""
    env = dict(fed.env, FLWR_HOME=str(fed.kit / "superlink" / "flwr-home"))
    try:
        sub = subprocess.run([_bin("flwr"), *args], env=env, cwd=fed.workdir, capture_output=True, text=True,
                             timeout=30)
        return sub.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _run_status(fed: LocalFederation, run_id: int | None) -> str | None:
    """The run's status as ``flwr ls`` tells it (e.g. 'finished:completed'), None if unknown."""
    if run_id is None:
        return None
    try:
        out = _flwr(fed, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        data = json.loads(out[out.index("{"):])
        runs = data.get("runs") or []
        return str(runs[0].get("status")) if runs else None
    except Exception:
        return None


def add_deploy_parser(sub) -> None:
    """``fedhello deploy-local`` (added to the CLI's subcommands)."""
    p = sub.add_parser("deploy-local", help="run an experiment on a Flower deployment on loopback "
                       "(1 SuperLink + N SuperNodes as processes)")
    p.add_argument("--nodes", type=int, default=None,
                   help="SuperNodes to start (= clients.num_clients; with --resume: the run's)")
    p.add_argument("--config", default=None, help="experiment config (YAML)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the interrupted deployment run in DIR from its last checkpoint (its own config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are shown only on a terminal anyway)")
    p.add_argument("--round-timeout", type=float, default=120.0,
                   help="seconds to wait for a round's replies; later ones count as failed (default 120)")
    p.add_argument("--budgets", default=None, help="comma-separated budget each node declares (node config budget=)")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no SuperNode authentication (default: both, with a throwaway CA and node keys)")
    p.set_defaults(func=cmd_deploy_local)

    from fedhello.flower.kit import add_kit_parser

    add_kit_parser(sub)  # ``fedhello deploy-kit``: the same deployment, for real hosts

    from fedhello.flower.node_worker import add_worker_parser

    add_worker_parser(sub)  # ``fedhello node-worker``: started by the kit's supernode.sh


def cmd_deploy_local(args) -> int:
    """``fedhello deploy-local``: :func:`deploy_local` with the command's options.

    Prints each round's line and the final test accuracy; returns the exit status.
    """
    from fedhello.config import parse_ints
    from fedhello.console import make_console, round_line

    console = make_console()
    budgets = parse_ints("--budgets", args.budgets) if args.budgets else None
    state = {"rounds": None}

    def on_round(rec: dict) -> None:
        console.print(round_line(rec, state["rounds"] or rec["round"] + 1))
        progress.advance(ROUNDS)

    def on_started(fed) -> None:  # every process is up: the start-up bar gives way to the rounds bar
        progress.end(STARTUP)
        progress.start(ROUNDS, state["rounds"])

    from fedhello.config import load_config

    if args.resume:
        if args.out is not None:
            raise FedHelloError("--resume DIR is the run directory: drop --out")
        cfg = resume_deploy_config(Path(args.resume).expanduser().resolve(), args.config, args.set, args.nodes,
                                   args.overwrite)
        args.out = args.resume
    else:
        if not args.config or not args.out or args.nodes is None:
            raise FedHelloError("fedhello deploy-local needs --nodes N, --config FILE and --out DIR (or --resume DIR)")
        cfg = load_config(args.config, args.set)
    state["rounds"] = cfg.rounds
    from fedhello.console import RichProgress
    from fedhello.federation.progress import ROUNDS

    STARTUP = "start-up"
    with RichProgress(console, quiet=getattr(args, "quiet", False)) as progress:
        progress.start(STARTUP, None)  # SuperLink, SuperNodes: no step count, elapsed time shown
        summary = deploy_local(
            args.config, args.set, args.out, args.nodes, resume=bool(args.resume), overwrite=args.overwrite,
            round_timeout=args.round_timeout,
            budgets=budgets, insecure=args.insecure, on_round=on_round, log=lambda m: console.print(m), on_started=on_started,
        )
    if summary.get("final_test_accuracy") is not None:
        console.print(f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%  run directory: {args.out}")
    return 0
