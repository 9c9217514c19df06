#!/usr/bin/env bash
# The attack suite (issue 27; results/robustness/README.md): one simulated malicious client
# (config section `attack`, in-process runs only, for experiments) against the defences
# (`aggregation.norm_bound`, default on) and without them (`aggregation.norm_bound=0`).
#
#   scripts/attack-suite.sh CONFIG OUT [--set key=value ...]
#
# Runs, for every seed in SEEDS (default "0") and every attack in ATTACKS, one run with the
# defences on and one with them off (the clean run `none` too: the defences' cost in an
# honest run), each in OUT/<attack>-<on|off>/seed<S>; runs already finished are kept
# (fedhello run continues a run of the same config). A run that stops because it could
# aggregate nothing (aggregation.max_empty_rounds) is recorded as stopped. Then writes
# OUT/results.md: final test accuracy (and the last round's training loss) per attack,
# defences on and off, averaged over seeds.
# DEFENCES (default "on off") picks the arms, so that a short session can run every
# attack's defended arm first. FEDHELLO (default: fedhello) and PYTHON (default: python)
# name the commands.
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG OUT [--set key=value ...]" >&2
  exit 2
fi
config=$1
out=$2
shift 2
FEDHELLO=${FEDHELLO:-fedhello}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS-0}  # SEEDS= (empty): only rewrite OUT/results.md from the runs there
# kind:factor (see fedhello.federation.attacks)
ATTACKS=${ATTACKS:-"none scale:1e30 scale:-10 noise:1 stats-count:1e9 stats-mean:10 stats-norm:1e30 fisher:1e15"}
mkdir -p "$out"
for seed in $SEEDS; do
  for a in $ATTACKS; do
    kind=${a%%:*}
    factor=${a#*:}
    [ "$kind" = "$a" ] && factor=1
    name=$kind${factor:+_$factor}
    [ "$kind" = none ] && name=none
    extra=()
    [ "$kind" = fisher ] && extra=(--set strategy.fim_source=clients)
    for def in ${DEFENCES:-on off}; do
      dir=$out/$name-$def/seed$seed
      log=$out/$name-$def-seed$seed.log
      [ -f "$dir/summary.json" ] && continue
      [ -f "$log" ] && grep -q '^error: .*max_empty_rounds' "$log" && continue  # stopped: its outcome
      bound=()
      [ "$def" = off ] && bound=(--set aggregation.norm_bound=0)
      echo "== $name, defences $def, seed $seed"
      "$FEDHELLO" run --config "$config" --out "$dir" --overwrite --set "seed=$seed" \
        --set "attack.kind=$kind" --set "attack.factor=$factor" "${extra[@]}" "${bound[@]}" "$@" \
        >"$log" 2>&1
      echo "   exit $? ($(grep '^error:' "$log" | head -1))"
    done
  done
done
"$PYTHON" - "$out" <<'EOF'
import json, pathlib, statistics, sys

out = pathlib.Path(sys.argv[1])
rows = {}
for d in sorted(out.glob("*-o*/seed*")):
    name, _, defences = d.parent.name.rpartition("-")
    summary = d / "summary.json"
    if summary.is_file():
        acc = json.loads(summary.read_text())["final_test_accuracy"]
        last = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
        acc = (acc, last["train_loss"])
    else:
        log = out / f"{d.parent.name}-{d.name}.log"
        if not (log.is_file() and any(x.startswith("error:") and "max_empty_rounds" in x
                                      for x in log.read_text(errors="replace").splitlines())):
            continue  # unfinished (still running, or cut off): not a result
        acc = None  # stopped: aggregated nothing for aggregation.max_empty_rounds rounds
    rows.setdefault(name, {}).setdefault(defences, []).append(acc)


def mean_acc(v):
    done = [a for a, _ in (v or []) if a is not None] if v else []
    return statistics.mean(done) if done else None


def cell(v, clean=None):
    """Mean final accuracy (per seed; the difference from the same arm's clean mean), mean last loss."""
    if not v:
        return "-"
    done = [x for x in v if x is not None]
    txt = ""
    if done:
        m = statistics.mean(a for a, _ in done)
        seeds = ", ".join("stopped" if x is None else f"{100 * x[0]:.2f}" for x in v)
        delta = f"; {100 * (m - clean):+.2f}" if clean is not None else ""
        txt = f"{100 * m:.2f} ({seeds}{delta}) loss {statistics.mean(l for _, l in done):.3f}"
    stopped = len(v) - len(done)
    return (txt + (f" ({stopped}/{len(v)} stopped)" if stopped else "")).strip() + f" [n={len(v)}]"


clean = {arm: mean_acc(rows.get("none", {}).get(arm)) for arm in ("on", "off")}
lines = ["| attack | defences on: final test acc. % (per seed; vs clean) last train loss | defences off |",
         "|---|---|---|"]
for name in sorted(rows, key=lambda n: (n != "none", n)):
    lines.append(f"| {name} | {cell(rows[name].get('on'), clean['on'] if name != 'none' else None)} "
                 f"| {cell(rows[name].get('off'), clean['off'] if name != 'none' else None)} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
