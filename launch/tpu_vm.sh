#!/usr/bin/env bash
# All workers of a Cloud TPU VM (pod slice) at once, from your workstation.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_vm.sh --config=configs/deepfashion.py:variant=full \
#       --workdir=/mnt/shared/runs/df256_full --config.data.root=/mnt/shared/data/deepfashion [--config.k=v ...]
#
# Runs `python -m reposedm_jax.main <args>` on every worker (gcloud ... ssh --worker=all), arguments unchanged;
# jax.distributed is initialised by JAX's TPU detection (REPOSEDM_DISTRIBUTED=auto). Each worker needs the
# repository at REMOTE_REPO with its venv, and --workdir / the data on a filesystem all workers mount (NFS,
# Filestore). A preempted slice, once recreated, resumes from --workdir when this command is run again.
# Environment: TPU_NAME, ZONE (required); PROJECT (optional); REMOTE_REPO (default ~/reposedm-jax);
# REMOTE_PYTHON (default REMOTE_REPO/.venv/bin/python).
set -euo pipefail

: "${TPU_NAME:?tpu_vm.sh: set TPU_NAME to the TPU VM (pod slice) name}"
: "${ZONE:?tpu_vm.sh: set ZONE to the zone of the TPU, e.g. us-east5-a}"
command -v gcloud >/dev/null || { echo "tpu_vm.sh: gcloud is not installed or not on PATH" >&2; exit 2; }
[[ " $* " == *" --config="* ]] || { echo "tpu_vm.sh: missing --config=configs/<name>.py" >&2; exit 2; }
[[ " $* " == *" --workdir="* ]] || { echo "tpu_vm.sh: missing --workdir=DIR (shared by all workers)" >&2; exit 2; }
REMOTE_REPO="${REMOTE_REPO:-~/reposedm-jax}"
REMOTE_PYTHON="${REMOTE_PYTHON:-$REMOTE_REPO/.venv/bin/python}"

# Quote each argument once more for the remote shell, so values with spaces or parentheses survive.
args="$(printf '%q ' "$@")"
remote="cd $REMOTE_REPO && REPOSEDM_DISTRIBUTED=auto $REMOTE_PYTHON -m reposedm_jax.main $args"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
    --worker=all --command="$remote"
