#!/usr/bin/env bash
# Seconds per round of one experiment (default configs/flower-small.yaml) in-process and on loopback
# deployments (fedhello deploy-local), one after another in one sitting:
#   inprocess      fedhello run
#   tls            deploy-local (TLS + SuperNode authentication, node workers: the default)
#   insecure       deploy-local --insecure
#   no-worker      deploy-local with FEDHELLO_NODE_WORKER=off (every ClientApp process loads the model)
#   baseline       only with BASELINE_SRC=<another checkout>/src: that checkout's deploy-local
# Prints per-round times, the steady-state mean (rounds 2..), its ratio to in-process, and whether the
# test accuracy is the same round by round. Usage: bash scripts/deploy_timing.sh [OUTDIR] [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/deploy-timing}")
CFG=$(realpath "${2:-configs/flower-small.yaml}")
PY=${PYTHON:-python}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
NODES=$($PY -c "import sys; from fedhello.config import load_config; print(load_config(sys.argv[1]).clients.num_clients)" "$CFG")
mkdir -p "$OUT"
$PY -m fedhello.cli run --config "$CFG" --out "$OUT/inprocess" --overwrite
$PY -m fedhello.cli deploy-local --nodes "$NODES" --config "$CFG" --out "$OUT/tls" --overwrite
$PY -m fedhello.cli deploy-local --nodes "$NODES" --config "$CFG" --out "$OUT/insecure" --overwrite --insecure
FEDHELLO_NODE_WORKER=off $PY -m fedhello.cli deploy-local --nodes "$NODES" --config "$CFG" --out "$OUT/no-worker" --overwrite
if [ -n "${BASELINE_SRC:-}" ]; then
  PYTHONPATH="$(realpath "$BASELINE_SRC")" $PY -m fedhello.cli deploy-local --nodes "$NODES" --config "$CFG" \
    --out "$OUT/baseline" --overwrite
fi
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {}
for name in ("inprocess", "tls", "insecure", "no-worker", "baseline"):
    f = out / name / "metrics.jsonl"
    if f.exists():
        runs[name] = [json.loads(line) for line in f.read_text().splitlines()]
base = runs["inprocess"]
def steady(recs):
    t = [r["round_time_s"] for r in recs[1:]] or [recs[0]["round_time_s"]]
    return sum(t) / len(t)
for name, recs in runs.items():
    t = [r["round_time_s"] for r in recs]
    same = [r["test_accuracy"] for r in recs] == [r["test_accuracy"] for r in base]
    print(f"{name:10s} per-round s: {' '.join(f'{x:.1f}' for x in t)}  steady mean {steady(recs):.1f}  "
          f"x{steady(recs) / steady(base):.2f} of in-process  final test acc {recs[-1]['test_accuracy']:.4f}  "
          f"same accuracy every round as in-process: {same}")
PYEOF
