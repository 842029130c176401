"""Input-pipeline throughput (not a test): training examples/s of the grain loader.

  python -m tools.bench_input --config=configs/demo.py --batches=50
  python -m tools.bench_input --config=configs/deepfashion.py --config.data.root=... \
      --config.data.worker_count=8
"""

import time

from absl import app, flags
from ml_collections import config_flags

from reposedm_jax.data import dataset, pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_BATCHES = flags.DEFINE_integer('batches', 50, 'Batches to time after one warm-up batch.')


def main(argv):
  del argv
  config = _CONFIG.value
  t0 = time.perf_counter()
  split = dataset.load_split(config.data, 'train')
  load_s = time.perf_counter() - t0
  it = iter(pipeline.make_train_loader(config.data, split, global_batch=config.train.batch_size, seed=0))
  next(it)
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  dt = time.perf_counter() - t0
  n = _BATCHES.value * config.train.batch_size
  print(f'split load + validation: {load_s:.2f} s for {len(split)} pairs')
  # A pair reads and renders 2 images; with both_directions it yields 2 examples, else 1.
  pairs = n // (2 if config.data.both_directions else 1)
  print(f'{config.data.height}x{config.data.width}, workers={config.data.worker_count}: '
        f'{n / dt:.1f} training examples/s, {2 * pairs / dt:.1f} images read+augmented+rendered/s')


if __name__ == '__main__':
  app.run(main)
