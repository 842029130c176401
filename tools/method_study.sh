#!/usr/bin/env bash
# The equal-steps measurements behind issue 13's defaults (demo data, 2-core CPU). Resumable: every stage
# skips what exists (training always reruns: it resumes from its checkpoint and returns at once when done).
#
# Usage: tools/method_study.sh [BASE] [FT] [PART]   (defaults 800 400 all)
#   PART: base | a | b | c | modes | blur | kp | all. After `base`, `a` (B1 control, B2-input, the PIF sweep) and
#   `b` (B2-tokens, then `modes` and `c`) touch disjoint workdirs, so two processes can run them side by side.
#   c: the RPA switches; aux: the auxiliary loss on all pixels; modes: the PIF training modes (sampled at S_MODE, gradient blur B_MODE);
#   kp: B2 with the keypoint pre-warp against B1, both from scratch, and PIF on it (part_kp);
#   blur: the low-passed-gradient sweep (PIF_BLUR_SWEEP="s:t_max:blur ...", blur in pixels at 64x44).
#   1. B1 trained from scratch for BASE steps (seed 0, demo data).
#   2. Each variant starts from that B1 (--config.init_from=<B1 workdir>: its EMA; b2 / full start at B1's
#      function) and trains FT more diffusion steps with the same seed, data order and recipe; `b1_ft` is the
#      control (B1 restarted the same way), so every row has had BASE + FT diffusion steps.
#   3. PIF on top of B2-input: a guidance-scale x t-window sweep at sampling, and the three training modes
#      (PIF_FT more steps from the B2-input run).
# Every model is sampled on 32 pairs of a *validation* set (runs/val_data: 30 identities of generator seed 1,
# never the demo test pairs) with DDPM 50 + CFG 2 and the same sampling seed, and evaluated with SSIM / LPIPS /
# FID(32) and an independent pose judge (HigherHRNet trained from seed 1; the guiding one is seed 0).
# `python tools/method_study_table.py` prints the table.
set -u
cd "$(dirname "$0")/.."
BASE=${1:-800}
FT=${2:-400}
PART=${3:-all}
PIF_FT=${PIF_FT:-200}
P=100  # RPA-only pre-training steps inside FT's budget of the `_pre` runs (U-Net frozen meanwhile)
export XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_COMPILATION_CACHE_DIR=$PWD/.jax_cache \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
PY=.venv/bin/python
M="$PY -m reposedm_jax.main"
# The settings issue 13 measured with, whatever configs/demo.py defaults to now (eps, N = 5 RPA updates, DDPM 50).
PIN="--config.diffusion.prediction=eps --config.rpa.iterations=5 --config.sample.num_steps=50"
NOGRID=--config.train.sample_every=1000000
OUT=runs/study13
VAL="--config.data.root=runs/val_data --config.data.max_test_pairs=32"
JUDGE="--config.eval.hrnet_dir=$OUT/judge/pose --config.eval.pose_judges=('hrnet',) --config.eval.fid_reference=test_targets"
GUIDE="--config.pose.checkpoint=$OUT/guide/pose"
test -f runs/demo/data/test_pairs.txt || $PY -m reposedm_jax.data.synthetic --out runs/demo/data --seed 0 \
  --identities 60 --views-per-identity 5 --height 64 --width 44
test -f runs/val_data/test_pairs.txt || $PY -m reposedm_jax.data.synthetic --out runs/val_data --seed 1 \
  --identities 30 --views-per-identity 5 --height 64 --width 44 --test-fraction 1.0
# The pose estimators (demo recipe, 600 steps): seed 0 guides, seed 1 judges.
test -f $OUT/guide/pose/pose_eval.json || $M --config=configs/demo.py $PIN --workdir=$OUT/guide --config.mode=train_pose || exit 1
test -f $OUT/judge/pose/pose_eval.json || $M --config=configs/demo.py $PIN --workdir=$OUT/judge --config.mode=train_pose \
  --config.seed=1 || exit 1

