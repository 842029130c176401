"""Latent mode (issue 18): the frozen VAE between the data and the model, PIF's gradient through the decoder,
the configs' checks, and train -> sample -> eval of all three variants from the same commands."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import deepfashion_latent
from reposedm_jax import config_lib, latent, pif, pose_estimator, sharding, train, train_state
from reposedm_jax.convert import vae as vae_convert
from reposedm_jax.data import synthetic
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import autoencoder, factory
from tests.conftest import random_batch
from tests.test_train import REPO, stage_env, tiny_config

pytestmark = pytest.mark.usefixtures('fast_compile')


def latent_config(variant='b1'):
  config = tiny_config()
  config.variant = variant
  deepfashion_latent.apply_latent(config, preset='tiny')
  m = config.model  # tiny_config's U-Net, on the tiny VAE's 16x11 latents
  m.channel_mult, m.attention_ds = (1, 2), (2,)
  config.rpa.ds = 2
  config.pif.estimator = 'toy'
  return config


def test_keypoints_move_to_latent_pixels_and_missing_stays_missing():
  kpts = jnp.asarray([[[0.0, 0.0], [7.5, 15.5], [-1.0, -1.0], [3.0, -1.0]]])
  out = np.asarray(latent.scale_kpts(kpts, 8))
  # Pixel centres: x_latent = (x + 0.5) / 8 - 0.5, so pixel 7.5 (the middle of pixels 0..15) is latent 0.5.
  np.testing.assert_allclose(out[0, :2], [[-0.4375, -0.4375], [0.5, 1.5]])
  np.testing.assert_array_equal(out[0, 2:], -1.0)  # missing (either coordinate -1) stays -1


def test_model_batch_encodes_images_resizes_pose_and_pixel_mode_is_the_identity():
  config = latent_config()
  space = latent.Space(config)
  vae = latent.load_vae_variables(config)
  batch = {k: jnp.asarray(v) for k, v in random_batch(config).items()}
  mb = jax.jit(space.model_batch)(vae, batch)
  assert mb['tgt_img'].shape == (4, 16, 11, 4) and mb['src_img'].shape == (4, 16, 11, 4)
  assert mb['tgt_pose'].shape == (4, 16, 11, 20)
  module = autoencoder.AutoencoderKL(autoencoder.TINY)
  want = 0.18215 * module.apply(vae, batch['tgt_img'], method=module.encode)[0]
  np.testing.assert_allclose(np.asarray(mb['tgt_img']), np.asarray(want), rtol=1e-5, atol=1e-6)
  # A constant pose map stays constant (the resampling averages, it does not sum).
  const = space.pose(vae, jnp.full((1, 32, 22, 20), 0.25))
  np.testing.assert_allclose(np.asarray(const), 0.25, atol=1e-6)
  pixel = tiny_config()
  assert latent.Space(pixel).model_batch(None, batch) is batch
  assert latent.load_vae_variables(pixel) is None


def test_pose_encode_mode_is_the_vae_latent_of_the_rgb_rendering():
  config = latent_config()
  config.latent.pose = 'encode'
  space = latent.Space(config)
  vae = latent.load_vae_variables(config)
  pose = jnp.asarray(random_batch(config)['tgt_pose'])
  rgb = latent.pose_rgb(pose)
  assert rgb.shape == pose.shape[:3] + (3,) and float(rgb.min()) >= -1 and float(rgb.max()) <= 1
  np.testing.assert_allclose(np.asarray(space.pose(vae, pose)), np.asarray(space.encode(vae, rgb)), atol=1e-6)
  assert space.pose(vae, pose).shape == (4, 16, 11, 4)


def test_posterior_samples_differ_per_key_and_the_mean_is_deterministic():
  config = latent_config()
  config.latent.sample_posterior = True
  space = latent.Space(config)
  vae = latent.load_vae_variables(config)
  img = jnp.asarray(random_batch(config)['tgt_img'])
  a = space.model_batch(vae, {'tgt_img': img}, jax.random.key(0))['tgt_img']
  b = space.model_batch(vae, {'tgt_img': img}, jax.random.key(1))['tgt_img']
  assert float(jnp.abs(a - b).max()) > 1e-3
  config.latent.sample_posterior = False
  c = latent.Space(config).model_batch(vae, {'tgt_img': img}, jax.random.key(0))['tgt_img']
  d = latent.Space(config).model_batch(vae, {'tgt_img': img}, jax.random.key(1))['tgt_img']
  np.testing.assert_array_equal(np.asarray(c), np.asarray(d))


def _one_step(config, batch, vae=None):
  mesh = sharding.make_mesh((('data', -1),))
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  state = train_state.init_state(model, tx, config, jax.random.key(0))
  if vae is not None:
    state['vae'] = jax.tree.map(jnp.copy, vae)  # the step donates the state
  repl = sharding.replicated(mesh)
  state = jax.device_put(state, repl)
  step = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, jax.tree.map(lambda _: repl, state))
  return jax.device_get(step(state, sharding.global_batch(batch, mesh), jax.random.key(1)))


@pytest.mark.parametrize('variant', ['b1', 'b2'])
def test_latent_train_step_is_the_pixel_step_on_the_encoded_batch(variant):
  """The latent step = the same network trained in 'pixel' mode on the VAE's latents (what it must feed it); b2
  also checks RPA's keypoint pre-warp and auxiliary loss on latents and latent-pixel keypoints."""
  config = latent_config(variant)
  vae = latent.load_vae_variables(config)
  batch = random_batch(config)
  s_lat, m_lat = _one_step(config, batch, vae)
  encoded = {k: np.asarray(v) for k, v in latent.Space(config).model_batch(vae, batch).items()}
  pixel = latent_config(variant)
  pixel.model.space = 'pixel'
  pixel.data.height, pixel.data.width = 16, 11
  s_pix, m_pix = _one_step(pixel, encoded)
  np.testing.assert_allclose(m_lat['loss'], m_pix['loss'], rtol=1e-5)
  if variant == 'b2':
    np.testing.assert_allclose(m_lat['rpa_l1'], m_pix['rpa_l1'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s_lat['params'], s_pix['params'])
  # The VAE rides in the state untouched.
  jax.tree.map(np.testing.assert_array_equal, s_lat['vae'], jax.device_get(vae))


def test_pif_gradient_through_the_decoder_matches_finite_differences():
  """∇_z G(D(z)) (eq. 10-11 in latent mode) against central differences, in float64."""
  config = latent_config('full')
  with jax.enable_x64(True):
    vae = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), latent.load_vae_variables(config))
    guide = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), pose_estimator.load_guide_variables(config, ''))
    space = latent.Space(config)
    heat_fn = space.pixel_heat_fn(pose_estimator.make_heat_fn(config, guide), vae)
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(2, 16, 11, 4)) * 0.5)
    kpts = jnp.asarray(rng.uniform(2, 20, (2, 18, 2)))
    ref = pif.reference_heatmaps(kpts, (32, 22), pose_estimator.reference_heads(config))
    kwargs = dict(threshold=0.1, reference='heatmaps', target_support=True, normalize='sum')
    g, grad = pif.guidance_gradient(heat_fn, z, ref, **kwargs)
    assert grad.shape == z.shape and float(jnp.abs(grad).max()) > 0
    total = lambda x: float(jnp.sum(pif.g_phi(heat_fn(x), ref, **kwargs)))  # noqa: E731
    for seed in range(3):
      v = jnp.asarray(np.random.default_rng(seed + 1).normal(size=z.shape))
      eps = 1e-5
      fd = (total(z + eps * v) - total(z - eps * v)) / (2 * eps)
      np.testing.assert_allclose(float(jnp.sum(grad * v)), fd, rtol=1e-5)


