"""``fedhello deploy-kit``: what each host of a Flower federation needs, secure by default.

:func:`write_kit` writes a directory with one folder per host::

    KIT/README.md              how to use the kit (copy a folder onto each host, run its scripts)
    KIT/superlink/             the SuperLink host (also registers the nodes and submits the run)
        superlink.sh           flower-superlink with TLS and SuperNode authentication
        register.sh            flwr supernode register, once per node key
        submit.sh              flwr run of the Fed-HeLLo app (over TLS)
        ca.crt server.crt server.key(0600)  node-keys/supernode-I.pub  app/pyproject.toml  [experiment.yaml]
    KIT/supernode-I/           node I's host
        supernode.sh           flower-supernode with its node config and its key
        ca.crt node.key(0600) node.pub

The CA is throwaway: it signs the server certificate and is then forgotten (its key is
never written), so no one, the kit's author included, can issue another certificate that
the nodes trust. Node keys are EC P-384 in OpenSSH format (what ``flower-supernode
--auth-supernode-private-key`` and ``flwr supernode register`` read).

Every script changes into its own folder and refers to its files by relative path, so a
folder can be copied anywhere. ``deploy-local`` runs the same scripts on loopback
(:mod:`fedhello.flower.deploy`), and ``insecure=True`` (``deploy-local --insecure``
only) writes the same kit without certificates or keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
import shutil
from pathlib import Path
from typing import Sequence

from fedhello.errors import FedHelloError

CONNECTION = "fedhello"  # the name of the SuperLink connection in the kit's flwr config
NODE_API_PORT = 9094  # flower-supernode's default Runtime API port (loopback only)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); a bad one is a one-line error."""
    host, sep, port = str(address).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedHelloError(f"--server-address: expected HOST:PORT, got {address!r}")
    if any(c.isspace() or c in "\"'\\$`" for c in host):
        raise FedHelloError(f"--server-address: invalid host {host!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- keys and certificates ------------------------------------------------------------------

def _name(cn: str):
    from cryptography.x509.oid import NameOID
    from cryptography import x509

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedhello deploy-kit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificates(hosts: Sequence[str], days: int = 365) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM: a fresh CA signs a certificate
    whose subject alternative names are ``hosts`` (IP addresses or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedhello throwaway CA")).issuer_name(_name("fedhello throwaway CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    sans = []
    for h in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_node_key() -> tuple[bytes, bytes]:
    """(private key, public key) of one SuperNode: EC P-384, OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return priv, pub + b"\n"


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (a secret is never world-readable, not even briefly)."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(path, mode)  # the umask may have narrowed it


# -- scripts ----------------------------------------------------------------------------------

_HEAD = """#!/usr/bin/env bash
# {what}
# Written by `fedhello deploy-kit`; runs from any directory (it changes into its own).
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
cd "$HERE"
"""

_CLI_HOME = """# the flwr CLI's own home: only the kit's SuperLink connection, over TLS with the kit's CA
export FLWR_HOME="$HERE/flwr-home"
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "{conn}"

[superlink.{conn}]
address = "{address}"
{tls}
EOF
"""


def _q(parts: Sequence[str]) -> str:
    """A shell command line; items starting with ``$`` stay expandable (in double quotes)."""
    return " ".join(f'"{p}"' if p.startswith("$") else shlex.quote(p) for p in parts)


def superlink_script(port: int, bind: str, insecure: bool) -> str:
    tls = ["--insecure"] if insecure else [
        "--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "server.crt", "--ssl-keyfile", "server.key",
        "--enable-supernode-auth"]
    cmd = ["flower-superlink", *tls, "--host", bind, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    return (_HEAD.format(what="The SuperLink: Fleet, Control and Runtime APIs on one port"
                         + ("" if insecure else ", TLS, only registered SuperNodes may join."))
            + 'export FLWR_HOME="${FLWR_HOME:-$HERE/flwr-home}"\n' + POLL
            + "exec " + _q(cmd) + ' "$@"\n')


def _cli_home(address: str, insecure: bool) -> str:
    tls = "insecure = true" if insecure else 'root-certificates = "$HERE/ca.crt"'
    return _CLI_HOME.format(conn=CONNECTION, address=address, tls=tls)


def register_script(address: str, nodes: int, insecure: bool) -> str:
    body = _HEAD.format(what="Register every invited SuperNode's public key with the SuperLink "
                        "(run once, after superlink.sh is up).") + _cli_home(address, insecure)
    if insecure:
        return body + 'echo "insecure kit: no SuperNode authentication, nothing to register"\n'
    return body + "".join(
        _q(["flwr", "supernode", "register", f"node-keys/supernode-{i}.pub", CONNECTION,
            "--name", f"supernode-{i}"]) + "\n" for i in range(nodes))


def submit_script(address: str, nodes: int, insecure: bool, round_timeout: float) -> str:
    """``flwr run`` of the app; the run's knobs are environment variables with the kit's defaults."""
    body = _HEAD.format(what="Submit the Fed-HeLLo run to the SuperLink (after the SuperNodes are up).\n"
                        "# FEDHELLO_OUT: the run directory on the SuperLink host (default ./run);\n"
                        "# FEDHELLO_OVERWRITE=true replaces a different run there; FEDHELLO_ROUND_TIMEOUT: seconds\n"
                        "# to wait for a round's replies. Extra arguments go to `flwr run` (e.g. --stream).")
    body += _cli_home(address, insecure)
    body += ('CONFIG=""\n[ -f experiment.yaml ] && CONFIG="$HERE/experiment.yaml"\n'
             'OUT="${FEDHELLO_OUT:-$HERE/run}"\n'
             'RC="config=\\"$CONFIG\\" out=\\"$OUT\\" overwrite=${FEDHELLO_OVERWRITE:-false}'
             f' round-timeout=${{FEDHELLO_ROUND_TIMEOUT:-{float(round_timeout)!r}}} min-nodes={int(nodes)}"\n')
    return body + "exec " + _q(["flwr", "run", "app", CONNECTION, "--run-config", "$RC"]) + ' "$@"\n'


def node_config(i: int, nodes: int, data_path: str | None, budget: int | None) -> str:
    """The node config string of SuperNode ``i`` (``--node-config``)."""
    nc = f"partition-id={i} num-partitions={nodes}"
    if data_path:
        nc += f' data-path="{data_path}"'
    if budget is not None:
        nc += f" budget={int(budget)}"
    return nc


def supernode_script(i: int, address: str, insecure: bool, nc: str, max_wait_s: float, rejoin_s: float = 90.0) -> str:
    tls = ["--insecure"] if insecure else ["--root-certificates", "ca.crt", "--auth-supernode-private-key", "node.key"]
    cmd = ["flower-supernode", *tls, "--superlink", address, "--host", "127.0.0.1",
           "--port", "$FEDHELLO_NODE_API_PORT", "--max-wait-time", "$FEDHELLO_MAX_WAIT_S", "--node-config", "$NODE_CONFIG"]
    return (_HEAD.format(what=f"SuperNode {i}: client {i} of the experiment, trains on its own data.")
            + 'export FLWR_HOME="${FLWR_HOME:-$HERE/flwr-home}"\n' + POLL
            + "# Node config: which client this node is (partition-id, num-partitions), where its data is\n"
            + "# (data-path, default: the experiment's data.path) and its resource group (budget=B, one of\n"
            + "# clients.budgets; default: the group the experiment gives client I). Per-node resource limits\n"
            + "# go here too, as more key=value items: memory-mb=M time-s=T upload-mb=U (any subset).\n"
            + f"NODE_CONFIG={shlex.quote(nc)}\n"
            + "# the node's Runtime API, for its ClientApp processes: loopback only\n"
            + f'FEDHELLO_NODE_API_PORT="${{FEDHELLO_NODE_API_PORT:-{NODE_API_PORT}}}"\n'
            + "# each attempt gives up (exits non-zero) when the SuperLink cannot be reached for this many seconds\n"
            + f'FEDHELLO_MAX_WAIT_S="${{FEDHELLO_MAX_WAIT_S:-{float(max_wait_s)!r}}}"\n'
            + "# A node restarted after a crash is refused until the SuperLink notices that the old one is\n"
            + "# gone (Flower's heartbeat timeout: up to 60 s; a clean stop tells it at once), and a key that\n"
            + "# was never registered is refused for good: try again for FEDHELLO_REJOIN_S seconds, then give up.\n"
            + f'FEDHELLO_REJOIN_S="${{FEDHELLO_REJOIN_S:-{float(rejoin_s):g}}}"\n'
            + WORKER
            + "START=$SECONDS\nwhile true; do\n  STATUS=0\n  " + _q(cmd) + ' "$@" || STATUS=$?\n'
            + '  if [ "$STATUS" -eq 0 ] || [ $((SECONDS - START)) -ge "${FEDHELLO_REJOIN_S%.*}" ]; then exit "$STATUS"; fi\n'
            + '  echo "supernode.sh: flower-supernode exited with status $STATUS; trying again in 5 s" >&2\n'
            + "  sleep 5\ndone\n")


WORKER = """# The node worker keeps the backbone, tokenized data and partition loaded across rounds (Flower
# starts a fresh ClientApp process for every message; it hands its work to the worker). It exits
# with this script. FEDHELLO_NODE_WORKER=off: every ClientApp process loads them itself.
if [ "${FEDHELLO_NODE_WORKER:-}" != "off" ]; then
  WORKER_DIR="$(mktemp -d /tmp/fedhello-node.XXXXXX)"  # private (0700); a Unix socket path must be short
  trap 'rm -rf "$WORKER_DIR"' EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  export FEDHELLO_NODE_WORKER="$WORKER_DIR/worker.sock"
  fedhello node-worker --socket "$FEDHELLO_NODE_WORKER" --parent $$ >> node-worker.log 2>&1 &
fi
"""


POLL = """# Flower's SuperExec looks for new app tasks every second by default: 0.2 s shortens every round
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"
"""


README = """# Fed-HeLLo deployment kit

Written by `fedhello deploy-kit` for {nodes} SuperNodes and a SuperLink at `{address}`{tls_note}.
Every host needs fedhello installed (it brings Flower); copy one folder onto each host:

| folder | host | run, in this order |
|---|---|---|
| `superlink/` | the server (reachable at `{address}`) | `bash superlink.sh` (keep running), then `bash register.sh` |
| `supernode-I/` | data holder I (one per node) | `bash supernode.sh` (keep running) |
| `superlink/` | the server again | `bash submit.sh --stream` (the run; its directory: `superlink/run`) |

- `superlink/`: `server.key` is the server's TLS key (owner-only), `ca.crt` the kit's CA
  certificate, `node-keys/` the invited nodes' public keys. `experiment.yaml`, when present,
  is the experiment; `clients.num_clients` = {nodes}.
- `supernode-I/`: `node.key` is node I's private key (owner-only: never copy it elsewhere),
  `ca.crt` lets it check the SuperLink's certificate. `supernode.sh` holds its node config:
  `partition-id`, `num-partitions`, `data-path` (where the node's copy of the dataset is),
  the resource group (`budget=`), and the place for per-node limits
  (`memory-mb=`, `time-s=`, `upload-mb=`).
- Nobody joins who was not invited: the SuperLink accepts only TLS connections with a
  certificate the kit's CA signed, and only SuperNodes whose public key `register.sh`
  registered. The CA's key was never written: no one can issue another certificate for it.
- The SuperLink's port serves the Control API too (`flwr run`, `flwr supernode register`):
  open it only to the data holders and the operator (firewall), since Flower's open-source
  SuperLink does not authenticate Control API users.
- Environment knobs: `FEDHELLO_OUT`, `FEDHELLO_OVERWRITE=true`, `FEDHELLO_ROUND_TIMEOUT` (submit.sh);
  `FEDHELLO_NODE_API_PORT` (two nodes on one host need different ones), `FEDHELLO_MAX_WAIT_S`
  (how long a node retries an unreachable SuperLink before it exits), `FEDHELLO_REJOIN_S`
  (supernode.sh tries again this long when the SuperLink refuses the node: a node restarted
  after a crash is refused until Flower's heartbeat timeout, up to 60 s, has passed),
  `FEDHELLO_NODE_WORKER=off` (no node worker: every round loads the model again).
"""


def write_kit(
    out: str | Path,
    nodes: int,
    server_address: str,
    *,
    experiment_yaml: str | None = None,
    data_path: str | None = None,
    budgets: Sequence[int] | None = None,
    round_timeout: float = 600.0,
    max_wait_s: float = 300.0,
    insecure: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the kit (layout: module docstring) into ``out``; returns its path.

    An existing non-empty ``out`` is refused unless ``overwrite`` (then it is replaced).
    """
    from fedhello.flower.deploy import app_pyproject

    host, port = parse_address(server_address)
    if nodes < 1:
        raise FedHelloError("--nodes must be at least 1")
    if budgets is not None and len(budgets) != nodes:
        raise FedHelloError(f"--budgets has {len(budgets)} entries for {nodes} nodes")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FedHelloError(f"{out} exists and is not empty: pass --overwrite to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bind = "127.0.0.1" if is_loopback(host) else "0.0.0.0"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "superlink" / "app").mkdir(parents=True)
    os.chmod(tmp, 0o700)
    sl = tmp / "superlink"
    if not insecure:
        ca, cert, key = make_certificates([host, "127.0.0.1", "localhost"])  # 127.0.0.1: Flower's own ServerApp link
        _write(sl / "ca.crt", ca)
        _write(sl / "server.crt", cert)
        _write(sl / "server.key", key, 0o600)
        (sl / "node-keys").mkdir()
    _write(sl / "superlink.sh", superlink_script(port, bind, insecure), 0o755)
    _write(sl / "register.sh", register_script(address, nodes, insecure), 0o755)
    _write(sl / "submit.sh", submit_script(address, nodes, insecure, round_timeout), 0o755)
    _write(sl / "app" / "pyproject.toml", app_pyproject())
    if experiment_yaml is not None:
        _write(sl / "experiment.yaml", experiment_yaml)
    for i in range(nodes):
        nd = tmp / f"supernode-{i}"
        nd.mkdir()
        if not insecure:
            priv, pub = make_node_key()
            _write(nd / "ca.crt", ca)
            _write(nd / "node.key", priv, 0o600)
            _write(nd / "node.pub", pub)
            _write(sl / "node-keys" / f"supernode-{i}.pub", pub)
        nc = node_config(i, nodes, data_path, None if budgets is None else budgets[i])
        _write(nd / "supernode.sh", supernode_script(i, address, insecure, nc, max_wait_s), 0o755)
    _write(tmp / "README.md", README.format(
        nodes=nodes, address=address,
        tls_note=" (INSECURE: no TLS, no node authentication; loopback only)" if insecure else ""))
    tmp.rename(out)
    return out


def add_kit_parser(sub) -> None:
    """``fedhello deploy-kit`` (added to the CLI's subcommands)."""
    p = sub.add_parser("deploy-kit", help="write a Flower deployment kit for real hosts: certificates, "
                       "node keys and each host's commands (TLS and node authentication)")
    p.add_argument("--nodes", type=int, required=True, help="SuperNodes (= clients.num_clients)")
    p.add_argument("--server-address", required=True, metavar="HOST:PORT",
                   help="where the SuperNodes reach the SuperLink (the server certificate is for HOST)")
    p.add_argument("--out", required=True, help="kit directory to write")
    p.add_argument("--config", required=True, help="experiment config (YAML) the kit ships to the SuperLink host")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--data-path", default=None, help="where every node finds the dataset (node config data-path)")
    p.add_argument("--budgets", default=None, help="comma-separated budget each node declares (node config budget=)")
    p.add_argument("--round-timeout", type=float, default=600.0, help="default seconds to wait for a round's replies")
    p.add_argument("--overwrite", action="store_true", help="replace an existing kit in --out")
    p.set_defaults(func=cmd_deploy_kit)


def cmd_deploy_kit(args) -> int:
    import yaml

    from fedhello.config import load_config, parse_ints
    from fedhello.console import make_console

    budgets = parse_ints("--budgets", args.budgets) if args.budgets else None
    overrides = list(args.set) + [f"clients.num_clients={args.nodes}"]
    cfg = load_config(args.config, overrides)  # every config error before anything is written
    if args.round_timeout <= 0:
        raise FedHelloError("--round-timeout must be positive")
    kit = write_kit(args.out, args.nodes, args.server_address,
                    experiment_yaml=yaml.safe_dump(cfg.to_dict(), sort_keys=False), data_path=args.data_path,
                    budgets=budgets, round_timeout=args.round_timeout, overwrite=args.overwrite)
    make_console().print(f"wrote the kit for {args.nodes} SuperNodes and the SuperLink at {args.server_address} "
                         f"to {kit} (see {kit / 'README.md'})")
    return 0
