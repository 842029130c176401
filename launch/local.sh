#!/usr/bin/env bash
# One machine, all of its accelerators, one process (JAX drives every local GPU from it).
#
#   launch/local.sh --config=configs/deepfashion.py:variant=b2 --workdir=runs/df256_b2 \
#       --config.data.root=/data/deepfashion [--config.k=v ...]
#
# Arguments go to `python -m reposedm_jax.main` unchanged. Rerunning the same command resumes from the
# latest checkpoint in --workdir (also after Ctrl-C / SIGTERM, which save one first).
# Environment: PYTHON (default: the repository's .venv), CUDA_VISIBLE_DEVICES (optional subset of GPUs),
# JAX_COMPILATION_CACHE_DIR (default: <workdir>/jax_cache, so a restart skips most compilation).
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || { echo "local.sh: PYTHON=$PYTHON is not executable; set PYTHON=/path/to/python" >&2; exit 2; }

workdir=""
has_config=0
prev=""
for arg in "$@"; do
  case "$arg" in
    --workdir=*) workdir="${arg#--workdir=}" ;;
    --config=*) has_config=1 ;;
  esac
  [[ "$prev" == "--workdir" ]] && workdir="$arg"
  [[ "$prev" == "--config" ]] && has_config=1
  prev="$arg"
done
[[ $has_config == 1 ]] || { echo "local.sh: missing --config=configs/<name>.py" >&2; usage; }
[[ -n "$workdir" ]] || { echo "local.sh: missing --workdir=DIR" >&2; usage; }

export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$workdir/jax_cache}"
export REPOSEDM_DISTRIBUTED="${REPOSEDM_DISTRIBUTED:-off}"  # One process: never wait for a coordinator.
cd "$REPO"
exec "$PYTHON" -m reposedm_jax.main "$@"
