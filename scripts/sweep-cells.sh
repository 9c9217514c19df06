#!/usr/bin/env bash
# Keep a sweep's finished cells in the repository, and put them back, so that a sweep
# run over several sessions (whose run directories do not survive) skips them.
#
#   scripts/sweep-cells.sh save    SWEEP_DIR CELLS_DIR DATA_PATH
#   scripts/sweep-cells.sh restore CELLS_DIR SWEEP_DIR DATA_PATH
#   scripts/sweep-cells.sh table   CELLS_DIR RESULTS_DIR DATA_PATH
#
# A finished cell is <partition>/<strategy>/seed<S>/ with summary.json. Only its records
# travel: config.yaml (data.path written as PATH/TO/DATA), metrics.jsonl and summary.json;
# no checkpoint, adapter, plots or event files. `fedhello sweep` then counts a restored
# cell as done (its config and summary are there), and `fedhello report SWEEP_DIR`
# rebuilds the table from the records.
#
# `table` does that from the kept cells alone: it restores them with CELLS_DIR/sweep.json
# (the whole grid, so that the table says PARTIAL until every cell has finished) into a
# temporary sweep directory, runs `fedhello report` there and copies results.md,
# results.csv and plots/ into RESULTS_DIR. FEDHELLO names the command (default: fedhello).
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 save|restore|table FROM TO DATA_PATH" >&2; exit 2; }
mode=$1 from=${2%/} to=${3%/} data=$4
placeholder="PATH/TO/DATA"
if [ "$mode" = table ]; then
  [ -f "$from/sweep.json" ] || { echo "error: $from/sweep.json (the sweep's grid) is missing" >&2; exit 2; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sweep="$tmp/$(basename "$to")"
  "$0" restore "$from" "$sweep" "$data"
  cp "$from/sweep.json" "$sweep/"
  "${FEDHELLO:-fedhello}" report "$sweep" > /dev/null
  mkdir -p "$to/plots"
  cp "$sweep/results.md" "$sweep/results.csv" "$to/"
  cp "$sweep"/plots/*.png "$to/plots/"
  echo "table: $(head -1 "$to/results.md")"
  exit 0
fi
n=0
for cell in "$from"/*/*/seed*/; do
  cell=${cell%/}
  [ -f "$cell/summary.json" ] && [ -f "$cell/config.yaml" ] || continue
  rel=${cell#"$from"/}
  mkdir -p "$to/$rel"
  cp "$cell/metrics.jsonl" "$cell/summary.json" "$to/$rel/"
  if [ "$mode" = save ]; then
    # config.yaml holds data.path absolute (as fedhello stores it) or, for older cells, as typed
    sed -e "s#^\(  path: \)$data\$#\1$placeholder#" -e "s#^\(  path: \)$(realpath -s -m -- "$data")\$#\1$placeholder#" \
      "$cell/config.yaml" > "$to/$rel/config.yaml"
  elif [ "$mode" = restore ]; then
    sed "s#^\(  path: \)$placeholder\$#\1$data#" "$cell/config.yaml" > "$to/$rel/config.yaml"
  else
    echo "unknown mode $mode (save or restore)" >&2; exit 2
  fi
  n=$((n + 1))
done
echo "$mode: $n finished cells from $from to $to"
