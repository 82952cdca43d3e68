#!/usr/bin/env bash
# Copies a work directory back from worker 0 (the one that writes results).
#
#   launch/tpu/fetch.sh --name=eos --zone=us-central2-b --workdir=runs/x [--dest=.] [--dry_run]
source "$(dirname "$0")/lib.sh"
need WORKDIR
gc "${TPU[@]}" scp --recurse "$NAME:eos_jax/$WORKDIR" "$DEST" "${WHERE[@]}" --worker=0
