"""Benchmark (not a test): compile time, train step time, images/s, sampling time, peak memory.

  python -m reposedm_jax.bench --config=configs/demo.py
  python -m reposedm_jax.bench --config=configs/deepfashion.py --config.train.batch_size=2 --steps=3

Uses random inputs of the config's shapes, so no dataset is needed. Timing syncs once per
measured block, not per step.
"""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from reposedm_jax import sharding, train
from reposedm_jax import sample as sample_lib
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed train steps.')
_SAMPLE_STEPS = flags.DEFINE_integer('sample_steps', -1, 'Sampler steps to time (-1 = config.sample.num_steps).')
_SAMPLE_BATCH = flags.DEFINE_integer('sample_batch', -1, 'Sampling batch (-1 = device count).')


def peak_memory_gb() -> float:
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Host RSS (KiB -> GiB) on CPU.


def random_batch(config, b, rng):
  h, w = config.data.height, config.data.width
  return {'src_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_img': rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
          'tgt_pose': rng.uniform(0, 1, (b, h, w, 20)).astype(np.float32)}


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  model = factory.build_model(config)
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  tx = train.make_optimizer(config.train)
  repl = sharding.replicated(mesh)
  state = jax.jit(lambda r: train.init_state(model, tx, config, r), out_shardings=repl)(jax.random.key(0))
  state_sharding = jax.tree.map(lambda _: repl, state)
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  rng = np.random.default_rng(0)
  b = config.train.batch_size
  batch = sharding.global_batch(random_batch(config, b, rng), mesh)
  step_fn = train.compile_train_step(model, sched, tx, config, mesh, state_sharding)

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - t0
  state, m = compiled(state, batch, jax.random.key(1))  # Warm-up.
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = compiled(state, batch, jax.random.key(1))
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / _STEPS.value

  n_sample = _SAMPLE_STEPS.value if _SAMPLE_STEPS.value > 0 else config.sample.num_steps
  sb = _SAMPLE_BATCH.value if _SAMPLE_BATCH.value > 0 else jax.device_count()
  sampler = sample_lib.make_sampler(model, sched, config, mesh, num_steps=n_sample)
  sbatch = random_batch(config, sb, rng)
  t0 = time.perf_counter()
  sampler(state['ema_params'], sbatch, jax.random.key(2))
  sample_first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  sampler(state['ema_params'], sbatch, jax.random.key(3))
  sample_s = (time.perf_counter() - t0) / sb

  rows = [('device', f'{jax.devices()[0].device_kind} x{jax.device_count()}'),
          ('resolution', f'{config.data.height}x{config.data.width}'),
          ('params', f'{n_params / 1e6:.2f} M'), ('batch', b), ('dtype', config.model.dtype),
          ('compile train step', f'{compile_s:.1f} s'), ('train step', f'{step_s * 1e3:.0f} ms'),
          ('images/s (train)', f'{b / step_s:.2f}'),
          (f'sample {config.sample.sampler} x{n_sample} + CFG', f'{sample_s:.2f} s/image (batch {sb}; '
                                                                f'first call incl. compile {sample_first_s:.1f} s)'),
          ('peak memory', f'{peak_memory_gb():.2f} GiB ({"device" if jax.devices()[0].platform != "cpu" else "host RSS"})')]
  width = max(len(k) for k, _ in rows)
  for k, v in rows:
    print(f'{k:<{width}} | {v}')


if __name__ == '__main__':
  app.run(main)
