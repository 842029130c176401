"""Demo: a small built-in synthetic dataset that trains on 2 CPU cores in minutes. `make demo` runs the full
RePoseDM (`:variant=full`; the default variant here stays b1, which the tests build on):

  python -m reposedm_jax.data.synthetic --out runs/demo/data --seed 0 --identities 60 \
      --views-per-identity 5 --height 64 --width 44
  python -m reposedm_jax.main --config=configs/demo.py:variant=full --workdir=runs/demo --config.mode=train_pose
  python -m reposedm_jax.main --config=configs/demo.py:variant=full --workdir=runs/demo
  python -m reposedm_jax.main --config=configs/demo.py:variant=full --workdir=runs/demo --config.mode=sample
  python -m reposedm_jax.main --config=configs/demo.py:variant=full --workdir=runs/demo/judge \
      --config.mode=train_pose --config.seed=1
  python -m reposedm_jax.main --config=configs/demo.py:variant=full --workdir=runs/demo --config.mode=eval \
      --config.eval.hrnet_dir=runs/demo/judge/pose "--config.eval.pose_judges=('hrnet',)"
"""

from configs import base, common


def get_config(arg=None):
  args = common.parse_arg(arg, variant='b1', runlocal=False)
  config = base.get_config()
  config.variant = args['variant']
  config.data.dataset = 'synthetic'
  config.data.root = 'runs/demo/data'
  config.data.height, config.data.width = 64, 44
  config.data.max_test_pairs = 32

  m = config.model
  # Narrow full-resolution levels: on 2 CPU cores the 64x44 convolutions dominate the step time.
  m.model_channels = 16
  m.channel_mult = (1, 2, 4, 4)
  m.num_res_blocks = 1
  m.attention_ds = (4, 8)
  m.dropout = 0.0
  m.norm_groups = 8

  r = config.rpa  # variant=b2: RPA at 1/4 resolution (16x11), windows global / 5 / 3.
  r.dim, r.ds, r.heads, r.windows, r.radius = 32, 4, 4, (0, 5, 3), 2
  # 100 RPA-only steps before the U-Net trains: on this data +0.063 SSIM / -0.024 LPIPS over end-to-end
  # training from step 0 (WORKSPACE.md, issue-13 measurements).
  r.pretrain_steps = 100
  # RPA refines a keypoint pre-warp instead of starting from the identity (models/keypoint_flow.py): from
  # scratch at 1100 steps SSIM 0.384 / LPIPS 0.213 against 0.293 / 0.307 (WORKSPACE.md, session 9).
  r.init_flow = 'keypoints'
  # RPA is frozen after its pre-training: the joint step then runs RPA forward only (train.py), 601-618 ms a
  # step against 688-848 ms, compiled in 59-62 s against 73-86 s (tools.bench_train, this 2-core VM,
  # 2026-12-07, runs in turn; WORKSPACE.md, session 22). Its effect on quality is not measured apart: the
  # fresh-clone figures below change it together with the steps and the learning rate.
  r.lr_mult_after_pretrain = 0.0
  # N = 2 recurrent updates after F^0 (the paper: 5). On the demo's test pairs, starting from the keypoint pre-warp,
  # the updates after F^0 change the aligned source's L1 on the target's body by 0.002 (0.3231 -> 0.3208 over
  # F^0..F^5), while each costs ~75 ms of the ~890 ms training step: N = 2 trains at 1.40-1.53 steps/s against
  # 0.83-1.09 (WORKSPACE.md, session 20).
  # The ablation pins the paper's N = 5 for its B2 / RePoseDM rows (ablation/plan.py).
  r.iterations = 2

  # The full RePoseDM predicts v around RPA's aligned source (gaussian.eps_output): on the demo's 32 test pairs
  # SSIM 0.486 -> 0.571, LPIPS 0.186 -> 0.124, FID 484 -> 444, judge PCK@0.1 0.787 -> 0.773 against the paper's
  # eps at the same 1100 steps (WORKSPACE.md, session 19). B1 / B2 keep eps (the ablation pins eps for all rows).
  config.diffusion.prediction = 'v_aligned' if config.variant == 'full' else 'eps'

  t = config.train
  t.batch_size = 8
  # 800 steps (100 of them RPA pre-training) at lr 2e-3. Fresh clones on this 2-core VM, 2026-12-07/08, 32 test
  # pairs (WORKSPACE.md, "Demo time (session 22)"): 800 steps SSIM 0.471, LPIPS 0.141, judge PCK@0.1 0.756, the
  # demo 15 m 16 s; 750 steps 0.441 / 0.149 / 0.729 in 18 m 08 s and 650 steps (guide 450) 0.389 / 0.172 / 0.709
  # in 16 m 13 s, both in slower hours of the host (~20 % slower). Fewer steps cost more quality than the host's
  # swings cost time; 1100 steps at lr 1e-3 gave 0.555 / 0.124 / 0.758 in 22 m 11 s.
  t.num_steps = 800
  t.lr = 2e-3
  t.warmup_steps = 100
  t.ema_decay = 0.995
  t.ema_start_step = 100
  t.log_every = 50
  t.ckpt_every = 400
  # No grids during training: each compiled its own sampler (~50 s of the demo at step 550, again at the end),
  # and `make demo`'s sample stage writes the grids straight after training.
  t.sample_every = 10**9

  p = config.pose  # mode=train_pose: the small HigherHRNet (make demo's pose judge; guides variant=full).
  p.arch = 'small'
  # 600 steps: the guide's held-out PCK@0.1 0.789 at 300, 0.838 at 450, 0.852 at 600 (session 22's fresh clones,
  # 3.9-6.9 steps/s); `make demo` trains the judge (600 steps, seed 1) beside the generator, where it costs little wall
  # time. The ablation's estimators used 1500 (0.86-0.90).
  p.batch_size, p.num_steps, p.warmup_steps = 16, 600, 100
  p.log_every, p.ckpt_every, p.eval_every = 100, 300, 300

  s = config.sample
  # DDPM with the learned variance clips x0 at each step; PIDM's DDIM does not, which a model trained
  # for minutes does not survive (measured: SSIM 0.30 DDIM vs 0.49 DDPM at 1500 steps).
  s.sampler = 'ddpm'
  # 25 respaced steps: on the demo's 32 test pairs (session 19's N = 5 checkpoint) SSIM 0.571 -> 0.560, LPIPS
  # 0.124 -> 0.124, judge PCK@0.1 0.773 -> 0.767 against 50, at half the sampling time (WORKSPACE.md, session 20).
  s.num_steps = 25
  # The fixed small variance (beta~_t) instead of the learned one: the demo's 1100-step model's variance head
  # leaves high-frequency noise in its samples; on its 32 test pairs SSIM 0.397 -> 0.486, LPIPS 0.211 -> 0.186,
  # judge PCK@0.1 0.765 -> 0.787, at no extra cost (DDPM 200 with the learned variance: 0.486 / 0.182 / 0.779
  # at 4x the sampling time; WORKSPACE.md, session 17).
  s.ddpm_variance = 'small'
  s.batch_size = 16
  if args['runlocal']:  # Smoke run for tests: seconds, not minutes.
    t.num_steps, t.log_every, t.ckpt_every, t.sample_every = 4, 2, 2, 4
    r.pretrain_steps = 0
    s.num_steps, s.num, s.batch_size = 4, 8, 8
    p.num_steps, p.log_every, p.ckpt_every, p.eval_every = 2, 1, 2, 0
  return config
