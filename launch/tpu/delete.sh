#!/usr/bin/env bash
# Deletes the TPU VM (fetch results first: its disks go with it).
#
#   launch/tpu/delete.sh --name=eos --zone=us-central2-b [--dry_run]
source "$(dirname "$0")/lib.sh"
gc "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
