#!/usr/bin/env bash
# The GPU path's first check, for a machine with CUDA (UNTESTED so far: no GPU has run it yet).
#
#   bash scripts/gpu-check.sh PATH/TO/banking77 [OUT_DIR]
#
# Runs, with the repository's .venv (or the python on PATH):
#   1. the device-sensitive tests (they run on `device: auto`, i.e. on the GPU here);
#   2. one short Banking77 run (configs/paper-banking77.yaml, 3 rounds, pat-10), in float32 and
#      with model.bf16=true, to compare accuracy and time;
#   3. `fedhello bench --device cuda --quick --data PATH/TO/banking77`.
# and writes OUT_DIR/gpu-check.json (default runs/gpu-check): one object with each step's exit
# status, time and results. Paste its figures into BENCHMARKS.md.
set -u
DATA=${1:?usage: bash scripts/gpu-check.sh PATH/TO/banking77 [OUT_DIR]}
OUT=${2:-runs/gpu-check}
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: PyTorch sees no CUDA device here (install a CUDA build of torch)" >&2
  exit 2
fi
step() {  # name, command...: run it, keep its exit status and time
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b - a}')}" > "$OUT/$name.status.json"
  echo "$name: exit $rc (log: $OUT/$name.log)"
}
step tests "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" \
  tests/test_engine_e2e.py tests/test_head.py tests/test_fast_loop.py tests/test_benchmarks.py \
  tests/test_pinned_run.py tests/test_fisher.py tests/test_config_cli.py
RUN=(--config configs/paper-banking77.yaml --set data.path="$DATA" --set rounds=3 --set eval.every=1
     --set partition.name=pathological --set device=cuda)
step run_fp32 "$PY" -m fedhello run "${RUN[@]}" --out "$OUT/run-fp32" --overwrite
step run_bf16 "$PY" -m fedhello run "${RUN[@]}" --set model.bf16=true --out "$OUT/run-bf16" --overwrite
step bench "$PY" -m fedhello bench --device cuda --quick --data "$DATA" --out "$OUT/bench"
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib, xml.etree.ElementTree as ET
import torch
out = pathlib.Path(sys.argv[1])
res = {"gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None), "torch": torch.__version__, "cuda": torch.version.cuda}
for name in ("tests", "run_fp32", "run_bf16", "bench"):
    p = out / f"{name}.status.json"
    res[name] = json.loads(p.read_text()) if p.is_file() else None
try:
    root = ET.parse(out / "tests.xml").getroot()
    s = root.find("testsuite") if root.find("testsuite") is not None else root
    res["tests"].update({k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
except (OSError, ET.ParseError, AttributeError):
    pass
for name in ("run_fp32", "run_bf16"):
    p = out / name.replace("_", "-") / "summary.json"
    if p.is_file() and res[name] is not None:
        s = json.loads(p.read_text())
        res[name].update({k: s.get(k) for k in ("final_test_accuracy", "total_time_s", "phase_time_s")})
b = out / "bench" / "bench.json"
if b.is_file() and res["bench"] is not None:
    bj = json.loads(b.read_text())
    res["bench"].update({k: bj.get(k) for k in ("engine_overhead_ratio", "freeze_time_ratio", "fim_speedup",
                                                 "length_grouping_speedup", "targets_met")})
(out / "gpu-check.json").write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
PY
