#!/usr/bin/env bash
# Submits launch/slurm/train.sbatch: one process per GPU on --nodes nodes.
#
#   launch/slurm/submit.sh --nodes=2 --gpus_per_node=4 [--partition=gpu] [--dry_run] \
#       -- --config=experiments/configs/resnet56_cifar10.py --workdir=/shared/runs/r56
#
# Run it from the repository root (with .venv holding the CUDA build of the pinned jax).
# --dry_run prints the sbatch command instead of submitting it.
set -euo pipefail
NODES=1 GPUS=1 PARTITION="" DRY_RUN=0 ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes=*) NODES=${1#*=} ;; --gpus_per_node=*) GPUS=${1#*=} ;;
    --partition=*) PARTITION=${1#*=} ;; --dry_run) DRY_RUN=1 ;;
    --) shift; ARGS=("$@"); break ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    *) echo "error: unknown argument '$1' (see $0 --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in NODES GPUS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "error: ${v,,}=${!v} must be an integer >= 1" >&2; exit 2; }
done
cmd=(sbatch --nodes="$NODES" --ntasks-per-node="$GPUS" --gpus-per-node="$GPUS"
  ${PARTITION:+--partition="$PARTITION"} "$(dirname "$0")/train.sbatch" "${ARGS[@]}")
if [ "$DRY_RUN" = 1 ]; then printf '%s\n' "${cmd[*]}"; else "${cmd[@]}"; fi
