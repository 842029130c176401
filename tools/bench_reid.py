"""Benchmark (not a test): the re-ID step at Market-1501's real settings (ResNet-50, 256x128, P x K = 16 x 4).

  python -m tools.bench_reid [--steps=3] [--batch_ids=16] [--k=4]

Random images and labels (751 identities, Market's training count); prints compile time, the median train step,
images/s and the feature-extraction rate of eval mode, i.e. what one of reid_augment's trainings costs here.
"""

import functools
import time

import jax
import numpy as np
from absl import app, flags

from configs import market1501_reid
from reposedm_jax.reid import train

_STEPS = flags.DEFINE_integer('steps', 3, 'timed steps')
_P = flags.DEFINE_integer('batch_ids', 16, 'identities per batch')
_K = flags.DEFINE_integer('k', 4, 'images per identity')


def main(argv):
  del argv
  rcfg = market1501_reid.get_config().reid
  with rcfg.unlocked():
    rcfg.ids_per_batch, rcfg.images_per_id = _P.value, _K.value
  n_ids, b = 751, _P.value * _K.value
  rng = np.random.default_rng(0)
  batch = {'images': rng.uniform(-1, 1, (b, rcfg.height, rcfg.width, 3)).astype(np.float32),
           'labels': np.repeat(rng.choice(n_ids, _P.value, replace=False), _K.value).astype(np.int32)}
  state = train.init_state(rcfg, n_ids, jax.random.key(0))
  step = jax.jit(functools.partial(train.train_step, rcfg=rcfg, num_ids=n_ids), donate_argnums=0)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  net = train.ReIDNet(n_ids, tuple(rcfg.blocks), last_stride=rcfg.last_stride)
  feats = jax.jit(lambda v, x: net.apply(v, x, train=False)['feature'])
  v = {'params': state['params'], 'batch_stats': state['batch_stats']}
  x = np.resize(batch['images'], (rcfg.eval_batch_size,) + batch['images'].shape[1:])  # one eval batch
  jax.block_until_ready(feats(v, x))
  t0 = time.perf_counter()
  jax.block_until_ready(feats(v, x))
  ext = time.perf_counter() - t0
  dev = jax.devices()[0]
  print(f'{dev.device_kind} x{jax.device_count()} (jax {jax.__version__}): ResNet-50 re-ID at {rcfg.height}x{rcfg.width}, '
        f'batch {b}: first call (compile + step) {first:.1f} s, step {med:.2f} s ({b / med:.1f} images/s); '
        f'features {rcfg.eval_batch_size / ext:.1f} images/s; {rcfg.num_steps} steps = {rcfg.num_steps * med / 3600:.1f} h')


if __name__ == '__main__':
  app.run(main)
