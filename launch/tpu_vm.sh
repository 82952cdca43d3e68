#!/usr/bin/env bash
# Creates a Cloud TPU VM, installs eos_jax on it and starts one run in the background.
# Needs the gcloud CLI, a project with TPU quota, and this repository pushed somewhere the
# VM can clone from (REPO_URL).
#
#   ZONE=us-central2-b TYPE=v4-8 REPO_URL=https://github.com/you/eos_jax.git \
#     launch/tpu_vm.sh eos-run experiments/configs/resnet56_cifar10.py gs://bucket/run1
#
# On TPU, float32 matmuls run in bf16 passes unless matmul precision is 'highest' (the
# default of every config here); the run's fingerprint.json records what was used.
set -euo pipefail
name=${1:?vm name} config=${2:?config file} workdir=${3:?workdir (a gs:// path works)}
ZONE=${ZONE:?set ZONE} TYPE=${TYPE:-v4-8} VERSION=${VERSION:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:?set REPO_URL}
gcloud compute tpus tpu-vm create "$name" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION"
gcloud compute tpus tpu-vm ssh "$name" --zone="$ZONE" --worker=all --command="
  set -e
  git clone $REPO_URL eos_jax && cd eos_jax
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)'
  nohup .venv/bin/python -m experiments.train --config=$config --workdir=$workdir > run.log 2>&1 &
"
echo "started; follow with: gcloud compute tpus tpu-vm ssh $name --zone=$ZONE --command='tail -f eos_jax/run.log'"
