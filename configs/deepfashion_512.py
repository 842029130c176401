"""DeepFashion 512x352 (paper Table 1, high resolution).

  python -m reposedm_jax.main --config=configs/deepfashion_512.py --workdir=runs/df512 \
      --config.data.root=/data/deepfashion
"""

from configs import common, deepfashion


def get_config(arg=None):
  config = deepfashion.get_config(arg)
  config.data.height, config.data.width = 512, 352
  if not common.parse_arg(arg, variant='b1', runlocal=False)['runlocal']:  # runlocal keeps deepfashion's tiny net
    # One more level so attention still runs at 32/16/8 of a 256 image's scale (factors 16/32/64).
    config.model.channel_mult = (1, 1, 2, 2, 4, 4, 4)
    config.model.attention_ds = (16, 32, 64)
  return config
