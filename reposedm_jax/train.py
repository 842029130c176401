"""Training: one readable loop in banner-separated sections (after big_vision's train.py).

State is a plain pytree {params, opt_state, ema_params, step}; the step RNG is
fold_in(seed, step), so resuming needs no RNG checkpoint and 2 + 2 steps equal 4.
"""

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from reposedm_jax import checkpoint, latent, logs, pif, pose_estimator, rpa_training, sharding, train_state, visualize
from reposedm_jax import sample as sample_lib
from reposedm_jax.data import dataset, pipeline
from reposedm_jax.diffusion import gaussian
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory


# Frozen parts of the state, loaded from their own files and never updated: PIF's estimator, latent mode's VAE.
FROZEN = ('guide', 'vae')

# ----------------------------------------------------------------------------- update step

def draw_step_inputs(rng, x0, num_timesteps: int, cond_drop_prob: float):
  """Per-example t ~ U{0..T-1}, noise ~ N(0, I) and the CFG keep-mask, drawn at the global batch shape.

  Drawn globally under jit, so every row (and hence every data shard) gets its own values, and the
  values do not depend on how the batch is laid out over devices.
  """
  k_t, k_noise, k_drop = jax.random.split(rng, 3)
  b = x0.shape[0]
  t = jax.random.randint(k_t, (b,), 0, num_timesteps)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  keep = jax.random.bernoulli(k_drop, 1.0 - cond_drop_prob, (b,))
  return t, noise, keep