def test_converted_vae_dir_loads_as_written(tmp_path):
  config = latent_config()
  fresh = latent.load_vae_variables(config)['params']
  out = vae_convert.save_vae(jax.device_get(fresh), str(tmp_path / 'vae'), autoencoder.TINY, 'random')
  config.latent.vae_dir, config.latent.random_preset = out, ''
  loaded = latent.load_vae_variables(config)['params']
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), jax.device_get(fresh))


@pytest.mark.parametrize('variant', ['b1', 'b2', 'full'])
def test_deepfashion_latent_validates_with_a_converted_sd_vae(variant, tmp_path):
  vae_dir = tmp_path / 'sd_vae'
  vae_dir.mkdir()
  sd = autoencoder.VAEConfig()
  (vae_dir / 'vae.json').write_text(json.dumps({'block_out_channels': list(sd.block_out_channels),
                                                'layers_per_block': 2, 'latent_channels': 4, 'norm_groups': 32,
                                                'scaling_factor': 0.18215}))
  config = deepfashion_latent.get_config(f'variant={variant}')
  config.data.root, config.latent.vae_dir = str(tmp_path), str(vae_dir)
  config_lib.validate(config)
  assert factory.dummy_inputs(config)[0].shape == (1, 32, 22, 4)


def test_latent_config_mistakes_are_listed(tmp_path):
  config = deepfashion_latent.get_config()
  config.data.root = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match='latent.vae_dir'):
    config_lib.validate(config)
  config.latent.random_preset = 'sd'
  config.data.height, config.model.image_channels, config.latent.pose = 250, 3, 'encode'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  for needle in ('250 x 176 must be divisible', 'image_channels=3 must equal', 'pose_channels=20 must equal'):
    assert needle in str(e.value)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('latent_data'))
  synthetic.generate(root, seed=0, identities=10, views_per_identity=3, height=32, width=22, fmt='pidm')
  return root


# b2's network is full's (full adds PIF guidance), and its latent step is checked above: the CLI runs b1 and full.
@pytest.mark.parametrize('variant', ['b1', 'full'])
def test_main_latent_train_sample_eval(variant, data_root, tmp_path):
  workdir = str(tmp_path / 'run')
  base = [sys.executable, '-m', 'reposedm_jax.main', f'--config=configs/demo.py:runlocal,variant={variant}',
          f'--workdir={workdir}', f'--config.data.root={data_root}', '--config.data.height=32',
          '--config.data.width=22', '--config.model.channel_mult=(1, 2)', '--config.model.attention_ds=(2,)',
          '--config.model.model_channels=16', '--config.model.space=latent', '--config.latent.random_preset=tiny',
          '--config.model.image_channels=4', '--config.rpa.ds=2', '--config.pif.estimator=toy',
          "--config.eval.pose_judges=()"]
  for mode in ('train', 'sample', 'eval'):
    r = subprocess.run(base + [f'--config.mode={mode}'], cwd=REPO, env=stage_env(mode), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  ckpt = os.path.join(workdir, 'checkpoints')
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  assert os.path.isdir(os.path.join(ckpt, str(step), 'state', 'vae')) or \
      'vae' in open(os.path.join(ckpt, str(step), 'state', '_METADATA')).read()
  metrics = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert metrics['num_images'] == 8 and -1 < metrics['ssim']['generated'] < 1
  from PIL import Image
  png = next(f for f in os.listdir(os.path.join(workdir, 'samples')) if f.endswith('_vis.png'))
  assert Image.open(os.path.join(workdir, 'samples', png)).size == (22, 32)  # decoded to pixels
