"""DeepFashion 256x176 (paper Table 1), PIDM-size network; B1 = PIDM.

  python -m reposedm_jax.main --config=configs/deepfashion.py:variant=b1 --workdir=runs/df256 \
      --config.data.root=/data/deepfashion
  # from PIDM's LMDB instead of the img/ tree:
  ... --config.data.image_source=lmdb --config.data.lmdb_path=/data/deepfashion/256-256
  # sample the test set with 100 DDIM steps and CFG 2, then evaluate:
  ... --config.mode=sample ;  ... --config.mode=eval
"""

from configs import base, common


def get_config(arg=None):
  args = common.parse_arg(arg, variant='b1', runlocal=False)
  config = base.get_config()
  config.variant = args['variant']
  config.data.dataset = 'deepfashion'
  config.data.format = 'pidm'
  config.data.height, config.data.width = 256, 176
  config.data.worker_count = 16
  # Paper App. 8: AdamW lr 1e-4, batch 8, 300K iterations, EMA 0.9999; model = PIDM's.
  config.train.batch_size = 8
  config.train.num_steps = 300_000
  config.sample.num_steps = 100
  if args['runlocal']:
    config.data.worker_count = 0
    m = config.model
    m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups = 16, (1, 2, 2), 1, 8
    m.attention_ds = (4,)
    config.train.batch_size, config.train.num_steps = 2, 2
    config.sample.num_steps, config.sample.num, config.sample.batch_size = 2, 2, 2
  return config
