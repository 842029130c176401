"""Benchmark (not a test): this project's B1 train step and CFG sampling step against PIDM's PyTorch network.

  python -m tools.bench_vs_torch                          # the issue's network: 64x64, batch 8, 1 CPU device
  python -m tools.bench_vs_torch --devices=2              # the project step with the batch over 2 fake devices
  python -m tools.bench_vs_torch --preset=128 --variant=b2
  python -m tools.bench_vs_torch --preset=paper --rounds=2 --steps=2   # 256x176, 128 channels, batch 1

Same network on both sides: PIDM's U-Net + source encoder (tools/pidm_torch_reference.py, PIDM's module names)
with the same random weights, moved into the JAX model by the project's converter (the forward outputs are
compared and printed). Steps are timed one by one, alternating torch and JAX rounds in one process so that
both see the same machine state; min / median per step and the median ratio JAX / torch are printed.

Rows:
- torch step: forward, MSE on the epsilon half of the output, backward, AdamW, EMA update (PIDM's loop body
  without its variance term and data loading), torch.set_num_threads(--threads).
- jax bare step: the same operations, jitted, with optax.adamw: the framework against the framework.
- jax project step: `train.compile_train_step` as `mode=train` runs it (hybrid loss with the learned-range
  variance term, CFG dropout, gradient clipping, EMA; B2/full add RPA / PIF with --variant).
- CFG sampling step: one denoiser call on the [conditional | null] pair as one batch of 2B, source features
  computed once beforehand (how sample.py runs), torch under no_grad.
"""

import os
import statistics
import sys
import time


def _devices_from_argv(argv) -> int:
  for a in argv:
    if a.startswith('--devices='):
      return int(a.split('=', 1)[1])
  return 1


# XLA reads its flags once, at the first `import jax`: set the fake device count before anything imports it.
if 'jax' not in sys.modules:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_devices_from_argv(sys.argv)}').strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from reposedm_jax import sharding, train, train_state  # noqa: E402
from reposedm_jax.convert import pidm as pidm_convert  # noqa: E402
from reposedm_jax.diffusion.schedule import linear_schedule  # noqa: E402
from reposedm_jax.models import factory  # noqa: E402
from tools import bench_inputs, pidm_torch_reference  # noqa: E402

# name: (height, width, batch, model overrides). '64' is the network of issue 15's table (~11 M parameters).
PRESETS = {
    '64': (64, 64, 8, dict(model_channels=32, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                           attention_ds=(8, 16, 32), norm_groups=32)),
    '128': (128, 128, 4, dict(model_channels=32, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                              attention_ds=(8, 16, 32), norm_groups=32)),
    'paper': (256, 176, 1, dict(model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                                attention_ds=(8, 16, 32), norm_groups=32)),
    'demo': (64, 44, 8, {}),  # configs/demo.py's own network (padded to 64x48 on both sides)
}

flags.DEFINE_integer('devices', 1, 'Fake CPU devices for the JAX side (read before jax is imported).')
_PRESET = flags.DEFINE_enum('preset', '64', list(PRESETS), 'Input size, batch and network.')
_VARIANT = flags.DEFINE_enum('variant', 'b1', ['b1', 'b2', 'full'], 'The project step to time (torch is B1).')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Alternating rounds (torch, then JAX, per round).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per side per round.')
_THREADS = flags.DEFINE_integer('threads', 0, 'torch threads (0 = the CPU count).')
_SAMPLING = flags.DEFINE_bool('sampling', True, 'Also time one CFG sampling step.')


def _config(preset: str, variant: str):
  h, w, b, model = PRESETS[preset]
  config = demo_config.get_config(f'variant={variant}')
  config.data.height, config.data.width = h, w
  config.train.batch_size = b
  config.model.dropout = 0.0  # identical on both sides; dropout's cost is not the question here
  for k, v in model.items():
    setattr(config.model, k, v)
  return config