sample_eval() {  # workdir, config arg, extra overrides (sampling / model switches)...
  local wd=$1 cfg=$2; shift 2
  test -f $wd/samples/manifest_p0.jsonl || $M --config=configs/demo.py:$cfg $PIN --workdir=$wd --config.mode=sample $VAL \
    --config.sample.rpa_strips=False "$@" || return 1
  test -f $wd/eval/metrics.json || $M --config=configs/demo.py:$cfg $PIN --workdir=$wd --config.mode=eval $VAL $JUDGE "$@"
}
guide_judged() {  # run name: its samples read by the *guiding* estimator (what guidance optimised)
  local name=$1
  test -f $OUT/guide_judged/$name/metrics.json || $PY -m reposedm_jax.evaluation --dataset synthetic --no-fid \
    --generated $OUT/$name/samples --pairs $OUT/$name/samples/manifest_p0.jsonl --reference runs/val_data \
    --keypoints runs/val_data --out $OUT/guide_judged/$name --set eval.hrnet_dir=$OUT/guide/pose \
    --set "eval.pose_judges=('hrnet',)"
}
run() {  # name, config arg, extra overrides...
  local name=$1 cfg=$2; shift 2
  $M --config=configs/demo.py:$cfg $PIN --workdir=$OUT/$name $NOGRID "$@" || return 1
  sample_eval $OUT/$name $cfg "$@"
}
FROM_B1="--config.init_from=$OUT/b1"
test "$PART" = kp || test -f $OUT/b1/eval/metrics.json || run b1 variant=b1 --config.train.num_steps=$BASE || exit 1
frac() { awk "BEGIN { print $1 / 64 }"; }  # blur in pixels of the 64x44 images -> pif.grad_blur (x height)
S_MODE=${S_MODE:-1}  # the guidance scale and gradient blur the training modes are sampled (literal: trained) with
B_MODE=${B_MODE:-0}  # pixels
part_a() {
  run b1_ft variant=b1 $FROM_B1 --config.train.num_steps=$FT
  run b2_input_pre variant=b2 $FROM_B1 --config.rpa.aligned_path=input --config.rpa.pretrain_steps=$P \
    --config.train.num_steps=$((FT+P)) || return 1
  part_pif ${PIF_SWEEP:-0:999 1:999 0.3:999 0.1:999 0.03:999 0.3:300 1:300}
}
part_pif() {  # PIF at sampling on B2-input's weights (variant=full reads the b2 tree as it is): s:t_max[:blur].
  local st s t b name
  for st in "$@"; do
    IFS=: read -r s t b <<< "$st"
    b=${b:-0}
    name=pif_s${s}_t$t
    test "$b" = 0 || name=${name}_b$b
    sample_eval $OUT/$name variant=full --config.init_from=$OUT/b2_input_pre $GUIDE \
      --config.rpa.aligned_path=input --config.pif.sample_scale=$s --config.pif.sample_t_max=$t \
      --config.pif.grad_blur=$(frac $b) && guide_judged $name
  done
}
part_b() {
  run b2_tokens_pre variant=b2 $FROM_B1 --config.rpa.aligned_path=tokens --config.rpa.pretrain_steps=$P \
    --config.train.num_steps=$((FT+P))
  # The training modes start from part a's B2-input run: wait for it.
  until test -f $OUT/b2_input_pre/eval/metrics.json; do sleep 60; done
  part_modes
  part_c
}
part_modes() {  # PIF_FT more steps from B2-input per mode (off = the control), sampled at S_MODE / B_MODE;
  # each also unguided (s = 0): what the training itself did, and off:0 is the control of the guidance.
  local ms mode s wd
  for ms in off:$S_MODE off:0 literal:$S_MODE literal:0 penalty:$S_MODE penalty:0; do
    mode=${ms%:*} s=${ms#*:} wd=$OUT/mode_${ms%:*}
    $M --config=configs/demo.py:variant=full $PIN --workdir=$wd $NOGRID --config.init_from=$OUT/b2_input_pre $GUIDE \
      --config.rpa.aligned_path=input --config.rpa.pretrain_steps=0 --config.pif.train_mode=$mode --config.pif.grad_blur=$(frac $B_MODE) \
      --config.train.num_steps=$PIF_FT || continue
    sample_eval $wd/s$s variant=full --config.init_from=$wd $GUIDE --config.rpa.aligned_path=input \
      --config.pif.sample_scale=$s --config.pif.grad_blur=$(frac $B_MODE)
  done
}
part_c() {  # RPA switches: no pre-training, and the first reading (encoder on the warped source only).
  run b2_input variant=b2 $FROM_B1 --config.rpa.aligned_path=input --config.rpa.pretrain_steps=0 \
    --config.train.num_steps=$FT
  run b2_replace_pre variant=b2 $FROM_B1 --config.rpa.aligned_path=replace --config.rpa.pretrain_steps=$P \
    --config.train.num_steps=$((FT+P))
}
part_aux() {  # the auxiliary L1 on all pixels, not only the target person where the warp sampled inside the frame
  run b2_input_pre_auxall variant=b2 $FROM_B1 --config.rpa.aligned_path=input --config.rpa.pretrain_steps=$P \
    --config.rpa.aux_region=all --config.rpa.aux_in_frame=False --config.train.num_steps=$((FT+P))
}
part_kp() {  # session 9: B2 with RPA started from the keypoint pre-warp (rpa.init_flow=keypoints), trained
  # from scratch with the demo recipe (1100 steps, the first 100 RPA-only), PIF at sampling on its weights
  # (KP_PIF="s:blur_px ..."), and B1 from scratch with the same recipe.
  local sb s b name
  run b2_kp variant=b2 --config.rpa.init_flow=keypoints || return 1
  for sb in ${KP_PIF:-3:2 1:2}; do
    s=${sb%:*} b=${sb#*:} name=pif_kp_s${s}_b$b
    sample_eval $OUT/$name variant=full --config.init_from=$OUT/b2_kp $GUIDE --config.rpa.init_flow=keypoints \
      --config.pif.sample_scale=$s --config.pif.grad_blur=$(frac $b) && guide_judged $name
  done
  guide_judged b2_kp
  test "${KP_B1:-1}" = 0 || run b1_scratch variant=b1  # KP_B1=0: only the PIF sweep (B1's row exists)
}
case $PART in
  kp) part_kp ;;
  base) ;;
  a) part_a ;;
  b) part_b ;;
  c) part_c ;;
  aux) part_aux ;;
  modes) part_modes ;;
  blur) part_pif ${PIF_BLUR_SWEEP:-1:999:2 0.3:999:2 3:999:2} ;;
  all) part_a; part_b ;;
  *) echo "PART must be base, a, b, c, aux, modes, blur, kp or all, not $PART" >&2; exit 2 ;;
esac