def train_step(state, batch, base_rng, *, model, sched, tx, config):
  """One optimisation step on a global batch; pure, jit-able, sharding-agnostic."""
  tcfg = config.train
  step = state['step']
  rng = jax.random.fold_in(base_rng, step)
  k_inputs, k_dropout = jax.random.split(rng)
  k_vae = latent.vae_key(rng)
  # Latent mode: the frozen VAE (state['vae']) encodes both images; pixel mode passes the batch through.
  space = latent.Space(config)
  mbatch = space.model_batch(state.get('vae'), batch, k_vae)
  x0 = mbatch['tgt_img']
  t, noise, keep = draw_step_inputs(k_inputs, x0, sched.num_timesteps, tcfg.cond_drop_prob)
  x_t = gaussian.q_sample(sched, x0, t, noise)
  # CFG training: the null condition is an all-zero source (a mid-grey image; a zero latent), as PIDM.
  src = mbatch['src_img'] * keep[:, None, None, None].astype(x0.dtype)

  # RePoseDM (variant full): the frozen estimator rides in the state (checkpointed, never updated); in latent
  # mode it reads the decoded x̂0 (eq. 10) and its reference lives at the pixel resolution.
  guided = config.variant == 'full' and config.pif.train_mode != 'off'
  heat_fn = (space.pixel_heat_fn(pose_estimator.make_heat_fn(config, state['guide']), state.get('vae'))
             if guided else None)
  pif_batch = {'tgt_kpts': batch['tgt_kpts'], 'tgt_img': mbatch['tgt_img']}

  dcfg = config.diffusion
  prediction = dcfg.get('prediction', 'eps')  # runs from before the switch predicted eps
  # The MSE is taken on the eps the network implies, so min_snr_weight is Min-SNR-gamma whatever it predicts;
  # otherwise v's loss is the MSE of v (prediction_mse_weight; None for eps).
  mse_weight = (gaussian.min_snr_weight(sched, t, dcfg.min_snr_gamma) if dcfg.mse_weighting == 'min_snr'
                else gaussian.prediction_mse_weight(sched, t, prediction))

  def loss_fn(params):
    out, inter = model.apply({'params': params}, x_t, t, mbatch['tgt_pose'], src, train=True,
                             kpts=(mbatch['src_kpts'], mbatch['tgt_kpts']), rngs={'dropout': k_dropout},
                             mutable=['intermediates'])
    inter = inter.get('intermediates', {})
    prior = inter['prior'][0] if 'prior' in inter else None  # RPA's aligned source (b2 / full)
    out = gaussian.eps_output(sched, out.astype(jnp.float32), x_t, t, prediction, prior=prior)
    pif_terms, pif_loss = {}, 0.0
    if heat_fn is not None:  # pif.train_mode: 'literal' (eq. 15 in the loss) or 'penalty' (λ·G into θ).
      out, pif_loss, pif_terms = pif.train_terms(config.pif, heat_fn, pose_estimator.reference_heads(config),
                                                 out.astype(jnp.float32), sched=sched, x_t=x_t, t=t,
                                                 noise=noise, batch=pif_batch,
                                                 image_hw=batch['tgt_img'].shape[1:3], clip=not space.latent)
    terms = gaussian.hybrid_loss(sched, out.astype(jnp.float32), x0, x_t, t, noise,
                                 vlb_weight=config.diffusion.vlb_weight, mse_weight=mse_weight)
    loss = terms['loss'].mean() + pif_loss
    if 'warped' in inter:  # B2 and up: the RPA-warped source should look like the target (paper Fig. 8).
      terms['rpa_l1'] = rpa_training.aux_loss(config.rpa, inter['warped'][0], inter['valid'][0], x0,
                                              mbatch['tgt_kpts'], keep)
      loss = loss + config.rpa.aux_weight * terms['rpa_l1']
      terms['rpa_out_of_frame'] = rpa_training.out_of_frame(config.rpa, jax.lax.stop_gradient(inter['valid'][0]),
                                                            mbatch['tgt_kpts'])
    terms.update(pif_terms)
    return loss, terms

  if rpa_training.frozen_after_pretrain(config):
    # RPA is frozen after its pre-training: differentiate the rest only, so the step runs RPA forward (the
    # U-Net's aligned input, the logged auxiliary loss) without its backward pass; zero gradients keep the
    # optimizer's tree (its RPA partition scales every update by 0).
    rpa_params = jax.lax.stop_gradient(state['params']['rpa'])
    rest = {k: v for k, v in state['params'].items() if k != 'rpa'}
    (loss, terms), grads = jax.value_and_grad(lambda p: loss_fn({**p, 'rpa': rpa_params}), has_aux=True)(rest)
    grads = {**grads, 'rpa': jax.tree.map(jnp.zeros_like, rpa_params)}
  else:
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  # EMA is a plain copy for the first ema_start_step steps (PIDM), then decays.
  decay = jnp.where(step < tcfg.ema_start_step, 0.0, tcfg.ema_decay)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state['ema_params'], params)
  metrics = {'loss': loss, 'mse': terms['mse'].mean(), 'vb': terms['vb'].mean(),
             'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params),
             'update_norm': optax.tree.norm(updates), 'lr': train_state.learning_rate(tcfg, step)}
  metrics.update({k: terms[k] for k in ('rpa_l1', 'rpa_out_of_frame', 'pif_g', 'pif_grad_rms') if k in terms})
  new_state = {**state, 'params': params, 'opt_state': opt_state, 'ema_params': ema, 'step': step + 1}
  return new_state, metrics


def pretrain_step(state, batch, base_rng, *, model, tx, config):
  """RPA's auxiliary-only step (rpa_training.pretrain_step) on the batch in the model's space."""
  k_vae = latent.vae_key(jax.random.fold_in(base_rng, state['step']))
  mbatch = latent.Space(config).model_batch(state.get('vae'), batch, k_vae)
  return rpa_training.pretrain_step(state, mbatch, base_rng, model=model, tx=tx, config=config)


def compile_train_step(model, sched, tx, config, mesh, state_sharding, pretrain: bool = False):
  """The jitted step; `pretrain` gives RPA's auxiliary-only step of the first rpa.pretrain_steps steps."""
  if pretrain:
    step_fn = functools.partial(pretrain_step, model=model, tx=tx, config=config)
  else:
    step_fn = functools.partial(train_step, model=model, sched=sched, tx=tx, config=config)
  return jax.jit(step_fn, donate_argnums=0,
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)))


# ----------------------------------------------------------------------------- the loop

