"""Benchmark: local-window vs dense masked attention, forward + backward.

Run: python -m tools.bench_attention [--windows 7,15] [--repeats 5]

For each map size it jits grad(sum(attention(q, k, v) * g)) w.r.t. (q, k, v),
warms it up once, and reports the best of `repeats` wall times, XLA's temp
buffer size (`compiled.memory_analysis().temp_size_in_bytes`, when the backend
reports it) and the largest single intermediate of the traced jaxpr.
"""

import argparse
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from reposedm_jax.models import local_attention


def _sub_jaxprs(value: Any) -> Iterator[Any]:
  """Jaxprs nested in an equation parameter (pjit, custom_jvp, cond branches, ...)."""
  if hasattr(value, 'eqns'):
    yield value
  elif hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def intermediate_shapes(jaxpr: Any) -> Iterator[tuple[int, ...]]:
  """Shape of every equation output in a jaxpr, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      shape = getattr(var.aval, 'shape', None)
      if shape is not None:
        yield tuple(shape)
    for param in eqn.params.values():
      for sub in _sub_jaxprs(param):
        yield from intermediate_shapes(sub)


def largest_intermediate(fn: Callable[..., Any], *args: Any) -> int:
  """Element count of the largest equation output when tracing fn(*args)."""
  closed = jax.make_jaxpr(fn)(*args)
  return max((int(np.prod(s)) for s in intermediate_shapes(closed.jaxpr)), default=0)


def _grad_fn(attn: Callable[..., jax.Array], window: int) -> Callable[..., Any]:
  def loss(q, k, v, g):
    return jnp.sum(attn(q, k, v, window) * g)
  return jax.grad(loss, argnums=(0, 1, 2))


def _time_ms(fn: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up (compile + first run)
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def _temp_bytes(fn: Callable[..., Any], args: tuple[Any, ...]) -> int | None:
  try:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes) if stats is not None else None
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--windows', default='7', help='comma-separated window sizes')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--dim', type=int, default=64)
  parser.add_argument('--heads', type=int, default=4)
  args = parser.parse_args()

  head_dim = args.dim // args.heads
  windows = [int(x) for x in args.windows.split(',')]
  print(f'backend={jax.default_backend()}  batch={args.batch}  dim={args.dim}  '
        f'heads={args.heads}  forward+backward, best of {args.repeats}')
  print(f'{"map":>7} {"window":>6} {"impl":>6} {"ms":>9} {"temp MiB":>9} '
        f'{"largest interm. MiB":>20}')
  for (h, w), window in ((hw, wdw) for hw in ((32, 22), (64, 44)) for wdw in windows):
    rng = np.random.default_rng(0)
    shape = (args.batch, h, w, args.heads, head_dim)
    q, k, v, g = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4))
    for name, attn in (('local', local_attention.local_window_attention),
                       ('dense', local_attention.dense_masked_attention)):
      fn = _grad_fn(attn, window)
      operands = (q, k, v, g)
      ms = _time_ms(jax.jit(fn), operands, args.repeats)
      temp = _temp_bytes(fn, operands)
      largest = largest_intermediate(fn, *operands) * 4  # float32 / int32 / bool<=4 B
      temp_txt = 'n/a' if temp is None else f'{temp / 2**20:.1f}'
      print(f'{h:>3}x{w:<3} {window:>6} {name:>6} {ms:>9.2f} {temp_txt:>9} '
            f'{largest / 2**20:>20.1f}')


if __name__ == '__main__':
  main()
