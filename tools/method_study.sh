#!/usr/bin/env bash
# The equal-steps measurements behind issue 13's defaults (demo data, 2-core CPU). Resumable: each stage
# skips what exists. Usage: tools/method_study.sh STEPS (default 400). Validation = runs/val_data (seed 1
# identities, never the test pairs).
set -u
cd "$(dirname "$0")/.."
STEPS=${1:-400}
export XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_COMPILATION_CACHE_DIR=$PWD/.jax_cache \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
PY=.venv/bin/python
M="$PY -m reposedm_jax.main"
OUT=runs/study13
VAL="--config.data.root=runs/val_data --config.data.max_test_pairs=32"
test -f runs/val_data/test_pairs.txt || $PY -m reposedm_jax.data.synthetic --out runs/val_data --seed 1 \
  --identities 30 --views-per-identity 5 --height 64 --width 44 --test-fraction 1.0
run() {  # name, config arg, extra overrides...
  local name=$1 cfg=$2; shift 2
  local wd=$OUT/$name
  # Always (re)run training: it resumes from the workdir's checkpoint and returns at once when complete
  # (train_summary.json also exists after a preemption, so it is not a completion marker).
  $M --config=configs/demo.py:$cfg --workdir=$wd --config.train.sample_every=100000 "$@" || return 1
  test -f $wd/samples/manifest_p0.jsonl || $M --config=configs/demo.py:$cfg --workdir=$wd --config.mode=sample $VAL \
    --config.sample.rpa_strips=False "$@" || return 1
  test -f $wd/eval/metrics.json || $M --config=configs/demo.py:$cfg --workdir=$wd --config.mode=eval $VAL \
    "--config.eval.pose_judges=()" --config.eval.fid_reference=test_targets "$@"
}
run b1 variant=b1 --config.train.num_steps=$STEPS
P=100  # RPA-only pre-training steps (cheap), then $STEPS diffusion steps
run b2_input variant=b2 --config.rpa.aligned_path=input --config.rpa.pretrain_steps=$P --config.train.num_steps=$((STEPS+P))
run b2_tokens variant=b2 --config.rpa.aligned_path=tokens --config.rpa.pretrain_steps=$P --config.train.num_steps=$((STEPS+P))
run b2_replace variant=b2 --config.rpa.aligned_path=replace --config.rpa.pretrain_steps=$P --config.train.num_steps=$((STEPS+P))
