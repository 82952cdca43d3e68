#!/usr/bin/env bash
# Creates a Cloud TPU VM (single host, e.g. v4-8, or multi-host, e.g. v4-32: every worker
# gets the same set-up) and installs eos_jax with the pinned jax[tpu] on all workers.
#
#   launch/tpu/create.sh --name=eos --zone=us-central2-b --type=v4-8 \
#       --repo_url=https://github.com/you/eos_jax.git [--ref=main] [--project=P] [--dry_run]
#
# --dry_run prints the gcloud commands instead of running them.
source "$(dirname "$0")/lib.sh"
need REPO_URL
gc "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" --version="$VERSION"
gc "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="set -e; \
git clone $REPO_URL eos_jax && cd eos_jax && git checkout $REF && python3 -m venv .venv && \
.venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'"
