"""Benchmark (not a test): step time, images/s, FLOPs, TFLOP/s, MFU, compile time, memory, and the split.

  python -m tools.bench_train --config=configs/demo.py
  python -m tools.bench_train --config=configs/deepfashion.py:variant=b2 --config.model.dtype=bfloat16
  python -m tools.bench_train --config=configs/deepfashion.py --config.train.batch_size=2 --steps=3

Uses random inputs of the config's shapes, so no dataset is needed. Timing syncs once per
measured block, not per step.

FLOPs are XLA's cost analysis of the compiled per-device program: what the hardware executes,
so rematerialised work (model.remat) counts, and a lax.scan body counts once, not per iteration
(RPA with rpa.use_scan=True, the correlation's scan over shifts). MFU = per-device FLOP/s over
the device's dense peak for the compute dtype (PEAK_FLOPS; float32 on NVIDIA counts as TF32,
XLA's default for float32 matmuls and convolutions there).

The split times the parts of one training step as separately jitted forward + backward passes
at the training batch: the U-Net (with its source encoder), RPA (variants b2/full), and PIF's
gradient guidance (variant full, reposedm_jax.pif); 'rest' is the
step minus their sum (loss, optimizer, EMA, and what the separate calls do not share).
"""

import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from reposedm_jax import latent, pif, pose_estimator, sharding, train, train_state
from reposedm_jax import sample as sample_lib
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from tools import bench_inputs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed train steps.')
_SAMPLE_STEPS = flags.DEFINE_integer('sample_steps', -1, 'Sampler steps to time (-1 = config.sample.num_steps, '
                                     '0 = skip sampling).')
_SAMPLE_BATCH = flags.DEFINE_integer('sample_batch', -1, 'Sampling batch (-1 = device count).')
_SPLIT = flags.DEFINE_bool('split', True, 'Time the U-Net / RPA / guidance parts separately.')
_JSON = flags.DEFINE_string('json', '', 'Also write the figures to this JSON file.')

