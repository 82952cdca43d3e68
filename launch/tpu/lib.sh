# Shared by the launch/tpu scripts: flag parsing and `gc`, which runs a gcloud command or,
# with --dry_run, prints it (shell-quoted, one per line) without running anything.
set -euo pipefail
NAME="" ZONE="" TYPE="v4-8" VERSION="tpu-ubuntu2204-base" PROJECT="" DRY_RUN=0
REPO_URL="" REF="main" CONFIG="" WORKDIR="" EXPERIMENT="train" DEST="." EXTRA=()
usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME=${1#*=} ;; --zone=*) ZONE=${1#*=} ;; --type=*) TYPE=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;; --project=*) PROJECT=${1#*=} ;;
    --repo_url=*) REPO_URL=${1#*=} ;; --ref=*) REF=${1#*=} ;; --config=*) CONFIG=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;; --experiment=*) EXPERIMENT=${1#*=} ;; --dest=*) DEST=${1#*=} ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument '$1' (see $0 --help)" >&2; exit 2 ;;
  esac
  shift
done
need() { for v in "$@"; do [ -n "${!v}" ] || { echo "error: --$(echo "$v" | tr A-Z a-z) is required" >&2; exit 2; }; done; }
need NAME ZONE
TPU=(compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
gc() {
  if [ "$DRY_RUN" = 1 ]; then quoted "gcloud" "$@"; else gcloud "$@"; fi
}
# Prints a command line that a shell would read back as the same words.
quoted() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./=:,@+%-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}
# The JAX version every worker installs: the one pinned in requirements.txt.
JAX_VERSION=$(grep '^jax==' "$(dirname "$0")/../../requirements.txt" | cut -d= -f3)
