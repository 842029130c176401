"""Benchmark (not a test): latent vs pixel mode, side by side in one process, at the paper's 256x176.

  python -m tools.bench_latent [--variant=b1] [--batch=1] [--steps=3] [--json=out.json]

Rows (random weights and inputs, so no dataset or VAE file is needed; SD's kl-f8 architecture for the VAE):
  pixel        configs/deepfashion.py: PIDM's U-Net on 256x176 images
  latent       configs/deepfashion_latent.py: the U-Net on 32x22x4 latents, the frozen VAE encoding source and
               target inside the step (latent.Space.model_batch)
  latent+cache the same network and step on latents given as inputs: what a cache of the frozen encoder's
               outputs (computed once per image) would leave
  VAE encode   the encode of the step's two images alone
Step times are medians over --steps calls after a warm-up; memory is XLA's buffer analysis of each compiled step.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags

from configs import deepfashion, deepfashion_latent
from reposedm_jax import latent, sharding, train, train_state
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from tools import bench_inputs

_VARIANT = flags.DEFINE_enum('variant', 'b1', ['b1', 'b2'], 'model variant (full adds PIF, measured elsewhere)')
_BATCH = flags.DEFINE_integer('batch', 1, 'train batch size')
_STEPS = flags.DEFINE_integer('steps', 3, 'timed calls per row')
_JSON = flags.DEFINE_string('json', '', 'also write the figures here')


def _median_call(fn, args, n):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _step_row(config, host_batch, vae_vars, n):
  """(compile s, median step s, XLA temp GiB, argument GiB, params M) of one train step of `config`."""
  mesh = sharding.make_mesh(config.mesh)
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  state = train_state.init_state(model, tx, config, jax.random.key(0))
  if vae_vars is not None:
    state['vae'] = vae_vars
  repl = sharding.replicated(mesh)
  state = jax.device_put(state, repl)
  step = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, jax.tree.map(lambda _: repl, state))
  batch = sharding.global_batch(host_batch, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  holder = [state]

  def call(b, k):  # the step donates its state: thread it through
    holder[0], m = compiled(holder[0], b, k)
    return m

  step_s = _median_call(call, (batch, jax.random.key(1)), n)
  n_params = sum(x.size for x in jax.tree.leaves(holder[0]['params'])) / 1e6
  return compile_s, step_s, mem.temp_size_in_bytes / 2**30, mem.argument_size_in_bytes / 2**30, n_params


def main(argv):
  del argv
  b, n = _BATCH.value, _STEPS.value
  rng = np.random.default_rng(0)
  pixel = deepfashion.get_config(f'variant={_VARIANT.value}')
  lat = deepfashion_latent.get_config(f'variant={_VARIANT.value}')
  lat.latent.random_preset = 'sd'
  for c in (pixel, lat):
    c.train.batch_size, c.mesh = b, (('data', 1),)
  host = bench_inputs.random_batch(pixel, b, rng)
  vae_vars = latent.load_vae_variables(lat)
  space = latent.Space(lat)
  encode = jax.jit(space.model_batch)
  encode_s = _median_call(encode, (vae_vars, host), n)
  cached = {k: np.asarray(v) for k, v in encode(vae_vars, host).items()}
  cache_cfg = deepfashion_latent.get_config(f'variant={_VARIANT.value}')
  cache_cfg.model.space = 'pixel'  # the same network, fed latents directly
  cache_cfg.data.height, cache_cfg.data.width = cached['tgt_img'].shape[1:3]
  cache_cfg.train.batch_size, cache_cfg.mesh = b, (('data', 1),)

  rows = {}
  for name, cfg, batch, vae in (('pixel', pixel, host, None), ('latent', lat, host, vae_vars),
                                ('latent+cache', cache_cfg, cached, None)):
    comp, step_s, temp, arg, params = _step_row(cfg, batch, vae, n)
    rows[name] = {'compile_s': comp, 'step_s': step_s, 'xla_temp_gib': temp, 'xla_argument_gib': arg,
                  'params_M': params}
    print(f'{name:13s} step {step_s:8.3f} s  compile {comp:6.1f} s  XLA temporaries {temp:6.2f} GiB  '
          f'arguments {arg:5.2f} GiB  trained params {params:7.2f} M', flush=True)
  rows['vae_encode'] = {'step_s': encode_s}
  print(f'VAE encode    {encode_s:8.3f} s  (source + target, batch {b}; '
        f'{encode_s / rows["latent"]["step_s"]:.0%} of the latent step)')
  px, la, ca = (rows[k]['step_s'] for k in ('pixel', 'latent', 'latent+cache'))
  print(f'ratios: pixel / latent {px / la:.2f}x, pixel / latent+cache {px / ca:.2f}x, '
        f'latent / latent+cache {la / ca:.2f}x')
  dev = jax.devices()[0]
  summary = {'device': f'{dev.device_kind} ({jax.device_count()} devices)', 'jax': jax.__version__,
             'variant': _VARIANT.value, 'batch': b, 'rows': rows}
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  app.run(main)
