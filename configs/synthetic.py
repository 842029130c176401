"""The synthetic benchmark: B1/B2/RePoseDM ablations at 128x88 on procedural people (GPU, < 1 h).

  python -m reposedm_jax.data.synthetic --out data/synthetic --seed 0 --identities 2000 \
      --views-per-identity 5 --height 128 --width 88
  python -m reposedm_jax.main --config=configs/synthetic.py:variant=b1 --workdir=runs/synth_b1
"""

from configs import base, common


def get_config(arg=None):
  args = common.parse_arg(arg, variant='b1', runlocal=False)
  config = base.get_config()
  config.variant = args['variant']
  config.data.dataset = 'synthetic'
  config.data.root = 'data/synthetic'
  config.data.height, config.data.width = 128, 88
  config.data.worker_count = 8

  m = config.model
  m.model_channels = 64
  m.channel_mult = (1, 2, 2, 4, 4)
  m.num_res_blocks = 2
  m.attention_ds = (4, 8, 16)

  config.rpa.ds = 4  # 128x88 / 4 = 32x22 feature maps, as the paper setting's 256x176 / 8.

  t = config.train
  t.batch_size = 64
  t.num_steps = 20_000
  t.lr = 2e-4
  t.warmup_steps = 500
  t.ema_decay = 0.999
  t.ema_start_step = 1000
  t.sample_every = 2000
  config.sample.num_steps = 50
  config.sample.batch_size = 64
  if args['runlocal']:
    config.data.worker_count = 0
    config.data.height, config.data.width = 64, 44
    m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups = 16, (1, 2), 1, 8
    m.attention_ds = (2,)
    t.batch_size, t.num_steps, t.log_every, t.ckpt_every, t.sample_every = 4, 4, 2, 2, 4
    config.sample.num_steps, config.sample.num, config.sample.batch_size = 4, 4, 4
  return config
