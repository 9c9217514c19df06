#!/usr/bin/env bash
# Per-round wall time of one small experiment (configs/flower-small.yaml: MiniLM, 3 clients,
# 3 rounds, fedhello with client-side Fisher scores) in-process, in Flower's simulation
# runtime and in a loopback deployment, one after another. Usage: bash scripts/flower_timing.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/flower-timing}")
CFG=$PWD/configs/flower-small.yaml
PY=${PYTHON:-python}
WORK=$(mktemp -d -t fhtime.XXXX)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=$WORK/home RAY_TMPDIR=$WORK/ray FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=39591 FLWR_LOCAL_CONTROL_API_PORT=39593
mkdir -p "$RAY_TMPDIR" "$OUT"
# the simulation SuperLink `flwr run .` uses: started here (same flags as the one flwr would
# start itself, plus no dependency installation) so that this script can stop it
setsid flower-superlink --insecure --simulation --isolation subprocess --host 127.0.0.1 \
  --port "$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT" --control-api-address "127.0.0.1:$FLWR_LOCAL_CONTROL_API_PORT" \
  --disable-runtime-dependency-installation > "$WORK/superlink.log" 2>&1 &
SL=$!
cleanup() { kill -TERM -- "-$SL" 2>/dev/null || true; sleep 1; kill -KILL -- "-$SL" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
$PY - "$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT" <<'PYEOF'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=0.5); break
    except OSError:
        time.sleep(0.5)
PYEOF
$PY -m fedhello.cli run --config "$CFG" --out "$OUT/inprocess" --overwrite
flwr run . --federation-config "num-supernodes=3" --stream \
  --run-config "config=\"$CFG\" out=\"$OUT/simulation\" overwrite=true"
$PY -m fedhello.cli deploy-local --nodes 3 --config "$CFG" --out "$OUT/deployment" --overwrite
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
for name in ("inprocess", "simulation", "deployment"):
    recs = [json.loads(l) for l in (Path(sys.argv[1]) / name / "metrics.jsonl").read_text().splitlines()]
    t = [r["round_time_s"] for r in recs]
    print(f"{name:11s} rounds {len(t)}  per-round s: {' '.join(f'{x:.1f}' for x in t)}  mean {sum(t)/len(t):.1f}  "
          f"final test acc {recs[-1]['test_accuracy']:.3f}")
PYEOF
