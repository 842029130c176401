"""The re-ID augmentation table on synthetic Market-1501 data on a CPU (`make reid-demo`).

`:generator` is the pose-transfer model's config (B1 on 64x32 synthetic Market data, PATN files), the default
the re-ID table's (ResNet-50 on the images shrunk to 32x16, 200 steps: ~0.5 s a step on 2 CPU cores, where 64x32
took 3.8 s). Paths are the Makefile's.
"""

from configs import common, demo, market1501_reid

ROOT = 'runs/reid_demo/data'


def get_config(arg=None):
  args = common.parse_arg(arg, generator=False)
  if args['generator']:
    config = demo.get_config('variant=b1')
    d = config.data
    d.dataset, d.format, d.csv_prefix, d.root = 'market1501', 'patn', 'market', ROOT
    d.ann_height, d.ann_width, d.height, d.width = 64, 32, 64, 32
    config.train.num_steps, config.train.sample_every = 600, 600
    return config
  config = market1501_reid.get_config()
  d = config.data
  d.root, d.ann_height, d.ann_width, d.height, d.width = ROOT, 64, 32, 64, 32
  d.worker_count = 0
  r = config.reid
  r.height, r.width = 32, 16
  r.ids_per_batch, r.images_per_id = 8, 4
  r.num_steps, r.warmup_steps, r.decay_steps = 200, 20, (150,)
  r.log_every, r.ckpt_every = 50, 100
  r.generator = 'runs/reid_demo/generator'
  r.generate_batch = 32
  return config