def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the last metrics.

  Multi-process: every process runs this with its own shard of each global batch; only process 0
  writes logs, metrics and grids, and every process takes part in the orbax checkpoints.
  """
  tcfg = config.train
  checkpoint.lock_workdir(workdir)
  # --- Mesh
  mesh = sharding.make_mesh(config.mesh)
  logs.log_line(f'Mesh {dict(mesh.shape)} over {jax.device_count()} devices, {jax.process_count()} process(es)')

  # --- Input pipeline (each process reads batch_size / process_count examples per step)
  train_split = dataset.load_split(config.data, 'train')
  test_split = dataset.load_split(config.data, 'test')
  loader = pipeline.make_train_loader(config.data, train_split, global_batch=tcfg.batch_size, seed=config.seed,
                                      shard_index=jax.process_index(), shard_count=jax.process_count())
  data_iter = iter(loader)

  # --- Model, diffusion, optimizer
  model = factory.build_model(config)
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  tx = train_state.make_optimizer(config)
  # Separate streams for init and for the per-step fold_in(step) keys.
  init_rng, base_rng = jax.random.split(jax.random.key(config.seed))
  repl = sharding.replicated(mesh)
  guide_vars = pose_estimator.load_guide_variables(config, workdir) if config.variant == 'full' else None
  vae_vars = latent.load_vae_variables(config)
  abstract = train_state.abstract_state(model, tx, config, init_rng, guide_vars, vae_vars)
  # --- Shard: replicated, or FSDP over config.fsdp_axis (params, opt_state, EMA split leaf by leaf).
  state_sharding = sharding.state_shardings(abstract, mesh, config.fsdp_axis, tcfg.fsdp_min_size)
  if config.fsdp_axis:
    leaves = jax.tree.leaves(abstract['params'])
    split = sum(a.size for a, s in zip(leaves, jax.tree.leaves(state_sharding['params'])) if s.spec != P())
    logs.log_line(f'FSDP over mesh axis {config.fsdp_axis!r}: {split / sum(a.size for a in leaves):.1%} of '
                  'parameters (and their Adam moments and EMA) split')

  # --- Load checkpoint (workdir > init_from > scratch)
  manager = checkpoint.make_manager(workdir, tcfg.keep_checkpoints)
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                  state_sharding)
  state = checkpoint.restore_latest(manager, abstract_sharded, data_iter)
  if state is None:
    state = jax.jit(lambda r: train_state.init_state(model, tx, config, r),
                    out_shardings={k: v for k, v in state_sharding.items() if k not in FROZEN})(init_rng)
    for key, frozen in (('guide', guide_vars), ('vae', vae_vars)):
      if frozen is not None:  # make_array_from_callback: also valid when the mesh spans processes.
        state[key] = sharding.put_global(frozen, state_sharding[key])
    if config.init_from:
      params = checkpoint.load_params(config.init_from, abstract_sharded['params'], fresh_params=state['params'])
      fresh_keys = ('params', 'ema_params', 'opt_state')
      fresh = jax.jit(lambda p: {'params': p, 'ema_params': jax.tree.map(jnp.copy, p), 'opt_state': tx.init(p)},
                      out_shardings={k: state_sharding[k] for k in fresh_keys})(params)
      state = {**state, **fresh}
  first_step = int(state['step'])
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  logs.log_line(f'Model {config.variant}: {n_params / 1e6:.2f} M parameters; starting at step {first_step}')
  logs.write_parameter_table(workdir, state['params'])

  step_fn = compile_train_step(model, sched, tx, config, mesh, state_sharding)
  pretrain_fn = (compile_train_step(model, sched, tx, config, mesh, state_sharding, pretrain=True)
                 if rpa_training.uses_phases(config) else None)
  sampler = sample_lib.make_sampler(model, sched, config, mesh, num_steps=config.sample.num_steps,
                                    guide_vars=state.get('guide'), vae_vars=state.get('vae'))
  # The sampler takes replicated params; under FSDP the EMA is gathered for each grid (rare).
  sampling_params = jax.jit(lambda p: p, out_shardings=repl) if config.fsdp_axis else (lambda p: p)
  grid_batch = next(pipeline.iterate_eval(config.data, test_split, tcfg.grid_pairs))
  writer = logs.MetricWriter(workdir)
  progress = logs.Progress(tcfg.num_steps, first_step)
  stop = checkpoint.StopFlag()
  # A signal reaches the processes of a job between different steps: they agree on stopping (a collective)
  # every few steps, so that all of them save the same step. One process checks every step, for free.
  stop_check_every = 1 if jax.process_count() == 1 else max(1, min(10, tcfg.log_every))
  stopped = False
  last = {}

  # --- Train loop
  step = first_step
  data_wait, wait_steps = 0.0, 0
  compiled = set()
  try:
    while step < tcfg.num_steps and not stopped:
      # Data wait: host time blocked on the input pipeline. Dispatch is asynchronous, so the device is
      # still running earlier steps meanwhile; it starves only when this approaches the step time.
      t_wait = time.perf_counter()
      batch = sharding.global_batch(next(data_iter), mesh)
      data_wait += time.perf_counter() - t_wait
      wait_steps += 1
      in_pretrain = pretrain_fn is not None and step < config.rpa.pretrain_steps
      fn = pretrain_fn if in_pretrain else step_fn
      if fn not in compiled:  # say so before the silent minutes a first call can take on a CPU
        logs.log_line(f"Compiling the {'RPA pre-training' if in_pretrain else 'train'} step ...")
      t_call = time.perf_counter()
      state, metrics = fn(state, batch, base_rng)
      if fn not in compiled:  # Its first call compiles: reported, and kept out of the steps/s rate.
        jax.block_until_ready(metrics)
        took = time.perf_counter() - t_call
        compiled.add(fn)
        progress.exclude(took)
        logs.log_line(f"{'RPA pre-training' if in_pretrain else 'Train'} step compiled (and run once) in "
                      f'{took:.1f} s')
      step += 1
      if step % tcfg.log_every == 0 or step == tcfg.num_steps:
        last = logs.fetch_metrics(metrics, step)
        rate = progress.rate(step)
        last['data_wait_ms'] = 1e3 * data_wait / wait_steps
        last['data_wait_frac'] = min(1.0, data_wait * rate / wait_steps)  # Of the wall time per step.
        data_wait, wait_steps = 0.0, 0
        writer.scalars(step, {**last, 'steps_per_sec': rate})
        logs.log_line(progress.line(step, rate, loss=last['loss'], mse=last['mse'],
                                    data_wait_ms=last['data_wait_ms']))
        if last.get('rpa_out_of_frame', 0.0) > 0.9:
          logging.warning('RPA samples %.0f%% of the target person outside the source frame at step %d: its '
                          'flow has collapsed and the U-Net gets no aligned source (WORKSPACE.md, RPA).',
                          100 * last['rpa_out_of_frame'], step)
      if step % tcfg.ckpt_every == 0:
        checkpoint.save(manager, step, state, data_iter)
      # A last grid at the end of training, when the run samples at all (sample_every <= num_steps).
      final_grid = step == tcfg.num_steps and tcfg.sample_every <= tcfg.num_steps
      if step % tcfg.sample_every == 0 or final_grid:
        # The live copies of the frozen parts: the step donates (deletes) older ones.
        generated = sampler(sampling_params(state['ema_params']), grid_batch, jax.random.key(config.sample.seed),
                            state.get('guide'), vae=state.get('vae'))
        grid = visualize.pair_grid(grid_batch['src_img'], grid_batch['tgt_pose'], np.asarray(generated),
                                   grid_batch['tgt_img'], tgt_kpts=grid_batch['tgt_kpts'])
        if jax.process_index() == 0:
          visualize.save_png(os.path.join(workdir, 'samples', f'train_step_{step:07d}.png'), grid)
        writer.image(step, 'samples', grid)
      if step % stop_check_every == 0:
        stopped = sharding.any_process(stop.stop)
  except BaseException:
    manager.wait_until_finished()  # an in-flight save of an earlier, finite step lands before the process ends
    raise
  finally:
    stop.restore()
  # --- Final / preemption checkpoint (all processes: orbax writes each one's shards)
  checkpoint.finish(manager, step, state, data_iter, stopped=stopped)
  writer.close()
  summary = os.path.join(workdir, 'train_summary.json')
  # A rerun of a finished run trains nothing: keep the summary of the run that did the work.
  if jax.process_index() == 0 and (step > first_step or not os.path.exists(summary)):
    with open(summary, 'w') as f:
      json.dump({'step': step, 'metrics': last, 'preempted': stopped}, f, indent=1)
  return {'step': step, **last}
