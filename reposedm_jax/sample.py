"""Sampling: the jitted generator (CFG, DDIM or respaced DDPM) and the `mode=sample` driver.

Outputs go to `workdir/samples/`: one PNG per pair named as PIDM's generator names them
('<src>_2_<tgt>_vis.png'), grids (source | target pose | generated | ground truth) under
`grids/`, and `manifest.jsonl` mapping every PNG to its pair (what eval mode reads).
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from reposedm_jax import checkpoint, latent, logs, pif, pose_estimator, sharding, train_state, visualize
from reposedm_jax.data import dataset, names, pipeline
from reposedm_jax.diffusion import gaussian, samplers
from reposedm_jax.diffusion.schedule import ddim_timesteps, linear_schedule, respace
from reposedm_jax.metrics import masked
from reposedm_jax.models import factory

# config.sample.sampler: DDIM over sample.num_steps, or DDPM on a respaced schedule of num_steps steps.
SAMPLERS = ('ddim', 'ddpm')
# Optional batch entries of garment editing (`generate`): the reference person and the generated region.
EDIT_KEYS = ('edit_ref', 'edit_mask')


# A run's config.json from before `sample.ddpm_variance` existed: those runs sampled with the learned variance.
LEGACY_DDPM_VARIANCE = 'learned'


def generate(params, batch, rng, guide_vars=None, vae_vars=None, *, model, sched, config, num_steps,
             shared_noise=False):
  """Generates [B, H, W, C] images in [-1, 1] for the target poses and sources of `batch`.

  Latent mode (`vae_vars`, the frozen VAE): the source is encoded, the pose map and keypoints brought to latent
  resolution (latent.Space.model_batch), sampling runs on latents and the result is decoded at the end.

  With `guide_vars` (variant full) every step adds PIF's gradient guidance (eq. 16), computed from the
  target keypoints `batch['tgt_kpts']` only. `shared_noise`: every row starts from the same x_T and draws the
  same per-step noise (predict's pose sequences). With `batch['edit_ref']` and `batch['edit_mask']` (garment
  editing, paper Fig. 4) the region outside the mask is the reference person, re-noised at every step.
  """
  scfg = config.sample
  space = latent.Space(config)
  pixel_hw = batch['src_img'].shape[1:3]
  mbatch = space.model_batch(vae_vars, {k: batch[k] for k in ('src_img', 'tgt_pose', 'src_kpts', 'tgt_kpts')})
  src, pose = mbatch['src_img'], mbatch['tgt_pose']
  kpts = (mbatch['src_kpts'], mbatch['tgt_kpts'])  # B2's keypoint pre-warp (rpa.init_flow); B1 ignores them
  variables = {'params': params}
  # The encoder runs once per sample, not once per step; the null condition is a zero image.
  feats_c = model.apply(variables, src, pose, train=False, kpts=kpts, method=model.encode_condition)
  feats_u = model.apply(variables, jnp.zeros_like(src), pose, train=False, kpts=kpts,
                        method=model.encode_condition)
  feats = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), feats_c, feats_u)  # a list (B1) or dict (B2)
  pose2 = jnp.concatenate([pose, pose])

  prediction = config.diffusion.get('prediction', 'eps')
  # 'v_aligned': RPA's aligned source of both halves (conditional, then null = zero).
  prior = (feats.get('prior', feats.get('aligned', {}).get('prior')) if isinstance(feats, dict) else None)

  def apply_fn(x2, t2):  # t2: model-facing timesteps, i.e. indices into the base schedule `sched`
    out = model.apply(variables, x2, t2, pose2, feats, train=False, method=model.denoise).astype(jnp.float32)
    return gaussian.eps_output(sched, out, x2, t2, prediction, prior=prior)

  # guide_variance: PIDM mixes all output channels (eps and v) with the guidance scale.
  model_fn = samplers.cfg_model_fn(apply_fn, scfg.guidance_scale, guide_variance=True)
  k_init, k_loop = jax.random.split(rng)
  x_t = samplers.step_noise(k_init, 0, src.astype(jnp.float32), shared_noise) if shared_noise else \
      jax.random.normal(k_init, src.shape, jnp.float32)
  post = None
  if 'edit_ref' in batch:
    # Latent mode keeps a latent pixel generated when any of its image pixels is in the edit region.
    edit_mask = latent.downsample_mask(batch['edit_mask'], space.factor) if space.latent else batch['edit_mask']
    post = samplers.inpaint_post_step(space.encode(vae_vars, batch['edit_ref']), edit_mask,
                                      jax.random.fold_in(k_init, 1))
  if scfg.sampler == 'ddim':
    s = sched
  elif scfg.sampler == 'ddpm':
    s = respace(sched, ddim_timesteps(sched.num_timesteps, num_steps))
  else:
    raise ValueError(f'sample.sampler must be one of {SAMPLERS}, got {scfg.sampler!r}')
  correction = None
  if guide_vars is not None and config.pif.sample_scale != 0:  # s = 0: no guidance, and no gradient to pay for
    heat_fn = space.pixel_heat_fn(pose_estimator.make_heat_fn(config, guide_vars), vae_vars)
    correction = pif.sampling_correction(config.pif, heat_fn, pose_estimator.reference_heads(config), s,
                                         batch['tgt_kpts'], scfg.guidance_scale, image_hw=pixel_hw,
                                         clip=not space.latent)
  # Latents are not bounded: x̂0 is clipped to [-1, 1] only in pixel space (the decoded image is clipped).
  bounded = not space.latent
  if scfg.sampler == 'ddim':
    out = samplers.ddim_sample(model_fn, s, x_t, num_steps, eta=scfg.eta, clip_x0=scfg.ddim_clip_x0 and bounded,
                               rng=k_loop, eps_correction_fn=correction, shared_noise=shared_noise,
                               post_step_fn=post, clip_output=bounded)
  else:
    out = samplers.ddpm_sample(model_fn, s, x_t, k_loop, clip_x0=bounded, eps_correction_fn=correction,
                               shared_noise=shared_noise, post_step_fn=post, clip_output=bounded,
                               variance=scfg.ddpm_variance if 'ddpm_variance' in scfg else LEGACY_DDPM_VARIANCE)
  return space.decode(vae_vars, out)


def make_sampler(model, sched, config, mesh, num_steps: int, guide_vars=None, shared_noise: bool = False,
                 vae_vars=None):
  """Returns fn(params, host_batch, rng, guide=None, vae=None) -> numpy [B, H, W, C]; B must divide over the mesh.

  `shared_noise` and a host batch with `edit_ref` / `edit_mask`: see `generate`.

  `guide_vars` (the frozen estimator's variables) turns on PIF guidance; variant full passes them.
  The training loop passes the live `state['guide']` as `guide` on every call instead: its train step
  donates the state, so the arrays given here at construction are deleted after the first step. The same holds
  for `vae_vars` (latent mode's frozen VAE) and `vae`.
  """
  repl = sharding.replicated(mesh)
  fn = jax.jit(functools.partial(generate, model=model, sched=sched, config=config, num_steps=num_steps,
                                 shared_noise=shared_noise),
               in_shardings=(repl, sharding.batch_sharding(mesh), repl, repl, repl),
               out_shardings=sharding.batch_sharding(mesh))
  keys = ('src_img', 'tgt_pose', 'src_kpts', 'tgt_kpts')
  executables, compile_seconds = {}, []

  def run(params, host_batch, rng, guide=None, vae=None):
    batch = sharding.global_batch({k: host_batch[k] for k in keys + EDIT_KEYS if k in host_batch}, mesh)
    args = (params, batch, rng, guide_vars if guide is None else guide, vae_vars if vae is None else vae)
    if jax.process_count() > 1:  # global arrays cannot be device_put here; jit places them (compile untimed)
      return sharding.process_local(fn(*args))
    # An executable checks its inputs' shardings (jit would reshard): restored weights may sit on one
    # device, so they are put where it expects them (a no-op when they are already replicated).
    placed = jax.device_put((args[0], args[2], args[3], args[4]), repl)
    args = (placed[0], batch, placed[1], placed[2], placed[3])
    # Compiled ahead of time per input signature, so the compile is timed apart from the sampling it serves.
    sig = tuple((a.shape, a.dtype) for a in jax.tree.leaves(batch))
    if sig not in executables:
      logs.log_line('Compiling the sampler ...')
      t0 = time.perf_counter()
      executables[sig] = fn.lower(*args).compile()
      compile_seconds.append(time.perf_counter() - t0)
    return sharding.process_local(executables[sig](*args))

  run.compile_seconds = compile_seconds  # one entry per compiled signature
  return run


def load_sampling_state(config, workdir: str, mesh, guide_vars=None):
  """(model, params, step, vae): EMA (or raw) params of the workdir's latest checkpoint, else `config.init_from`.

  `vae` (latent mode, else None) is the frozen VAE the checkpoint was trained with; from `config.latent` for
  init_from weights.
  """
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  abstract = train_state.abstract_state(model, tx, config, init_rng, guide_vars)
  repl = sharding.replicated(mesh)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
  # Sampling needs the weights only: a config that differs in optimizer settings still samples the run.
  state = checkpoint.restore_latest(manager, abstract, weights_only=True)
  manager.close()
  if state is not None:
    if latent.enabled(config) and 'vae' not in state:
      raise ValueError(f'{workdir} was trained in pixel space (its checkpoint holds no VAE); drop '
                       '--config.model.space=latent or use a latent-mode workdir')
    vae = state.get('vae') if latent.enabled(config) else None
    return model, state['ema_params' if config.sample.use_ema else 'params'], int(state['step']), vae
  if config.init_from:
    return model, checkpoint.load_params(config.init_from, abstract['params']), 0, latent.load_vae_variables(config)
  raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints and config.init_from is empty.')


def load_sampling_params(config, workdir: str, mesh, guide_vars=None):
  """(model, params, step) of `load_sampling_state` (pixel-mode callers)."""
  return load_sampling_state(config, workdir, mesh, guide_vars)[:3]


def run_sample(config, workdir: str) -> str:
  """Generates the test pairs (first `sample.num`, -1 = all); returns the output directory."""
  scfg = config.sample
  mesh = sharding.make_mesh(config.mesh)
  guide_vars = pose_estimator.load_guide_variables(config, workdir) if config.variant == 'full' else None
  model, params, step, vae_vars = load_sampling_state(config, workdir, mesh, guide_vars)
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  sampler = make_sampler(model, sched, config, mesh, scfg.num_steps, guide_vars=guide_vars, vae_vars=vae_vars)
  space = latent.Space(config)
  split = dataset.load_split(config.data, 'test')
  limit = scfg.num if scfg.num >= 0 else config.data.max_test_pairs
  n = len(split) if limit < 0 else min(limit, len(split))
  out_dir = os.path.join(workdir, 'samples')
  per_process = scfg.batch_size // jax.process_count()
  batches = pipeline.iterate_eval(config.data, split, per_process, limit=n, shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  pif_note = f', PIF guidance s={config.pif.sample_scale}' if guide_vars is not None else ''
  logs.log_line(f'Sampling {n} test pairs with {scfg.sampler} x {scfg.num_steps} steps, CFG {scfg.guidance_scale}'
                f'{pif_note}, from step {step} ({"EMA" if scfg.use_ema else "raw"} params)')
  strip_fn = None
  if hasattr(model, 'alignment_strip') and scfg.rpa_strips:
    def strip_images(p, src, pose, kpts):  # latent mode: RPA warps latents; the strip shows them decoded
      m = space.model_batch(vae_vars, {'src_img': src, 'tgt_pose': pose, 'src_kpts': kpts[0], 'tgt_kpts': kpts[1]})
      strip = model.apply({'params': p}, m['src_img'], m['tgt_pose'], (m['src_kpts'], m['tgt_kpts']),
                          method=model.alignment_strip)
      return jax.vmap(lambda z: space.decode(vae_vars, z))(strip) if space.latent else strip
    strip_fn = jax.jit(strip_images)
  manifest, align_err = [], []
  rng = jax.random.key(scfg.seed)
  total = -(-n // per_process // jax.process_count())

  def save(b, batch, images):  # one batch: its PNGs, manifest rows, grid and RPA strip
    for i in np.flatnonzero(batch['valid']):
      pair = split.pairs[int(batch['pair_index'][i])]
      name = names.output_name(pair.sources[0], pair.target)
      visualize.save_png(os.path.join(out_dir, name), visualize.to_uint8(images[i]))
      manifest.append({'name': name, 'pair_index': int(batch['pair_index'][i]), 'source': pair.sources[0],
                       'target': pair.target})
    if scfg.grids:
      valid = batch['valid']
      grid = visualize.pair_grid(batch['src_img'][valid], batch['tgt_pose'][valid], images[valid],
                                 batch['tgt_img'][valid], tgt_kpts=batch['tgt_kpts'][valid])
      visualize.save_png(os.path.join(out_dir, 'grids', f'grid_p{jax.process_index()}_{b:05d}.png'), grid)
    if strip_fn is not None:  # RPA's warped source after each update (paper Fig. 8).
      valid = batch['valid']
      strip = np.asarray(strip_fn(params, batch['src_img'][valid], batch['tgt_pose'][valid],
                                    (batch['src_kpts'][valid], batch['tgt_kpts'][valid])))
      # Warped-source reconstruction error per update n (and n = -1: the unwarped source) vs the target, over
      # all pixels and over the target's body (PATN's mask): with rpa.init_flow=keypoints the background is
      # masked out on purpose, so only the second measures the alignment.
      tgt = batch['tgt_img'][valid]
      views = np.concatenate([batch['src_img'][valid][None], strip])  # [N+2, b, H, W, 3]
      body = masked.target_masks(batch['tgt_kpts'][valid], tgt.shape[1:3])[None]
      diff = np.abs(views - tgt[None])
      align_err.append(np.stack([diff.mean(axis=(2, 3, 4)),
                                 (diff * body).sum(axis=(2, 3, 4)) / np.maximum(3 * body.sum(axis=(2, 3, 4)), 1)]))
      visualize.save_png(os.path.join(out_dir, 'rpa_strips', f'strip_p{jax.process_index()}_{b:05d}.png'),
                         visualize.alignment_strip(batch['src_img'][valid], strip, batch['tgt_img'][valid]))

  batches = iter(batches)
  first = next(batches, None)
  if first is None:
    raise ValueError(f'No test pairs to sample in {config.data.root} (data.max_test_pairs / sample.num)')
  save(0, first, sampler(params, first, jax.random.fold_in(rng, 0)))  # the first batch compiles the sampler
  if sampler.compile_seconds:
    logs.log_line(f'Sampler compiled in {sum(sampler.compile_seconds):.1f} s (not in the rate below)')
  # Rate and ETA over the batches after the first, whose time is mostly compilation.
  for b, batch in enumerate(tqdm(batches, total=total, initial=1, desc='sampling',
                                 disable=jax.process_index() != 0), start=1):
    save(b, batch, sampler(params, batch, jax.random.fold_in(rng, b)))
  with open(os.path.join(out_dir, f'manifest_p{jax.process_index()}.jsonl'), 'w') as f:
    f.writelines(json.dumps(m) + '\n' for m in manifest)
  if align_err:
    err, body_err = np.concatenate(align_err, axis=2).mean(axis=2)  # [N+2] each
    summary = {'l1_unwarped_source_vs_target': float(err[0]),
               'l1_warped_source_vs_target_per_update': [float(e) for e in err[1:]],
               'body_l1_unwarped_source_vs_target': float(body_err[0]),
               'body_l1_warped_source_vs_target_per_update': [float(e) for e in body_err[1:]],
               'pairs': len(manifest)}
    with open(os.path.join(out_dir, f'rpa_alignment_p{jax.process_index()}.json'), 'w') as f:
      json.dump(summary, f, indent=1)
    for what, e in (('all pixels', err), ("the target's body", body_err)):
      logs.log_line(f'RPA alignment L1 (images in [-1, 1]) vs target, {what}: source {e[0]:.4f}, F^0..F^N '
                    + ' '.join(f'{v:.4f}' for v in e[1:]))
  logs.log_line(f'Wrote {len(manifest)} images and grids to {out_dir}')
  return out_dir