# Dense peak FLOP/s per device: (device_kind substring, bfloat16, float32). First match wins, so the
# more specific names come first. NVIDIA float32 = TF32 tensor cores (XLA's default for f32 dots on
# Ampere and later); TPUs run float32 matmuls as bfloat16 passes by default.
PEAK_FLOPS = (
    ('h100 pcie', 756e12, 378e12),
    ('h100', 989e12, 495e12),  # SXM: 'NVIDIA H100 80GB HBM3'.
    ('h200', 989e12, 495e12),  # Also GH200.
    ('a100', 312e12, 156e12),
    ('l40s', 362e12, 183e12),
    ('tpu v6', 918e12, 918e12),
    ('tpu v5p', 459e12, 459e12),
    ('tpu v5', 197e12, 197e12),  # v5e ('TPU v5 lite').
    ('tpu v4', 275e12, 275e12),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device for `dtype` ('bfloat16' | 'float32'); None if unknown (CPU)."""
  kind = device_kind.lower()
  for name, bf16, f32 in PEAK_FLOPS:
    if name in kind:
      return bf16 if dtype == 'bfloat16' else f32
  return None


def cost_flops(compiled) -> float | None:
  """FLOPs of a compiled program; `cost_analysis()` is a dict in new jax, a one-element list in old."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def peak_memory_gib() -> tuple[float, str]:
  """Peak bytes in use on device 0 (GPU/TPU), else this process's peak RSS (CPU)."""
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'host RSS'  # KiB -> GiB.


def timed(fn, args, n: int):
  """(compile seconds, seconds per call, compiled) of jitted `fn(*args)`; one warm-up call, n timed."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(n):
    out = compiled(*args)
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t0) / n, compiled


def split_pieces(model, params, batch, config, sched, guide_vars, vae_vars=None):
  """{name: (fn, args)} for the step's parts; fn(*args) runs the part's forward + backward.

  The batch goes in as an argument, not a closed-over constant, so it keeps its data-parallel sharding. Latent
  mode: `batch` is the pixel batch; the parts see it encoded, and the VAE's encode of both images is a part.
  """
  space = latent.Space(config)
  pixel_batch = batch
  pieces = {}
  if space.latent:
    pieces['VAE encode (source + target)'] = (jax.jit(space.model_batch), (vae_vars, batch))
    batch = jax.jit(space.model_batch)(vae_vars, batch)
  b = batch['tgt_img'].shape[0]
  t = jnp.arange(b, dtype=jnp.int32) * (config.diffusion.timesteps // b)
  inputs = {'x_t': batch['tgt_img'], 't': jax.device_put(t, batch['tgt_img'].sharding), 'pose': batch['tgt_pose'],
            'src': batch['src_img']}
  rngs = {'dropout': jax.random.key(3)}

  def fwd_bwd(apply, p):  # Backward w.r.t. the parameters, as the training step does.
    return jax.value_and_grad(lambda q: jnp.mean(jnp.square(apply(q).astype(jnp.float32))))(p)

  def denoiser(module):
    return lambda p, x: fwd_bwd(lambda q: module.apply({'params': q}, x['x_t'], x['t'], x['pose'], x['src'],
                                                       train=True, rngs=rngs), p)

  if 'rpa' in params:  # b2 / full: the U-Net and RPA are separate submodules with separate params.
    rpa = model.rpa
    pieces['U-Net'] = (denoiser(model.unet), (params['unet'], inputs))
    pieces['RPA'] = (lambda p, x: fwd_bwd(lambda q: rpa.apply({'params': q}, x['src'], x['pose'])[0], p),
                     (params['rpa'], inputs))
  else:
    pieces['U-Net'] = (denoiser(model), (params, inputs))
  if guide_vars is not None:
    out = jnp.concatenate([batch['tgt_img'], batch['tgt_img']], axis=-1)  # Stand-in (eps, v) output.

    def guidance(o, g, x, bt):
      heat_fn = space.pixel_heat_fn(pose_estimator.make_heat_fn(config, g), vae_vars)
      guided, extra, _ = pif.train_terms(config.pif, heat_fn, pose_estimator.reference_heads(config),
                                         o, sched=sched, x_t=x['x_t'], t=x['t'], noise=x['src'],
                                         batch={'tgt_kpts': pixel_batch['tgt_kpts'], 'tgt_img': bt['tgt_img']},
                                         image_hw=pixel_batch['tgt_img'].shape[1:3], clip=not space.latent)
      return jnp.mean(guided) + extra

    # With pif.stop_gradient=False the step also differentiates through the guidance.
    fn = guidance if config.pif.stop_gradient else jax.value_and_grad(guidance)
    pieces['guidance (PIF)'] = (fn, (out, guide_vars, inputs, batch))
  return pieces


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  model = factory.build_model(config)
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  tx = train_state.make_optimizer(config)
  rng = np.random.default_rng(0)
  b = config.train.batch_size
  guide_vars, guide_note = None, 'n/a (variant has no guidance)'
  if config.variant == 'full':
    guide_vars, guide_note = bench_inputs.guide_variables(config), ''

  # State laid out as training lays it out (replicated, or FSDP with config.fsdp_axis).
  init = lambda r: train_state.init_state(model, tx, config, r)  # noqa: E731
  vae_vars = latent.load_vae_variables(config)  # latent mode's frozen VAE (random with latent.random_preset)
  abstract = train_state.abstract_state(model, tx, config, jax.random.key(0), guide_vars, vae_vars)
  shardings = sharding.state_shardings(abstract, mesh, config.fsdp_axis, config.train.fsdp_min_size)
  state = jax.jit(init, out_shardings={k: v for k, v in shardings.items() if k not in train.FROZEN})(
      jax.random.key(0))
  for key, frozen in (('guide', guide_vars), ('vae', vae_vars)):
    if frozen is not None:
      state[key] = sharding.put_global(frozen, shardings[key])
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  host_batch = bench_inputs.random_batch(config, b, rng)
  batch = sharding.global_batch(host_batch, mesh)
  step_fn = train.compile_train_step(model, sched, tx, config, mesh, shardings)

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - t0
  flops = cost_flops(compiled)
  mem = compiled.memory_analysis()
  state, m = compiled(state, batch, jax.random.key(1))  # Warm-up.
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = compiled(state, batch, jax.random.key(1))
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / _STEPS.value

  device = jax.devices()[0]
  n_dev = jax.device_count()
  peak = peak_flops(device.device_kind, config.model.dtype)
  res = {'device': f'{device.device_kind} x{n_dev}', 'jax': jax.__version__, 'variant': config.variant,
         'resolution': f'{config.data.height}x{config.data.width}', 'params_M': n_params / 1e6, 'batch': b,
         'dtype': config.model.dtype, 'remat': config.model.remat, 'attention': config.model.attention,
         'fsdp_axis': config.fsdp_axis, 'compile_s': compile_s, 'step_ms': step_s * 1e3, 'images_per_s': b / step_s,
         'flops_per_device_step': flops,
         'tflops_per_device': flops / step_s / 1e12 if flops else None,
         'mfu': flops / step_s / peak if (flops and peak) else None,
         'xla_argument_gib': mem.argument_size_in_bytes / 2**30 if mem else None,
         'xla_temp_gib': mem.temp_size_in_bytes / 2**30 if mem else None}

  rows = [('device', res['device'] + f' (jax {jax.__version__})'), ('variant', config.variant),
          ('resolution', res['resolution']), ('params', f'{n_params / 1e6:.2f} M'), ('batch', b),
          ('dtype / remat / attention', f'{config.model.dtype} / {config.model.remat} / {config.model.attention}'),
          ('state layout', f'FSDP over {config.fsdp_axis!r}' if config.fsdp_axis else 'replicated'),
          ('compile train step', f'{compile_s:.1f} s'), ('train step', f'{step_s * 1e3:.1f} ms'),
          ('images/s (train)', f'{b / step_s:.2f}')]
  if flops:
    rows.append(('HLO FLOPs / step / device', f'{flops / 1e9:.2f} GFLOP'))
    rows.append(('TFLOP/s per device', f'{flops / step_s / 1e12:.3f}'))
  rows.append(('MFU', f'{res["mfu"]:.1%} of {peak / 1e12:.0f} TFLOP/s' if res['mfu'] else
               f'n/a (no peak FLOP/s for {device.device_kind!r})'))
  if mem:
    rows.append(('XLA memory (train step)', f'arguments {res["xla_argument_gib"]:.2f} GiB, '
                 f'temporaries {res["xla_temp_gib"]:.2f} GiB'))

  if _SPLIT.value:  # --- Split of the step between its parts.
    params = state['params']
    pieces = split_pieces(model, params, batch, config, sched, guide_vars, state.get('vae'))
    total = 0.0
    res['split_ms'] = {}
    for name, (fn, args) in pieces.items():
      piece_compile, piece_s, _ = timed(fn, args, max(1, _STEPS.value // 2))
      total += piece_s
      res['split_ms'][name] = piece_s * 1e3
      rows.append((f'  {name} fwd+bwd', f'{piece_s * 1e3:.1f} ms ({piece_s / step_s:.0%} of step; '
                   f'compile {piece_compile:.1f} s)'))
    if 'RPA' not in pieces:
      rows.append(('  RPA', 'n/a (variant b1)'))
    if guide_vars is None:
      rows.append(('  guidance (PIF)', guide_note))
    rows.append(('  rest (loss, optimizer, EMA)', f'{(step_s - total) * 1e3:.1f} ms'))

  n_sample = _SAMPLE_STEPS.value if _SAMPLE_STEPS.value >= 0 else config.sample.num_steps
  if n_sample > 0:  # --- Sampling (CFG, the configured sampler; PIF guidance for variant full).
    sb = _SAMPLE_BATCH.value if _SAMPLE_BATCH.value > 0 else jax.device_count()
    sampler = sample_lib.make_sampler(model, sched, config, mesh, num_steps=n_sample, guide_vars=state.get('guide'),
                                      vae_vars=state.get('vae'))
    sbatch = bench_inputs.random_batch(config, sb, rng)
    ema = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(state['ema_params'])
    t0 = time.perf_counter()
    sampler(ema, sbatch, jax.random.key(2))
    sample_first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler(ema, sbatch, jax.random.key(3))
    sample_s = (time.perf_counter() - t0) / sb
    res.update(sample_s_per_image=sample_s, sample_steps=n_sample, sample_batch=sb)
    rows.append((f'sample {config.sample.sampler} x{n_sample} + CFG',
                 f'{sample_s:.2f} s/image (batch {sb}; first call incl. compile {sample_first_s:.1f} s)'))

  peak_gib, where = peak_memory_gib()
  res['peak_memory_gib'], res['peak_memory_kind'] = peak_gib, where
  rows.append(('peak memory', f'{peak_gib:.2f} GiB ({where})'))
  if jax.process_index() == 0:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
      print(f'{k:<{width}} | {v}')
    if _JSON.value:
      with open(_JSON.value, 'w') as f:
        json.dump(res, f, indent=1)


if __name__ == '__main__':
  app.run(main)
