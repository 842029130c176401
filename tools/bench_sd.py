"""Benchmark (not a test): RePoseSD's SD-2.1 U-Net at its real size, random weights.

  python -m tools.bench_sd [--latent=64] [--steps=2] [--grad] [--train] [--remat=full] [--dtype=bfloat16]

Prints the parameter count, XLA's memory analysis and the median time of a forward (with --grad a forward +
backward w.r.t. the parameters; with --train a whole AdamW step, parameters and moments donated) at batch 1,
4 + 4 input channels (noisy latent + pose latent), 77 text tokens.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from reposedm_jax.sd import unet

_LATENT = flags.DEFINE_integer('latent', 64, 'latent side (64 = 512 px, 96 = 768 px)')
_STEPS = flags.DEFINE_integer('steps', 2, 'timed calls')
_GRAD = flags.DEFINE_boolean('grad', False, 'also time forward + backward')
_TRAIN = flags.DEFINE_boolean('train', False, 'also time a whole AdamW step')
_REMAT = flags.DEFINE_string('remat', 'none', 'U-Net remat policy (models.layers.REMAT_POLICIES)')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'U-Net compute dtype')


def _time(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), mem


def main(argv):
  del argv
  cfg = dataclasses.replace(unet.UNetConfig(), in_channels=8, remat=_REMAT.value, dtype=_DTYPE.value)
  model = unet.UNet2DConditionModel(cfg)
  s = _LATENT.value
  x, t, c = jnp.zeros((1, s, s, 8)), jnp.asarray([500]), jnp.zeros((1, 77, 1024))
  params = jax.jit(lambda r: model.init(r, x, t, c))(jax.random.key(0))['params']
  n = sum(a.size for a in jax.tree.leaves(params))
  fwd_s, mem = _time(lambda p: model.apply({'params': p}, x, t, c), params)
  print(f'{jax.devices()[0].device_kind} (jax {jax.__version__}): SD-2.1 U-Net, {n:,} parameters (8 input channels), '
        f'latent {s}x{s}, batch 1: forward {fwd_s:.2f} s, XLA temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB')
  if _GRAD.value:
    loss = lambda p: jnp.mean(jnp.square(model.apply({'params': p}, x, t, c)))  # noqa: E731
    grad_s, mem = _time(jax.grad(loss), params)
    print(f'forward + backward {grad_s:.2f} s, XLA temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB')
  if _TRAIN.value:
    loss = lambda p: jnp.mean(jnp.square(model.apply({'params': p}, x, t, c)))  # noqa: E731
    tx = optax.adamw(1e-5)

    def step(p, o):
      updates, o = tx.update(jax.grad(loss)(p), o, p)
      return optax.apply_updates(p, updates), o

    state = (params, tx.init(params))
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state).compile()
    mem = compiled.memory_analysis()
    state = jax.block_until_ready(compiled(*state))
    times = []
    for _ in range(_STEPS.value):
      t0 = time.perf_counter()
      state = jax.block_until_ready(compiled(*state))
      times.append(time.perf_counter() - t0)
    print(f'AdamW step (remat={_REMAT.value}, {_DTYPE.value}) {float(np.median(times)):.2f} s; XLA arguments '
          f'{mem.argument_size_in_bytes / 2**30:.2f} GiB, temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB')


if __name__ == '__main__':
  app.run(main)