def _timed_calls(fn, n: int) -> list:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def _nchw(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _padded(x, mult):
  """Zero-pads H, W up to `mult` as PIDMUNet does internally, so torch sees the same input."""
  h, w = x.shape[1:3]
  return np.pad(x, ((0, 0), (0, -h % mult), (0, -w % mult), (0, 0)))


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # the converter's INFO list of dropped PIDM keys buries the table
    logging.set_verbosity(logging.WARNING)
  import torch  # pylint: disable=import-outside-toplevel
  threads = _THREADS.value or os.cpu_count()
  torch.set_num_threads(threads)
  config = _config(_PRESET.value, _VARIANT.value)
  m = config.model
  b = config.train.batch_size
  _, _, _, UNet = pidm_torch_reference.build()
  ref = pidm_torch_reference.randomise(
      UNet(m.model_channels, tuple(m.channel_mult), m.num_res_blocks, tuple(m.attention_ds), m.norm_groups, 0.0),
      seed=0).train()
  unet_params = pidm_convert.convert_pidm_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, m)
  jmodel = factory.build_model(config)
  unet = jmodel if config.variant == 'b1' else jmodel.unet
  mult = unet.size_multiple

  rng = np.random.default_rng(0)
  host = bench_inputs.random_batch(config, b, rng)
  noise = rng.standard_normal(host['tgt_img'].shape).astype(np.float32)
  t_np = rng.integers(0, config.diffusion.timesteps, b).astype(np.int32)
  x_t = host['tgt_img']  # stands in for q_sample(x0, t): the cost does not depend on the values
  pad = lambda a: torch.from_numpy(_nchw(_padded(a, mult)))  # noqa: E731
  tx_t, tpose, tsrc, tnoise = pad(x_t), pad(host['tgt_pose']), pad(host['src_img']), pad(noise)
  tt = torch.from_numpy(t_np.astype(np.int64))

  # Parity of the two forward passes (same weights through the converter).
  with torch.no_grad():
    want = ref(tx_t, tt, tpose, tsrc).numpy()[:, :, :x_t.shape[1], :x_t.shape[2]]
  got = jax.jit(lambda p: unet.apply({'params': p}, x_t, t_np, host['tgt_pose'], host['src_img'], train=False))(
      unet_params)
  parity = float(np.max(np.abs(_nchw(got) - want)))

  # --- torch step
  opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.0)
  ema = [p.detach().clone() for p in ref.parameters()]

  def torch_step():
    opt.zero_grad(set_to_none=True)
    out = ref(tx_t, tt, tpose, tsrc)
    loss = torch.mean((out[:, :3] - tnoise) ** 2)
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(ref.parameters()), 1 - 0.9999)  # pylint: disable=protected-access

  # --- jax bare step (single device: the framework against the framework)
  jtx = optax.adamw(1e-4, weight_decay=0.0)

  def bare(state, xt, t, pose, src, eps):
    def loss_fn(p):
      out = unet.apply({'params': p}, xt, t, pose, src, train=True)
      return jnp.mean(jnp.square(out[..., :3] - eps))
    loss, g = jax.value_and_grad(loss_fn)(state['params'])
    upd, opt_state = jtx.update(g, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], upd)
    ema_p = jax.tree.map(lambda e, p: e + (1 - 0.9999) * (p - e), state['ema'], params)
    return {'params': params, 'opt': opt_state, 'ema': ema_p}, loss

  bare_args = (x_t, t_np, host['tgt_pose'], host['src_img'], noise)
  bare_state = {'params': unet_params, 'opt': jtx.init(unet_params), 'ema': jax.tree.map(jnp.copy, unet_params)}
  bare_jit = jax.jit(bare, donate_argnums=0)
  t0 = time.perf_counter()
  bare_c = bare_jit.lower(bare_state, *bare_args).compile()
  bare_compile = time.perf_counter() - t0
  holder = {'bare': bare_state}

  def bare_step():
    holder['bare'], loss = bare_c(holder['bare'], *bare_args)
    loss.block_until_ready()

  # --- jax project step
  mesh = sharding.make_mesh(config.mesh)
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  ptx = train_state.make_optimizer(config)
  abstract = jax.eval_shape(lambda r: train_state.init_state(jmodel, ptx, config, r), jax.random.key(0))
  guide = bench_inputs.guide_variables(config) if config.variant == 'full' else None
  if guide is not None:
    abstract['guide'] = jax.eval_shape(lambda: guide)
  shardings = sharding.state_shardings(abstract, mesh, config.fsdp_axis, config.train.fsdp_min_size)
  pstate = jax.jit(lambda r: train_state.init_state(jmodel, ptx, config, r),
                   out_shardings={k: v for k, v in shardings.items() if k != 'guide'})(jax.random.key(0))
  if config.variant == 'b1':
    pstate['params'] = sharding.put_global(unet_params, shardings['params'])
  if guide is not None:
    pstate['guide'] = sharding.put_global(guide, shardings['guide'])
  batch = sharding.global_batch(host, mesh)
  step_fn = train.compile_train_step(jmodel, sched, ptx, config, mesh, shardings)
  t0 = time.perf_counter()
  proj_c = step_fn.lower(pstate, batch, jax.random.key(1)).compile()
  proj_compile = time.perf_counter() - t0
  holder['proj'] = pstate

  def proj_step():
    holder['proj'], metrics = proj_c(holder['proj'], batch, jax.random.key(1))
    jax.block_until_ready(metrics)

  sides = {'torch step': torch_step, 'jax bare step': bare_step, 'jax project step': proj_step}
  if jax.device_count() > 1:  # the bare step is single-device; with fake devices only the project step is fair
    del sides['jax bare step']

  if _SAMPLING.value:  # --- one CFG step: denoiser on the 2B pair, source features computed once
    zeros = np.zeros_like(host['src_img'])
    src2 = np.concatenate([host['src_img'], zeros])
    x2, t2 = np.concatenate([x_t, x_t]), np.concatenate([t_np, t_np])
    pose2 = np.concatenate([host['tgt_pose'], host['tgt_pose']])
    with torch.no_grad():
      tfeats = ref.encoder(pad(src2))
    tx2, tt2, tpose2 = pad(x2), torch.from_numpy(t2.astype(np.int64)), pad(pose2)
    ref_eval = ref.eval()

    def torch_sample():
      with torch.no_grad():
        out = ref_eval(tx2, tt2, tpose2, feats=tfeats)
        c, u = out[:b, :3], out[b:, :3]
        _ = u + 2.0 * (c - u)

    feats = jax.jit(lambda p, s: unet.apply({'params': p}, s, False, method=unet.encode))(unet_params, src2)

    @jax.jit
    def jax_sample_fn(p, x, t, pose, f):
      out = unet.apply({'params': p}, x, t, pose, f, False, method=unet.denoise)
      c, u = out[:b, ..., :3], out[b:, ..., :3]
      return u + 2.0 * (c - u)

    jax.block_until_ready(jax_sample_fn(unet_params, x2, t2, pose2, feats))
    sides['torch CFG sampling step'] = torch_sample
    sides['jax CFG sampling step'] = lambda: jax.block_until_ready(jax_sample_fn(unet_params, x2, t2, pose2, feats))

  for fn in sides.values():  # warm-up (torch allocator, first jax call)
    fn()
  times = {k: [] for k in sides}
  for r in range(_ROUNDS.value):
    for name, fn in sides.items():
      times[name] += _timed_calls(fn, _STEPS.value)
    print(f'round {r + 1}/{_ROUNDS.value}: ' + ', '.join(
        f'{k} {statistics.median(v) * 1e3:.0f} ms' for k, v in times.items()), flush=True)

  n_params = sum(x.size for x in jax.tree.leaves(unet_params))
  h, w = config.data.height, config.data.width
  print(f'\nPIDM network {n_params / 1e6:.2f} M params, {h}x{w} (padded to a multiple of {mult}), batch {b}; '
        f'JAX variant {config.variant} on {jax.device_count()} {jax.devices()[0].platform} device(s), jax '
        f'{jax.__version__}; torch {torch.__version__} with {threads} threads; forward parity max |diff| '
        f'{parity:.1e}; compile: bare {bare_compile:.1f} s, project {proj_compile:.1f} s')
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f'| what | min | median | median / torch |\n|---|---|---|---|')
  for name, v in times.items():
    base = med['torch CFG sampling step' if 'sampling' in name else 'torch step']
    print(f'| {name} | {min(v) * 1e3:.0f} ms | {med[name] * 1e3:.0f} ms | {med[name] / base:.2f} |')


if __name__ == '__main__':
  app.run(main)
