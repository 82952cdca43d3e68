#!/usr/bin/env bash
# Runs one recipe for each value of one config field, one after another, each in its own
# work directory (re-running resumes unfinished runs and skips finished ones).
#
#   launch/local_sweep.sh experiments/configs/default.py optimizer.lr "0.05 0.1 0.2" workdirs/lr_sweep
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 CONFIG FIELD \"VALUES\" WORKDIR_ROOT [extra flags...]" >&2
  exit 2
fi
config=$1 field=$2 values=$3 root=$4
shift 4
PY=${PY:-.venv/bin/python}
for value in $values; do
  dir="$root/${field}=${value}"
  if [ -f "$dir/summary.json" ]; then
    echo "skip (finished): $dir"
    continue
  fi
  "$PY" -m experiments.train --config="$config" --workdir="$dir" "--config.$field=$value" "$@"
done
