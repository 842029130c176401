"""predict's model side: a run or an export loaded for sampling, and rows of (source, pose) generated in batches.

Batches are laid out exactly as sample mode lays out its test batches (rows in order, the last row repeated as
padding, batch b drawn with key fold_in(key(seed), b)), so a dataset pair given to predict with `--crop resize`
and the same seed and batch size is bit-for-bit sample mode's result (tested).
"""

import ast
import dataclasses
import importlib.util
import json
import os
from typing import Any

import jax
import numpy as np

from reposedm_jax import checkpoint, latent, pose_estimator, run_weights, sample, sharding, train_state, visualize
from reposedm_jax.data import pose
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory


@dataclasses.dataclass
class Loaded:
  config: Any
  model: Any
  params: Any
  guide_vars: Any
  mesh: Any
  step: int
  description: str
  vae_vars: Any = None  # latent mode: the frozen VAE (config.latent), else None
  _samplers: dict = dataclasses.field(default_factory=dict)

  @property
  def hw(self):
    return self.config.data.height, self.config.data.width

  @property
  def needs_keypoints(self) -> bool:
    """B2's keypoint pre-warp reads the source keypoints; B1 and a plain B2 do not."""
    return self.config.variant in ('b2', 'full') and self.config.rpa.init_flow == 'keypoints'

  def sampler(self, shared_noise: bool):
    """The jitted sampler for the current `config.sample` (one per setting: the app changes num_steps)."""
    key = (shared_noise, self.config.sample.num_steps, self.config.sample.sampler, self.config.sample.guidance_scale,
           self.config.pif.sample_scale)
    if key not in self._samplers:
      d = self.config.diffusion
      sched = linear_schedule(d.timesteps, d.beta_start, d.beta_end)
      self._samplers[key] = sample.make_sampler(self.model, sched, self.config, self.mesh,
                                                self.config.sample.num_steps, guide_vars=self.guide_vars,
                                                shared_noise=shared_noise, vae_vars=self.vae_vars)
    return self._samplers[key]


def config_from_file(spec: str, overrides=()):
  """`configs/X.py[:args]` -> its get_config(args), with `key.sub=value` overrides (Python literals)."""
  file, _, arg = spec.partition(':')
  if not os.path.isfile(file):
    raise FileNotFoundError(f'--config {file}: no such file')
  module_spec = importlib.util.spec_from_file_location('predict_config', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, eq, text = item.partition('=')
    if not eq:
      raise ValueError(f'--set {item!r}: expected key=value')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f'--set {item!r}: the config has no section {part!r}')
      node = node[part]
    if leaf not in node:
      raise ValueError(f'--set {item!r}: the config has no key {key!r}')
    node[leaf] = value
  return config


def load(path: str, *, step: int | None = None, ema: bool = True, sample_overrides: dict | None = None,
         config=None) -> Loaded:
  """A training workdir (its checkpoint `step`, default the latest; EMA by default), an export directory, or
  with `config` a bare params directory (a converter's output: PIDM's released weights)."""
  given_config = config is not None
  config = run_weights.read_config(path) if config is None else config
  with config.unlocked():
    for key, value in (sample_overrides or {}).items():
      if value is not None:
        section, name = key.split('.')
        config[section][name] = value
  mesh = sharding.make_mesh(config.mesh)
  guide_dir = None
  bare = not run_weights.is_export(path) and not os.path.isdir(os.path.join(path, 'checkpoints'))
  if bare and os.path.isfile(os.path.join(path, 'config.json')) and not given_config:
    raise FileNotFoundError(f'{path} is a training workdir without checkpoints/ yet: train it first')
  if bare:
    model = factory.build_model(config)
    # Fresh parameters for what a B1 tree lacks (b2 / full from PIDM's converted weights: checkpoint.load_params).
    fresh = train_state.init_state(model, train_state.make_optimizer(config), config, jax.random.key(0))['params']
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
    params = jax.tree.map(np.asarray, checkpoint.load_params(path, abstract, fresh_params=fresh))
    what, step_done = f'params {path}', -1
  elif run_weights.is_export(path):
    params = run_weights.load_export_params(path, config)
    with open(os.path.join(path, 'export.json')) as f:
      meta = json.load(f)
    step_done = int(meta.get('step', -1))
    what = f'export {path} (step {step_done}, {meta.get("weights")})'
    guide_dir = os.path.join(path, 'pose')
  else:
    params, step_done = run_weights.restore_run_params(path, step, ema)
    what = f'{path} step {step_done} ({"EMA" if ema else "raw"})'
  guide_vars = None
  if config.variant == 'full':
    if guide_dir is not None and os.path.isdir(guide_dir):
      guide_vars, _ = pose_estimator.load_pose_estimator(config, guide_dir, use_pose_checkpoint=False)
    else:
      guide_vars = pose_estimator.load_guide_variables(config, path)
  # Latent mode: the VAE of config.latent (the run's config.json names the file it trained with).
  return Loaded(config, factory.build_model(config), params, guide_vars, mesh, step_done, what,
                vae_vars=latent.load_vae_variables(config))


def host_batch(rows: list[dict], batch_size: int, hw) -> dict:
  """Rows {'src': uint8 image, 'src_kpts', 'tgt_kpts'[, 'edit_ref': uint8, 'edit_mask': [H, W, 1]]} -> a batch."""
  h, w = hw
  out = []
  for r in rows:
    ex = {'src_img': r['src'].astype(np.float32) / 127.5 - 1.0,
          'tgt_pose': pose.render_pidm_pose(r['tgt_kpts'], h, w),
          'src_kpts': np.asarray(r['src_kpts'], np.float32), 'tgt_kpts': np.asarray(r['tgt_kpts'], np.float32)}
    if 'edit_ref' in r:
      ex['edit_ref'] = r['edit_ref'].astype(np.float32) / 127.5 - 1.0
      ex['edit_mask'] = np.asarray(r['edit_mask'], np.float32)
    out.append(ex)
  valid = [True] * len(out) + [False] * (batch_size - len(out))
  out += [out[-1]] * (batch_size - len(out))
  batch = {k: np.stack([e[k] for e in out]) for k in out[0]}
  batch['valid'] = np.asarray(valid)
  return batch


def round_batch(batch_size: int, mesh) -> int:
  """The batch size rounded up to a multiple of the mesh's devices (the sampler shards the batch)."""
  n = mesh.devices.size
  return -(-batch_size // n) * n


def generate(run: Loaded, rows: list[dict], *, seed: int, batch_size: int, shared_noise: bool = False,
             progress=None) -> list[np.ndarray]:
  """uint8 [H, W, 3] results of the rows, in order."""
  batch_size = round_batch(batch_size, run.mesh)
  sampler = run.sampler(shared_noise)
  key = jax.random.key(seed)
  results = []
  for b, start in enumerate(range(0, len(rows), batch_size)):
    chunk = rows[start:start + batch_size]
    # Shared noise must hold across batches too (a long sequence spans several): one key for all of them.
    batch_key = key if shared_noise else jax.random.fold_in(key, b)
    images = sampler(run.params, host_batch(chunk, batch_size, run.hw), batch_key)
    results += list(visualize.to_uint8(np.asarray(images[:len(chunk)])))
    if progress is not None:
      progress(len(results), len(rows))
  return results
