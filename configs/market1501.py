"""Market-1501 128x64 in the PATN CSV convention (market-annotation-*.csv, market-pairs-*.csv).

  python -m reposedm_jax.main --config=configs/market1501.py --workdir=runs/market \
      --config.data.root=/data/market1501
"""

from configs import base, common


def get_config(arg=None):
  args = common.parse_arg(arg, variant='b1', runlocal=False)
  config = base.get_config()
  config.variant = args['variant']
  config.data.dataset = 'market1501'
  config.data.format = 'patn'
  config.data.csv_prefix = 'market'
  config.data.ann_height, config.data.ann_width = 128, 64
  config.data.height, config.data.width = 128, 64
  config.data.worker_count = 16
  # Five levels down to 8x4; attention at 32x16, 16x8 and 8x4.
  config.model.channel_mult = (1, 2, 2, 4, 4)
  config.model.attention_ds = (4, 8, 16)
  config.train.batch_size = 32
  config.sample.num_steps = 100
  # Market-1501's Table 1 also reports Mask-SSIM / Mask-LPIPS (PATN's limb mask of the target pose).
  config.eval.masked_metrics = True
  if args['runlocal']:
    config.data.worker_count = 0
    m = config.model
    m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups = 16, (1, 2), 1, 8
    m.attention_ds = (2,)
    config.train.batch_size, config.train.num_steps = 2, 2
  return config
