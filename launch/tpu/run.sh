#!/usr/bin/env bash
# Runs an experiment on every worker of a TPU VM as one distributed JAX program
# (--distributed_auto: JAX finds the workers on Cloud TPU); waits for it to end.
#
#   launch/tpu/run.sh --name=eos --zone=us-central2-b --config=experiments/configs/x.py \
#       --workdir=runs/x [--experiment=train|twins] [--dry_run] [-- --config.lr=0.05 ...]
#
# Only worker 0 writes results; on several hosts checkpoints are saved by all of them, so
# --workdir must be a directory every worker sees (e.g. a gcsfuse mount of a bucket).
source "$(dirname "$0")/lib.sh"
need CONFIG WORKDIR
case "$EXPERIMENT" in train|twins) ;; *) echo "error: --experiment=$EXPERIMENT; allowed: train, twins" >&2; exit 2 ;; esac
args=$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" --distributed_auto "${EXTRA[@]}")
gc "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
  --command="cd eos_jax && .venv/bin/python -m experiments.$EXPERIMENT$args"
