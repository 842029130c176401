"""RePoseSD end to end at tiny size (issue 21): train (eq. 17 with PIF 'literal') -> exact resume -> DDIM with text
CFG + pose guidance -> HumanSD's metrics, from `main.run_mode` as the command line runs it; the loss's PIF term
against a by-hand computation; the converted-weights path (a diffusers-layout U-Net widened at load)."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reposesd
from reposedm_jax import checkpoint, main, pif
from reposedm_jax.sd import model, synthetic
from reposedm_jax.sd import train as sd_train


def _config(roots, **sd_overrides):
  config = reposesd.get_config('tiny')
  s = config.sd
  s.train_root, s.eval_root = roots['laion_human'], roots['humanart']
  s.vocab = os.path.join(os.path.dirname(__file__), 'data', 'bpe_simple_vocab_16e6.txt.gz')
  s.image_size, s.batch_size, s.num_steps, s.ckpt_every, s.log_every = 32, 4, 2, 1, 1  # 4 fake devices
  s.sample_steps, s.eval_batch_size, s.num_eval, s.fid = 2, 3, 3, False
  config.pif.sample_t_max = 999
  for k, v in sd_overrides.items():
    s[k] = v
  return config


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
  return synthetic.write_dataset(str(tmp_path_factory.mktemp('sd_data')), train=6, val=3, height=40, width=36)


def test_tiny_reposesd_trains_resumes_exactly_samples_and_scores(roots, tmp_path, fast_compile):
  wd = str(tmp_path / 'run')
  config = _config(roots, remat='full')
  config.fsdp_axis = 'data'  # the U-Net and AdamW state split over the 4 fake devices
  config.train.fsdp_min_size = 1024
  metrics = main.run_mode(config, wd)
  assert np.isfinite(metrics['loss']) and metrics['pif_g'] > 0 and metrics['pif_grad_rms'] > 0
  manager = checkpoint.make_manager(wd, 2)
  assert manager.all_steps() == [1, 2]
  step2 = checkpoint.restore_here(manager, 2)['params']
  manager.close()
  shutil.rmtree(os.path.join(wd, 'checkpoints', '2'))
  config = _config(roots, remat='full')
  config.fsdp_axis, config.train.fsdp_min_size = 'data', 1024
  main.run_mode(config, wd)  # the same command: resumes from step 1 and redoes step 2
  manager = checkpoint.make_manager(wd, 2)
  again = checkpoint.restore_here(manager, 2)['params']
  manager.close()
  jax.tree.map(np.testing.assert_array_equal, again, step2)

  config = _config(roots)
  config.mode = 'sd_sample'
  out_dir = main.run_mode(config, wd)
  assert out_dir.endswith('sd_samples/guided') and len([f for f in os.listdir(out_dir) if f.endswith('.png')]) == 3
  meta = json.load(open(os.path.join(out_dir, 'sample.json')))
  assert meta['step'] == 2 and meta['pif_sample_scale'] == config.pif.sample_scale
  assert os.path.isfile(os.path.join(wd, 'sd_samples', 'grid_guided.png'))
  config.mode = 'sd_eval'
  result = main.run_mode(config, wd)
  assert set(result) >= {'AP', 'AP_m', 'CAP', 'PCE', 'gt_people', 'detected_people'}
  assert result['gt_people'] > 0 and result['images'] == 3
  assert json.load(open(os.path.join(wd, 'sd_eval', 'guided.json')))['PCE'] == result['PCE']
  config.pif.sample_scale = 0.0
  config.mode = 'sd_eval'
  with pytest.raises(FileNotFoundError, match='sd_samples/plain.*run --config.mode=sd_sample'):
    main.run_mode(config, wd)


def test_literal_pif_in_the_loss_equals_eq15_by_hand(roots):
  """loss_fn('literal', train_fraction 1) = mean((ε_θ + s·sqrt(1-ᾱ)·∇G(x̂0) − ε)²), ∇G by jax.grad of G_phi through
  the decoder and the guide, computed here from the parts; v-prediction maps the corrected ε back to v."""
  config = _config(roots)
  config.pif.train_fraction, config.pif.grad_blur, config.pif.train_scale = 1.0, 0.0, 3.0
  parts = model.build(config)
  params = model.init_unet_params(config, parts)
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float32)
  kp = np.full((2, 3, 17, 3), [-1, -1, 0], np.float32)
  kp[:, 0, :, :2] = rng.uniform(4, 28, (2, 17, 2))
  kp[:, 0, :, 2] = 1.0
  batch = {'latent': z0, 'pose_latent': jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float32),
           'context': jnp.asarray(rng.normal(size=(2, 77, 32)), jnp.float32), 'keypoints': jnp.asarray(kp)}
  sched = model.sd_schedule()
  key = jax.random.key(5)
  for prediction in ('v_prediction',):  # ε's conversions are the identity; the e2e test trains with ε
    config.sd.prediction = prediction
    loss, m = model.loss_fn(params, parts.frozen, batch, key, parts=parts, config=config, sched=sched)
    k_t, k_n = jax.random.split(key)
    t = jax.random.randint(k_t, (2,), 0, 1000)
    noise = jax.random.normal(k_n, z0.shape)
    acp = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t][:, None, None, None]
    x_t = jnp.sqrt(acp) * z0 + jnp.sqrt(1 - acp) * noise
    out = parts.unet.apply({'params': params}, jnp.concatenate([x_t, batch['pose_latent']], -1), t, batch['context'])
    eps = model.to_eps(prediction, out, x_t, acp)
    ref = model.reference_multi(batch['keypoints'], (32, 32), parts.heads)
    heat = parts.heat_fn(parts.frozen)

    def g_total(x0):
      return jnp.sum(pif.g_phi(heat(x0), ref, threshold=config.pif.threshold, target_support=True))

    grad = jax.grad(g_total)((x_t - jnp.sqrt(1 - acp) * eps) / jnp.sqrt(acp))
    eps_t = eps + 3.0 * jnp.sqrt(1 - acp) * grad
    pred = model.from_eps(prediction, eps_t, x_t, acp)
    want = jnp.mean(jnp.square(pred - model.target(prediction, z0, noise, acp)))
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(m['pif_grad_rms']) > 0


def test_converted_unet_dir_is_read_and_widened_with_zero_pose_weights(roots, tmp_path):
  """A diffusers-layout conversion without --extra_in_channels: RePoseSD widens conv_in at load, so at step 0 the
  U-Net ignores the pose latent exactly (HumanSD's keep_finetune_dims)."""
  from reposedm_jax.convert import sd as sd_convert
  from reposedm_jax.sd import unet
  cfg = unet.TINY
  m = unet.UNet2DConditionModel(cfg)
  x, t, c = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1, 2, 32))
  p4 = m.init(jax.random.key(3), x, t, c)['params']
  d = str(tmp_path / 'unet')
  checkpoint.save_params(os.path.join(d, 'params'), p4)
  with open(os.path.join(d, sd_convert.META_FILE), 'w') as f:
    json.dump({**dataclasses.asdict(cfg), 'block_out_channels': list(cfg.block_out_channels),
               'attention_head_dim': list(cfg.attention_head_dim)}, f)
  config = _config(roots, unet_dir=d)
  parts = model.build(config)
  params = model.init_unet_params(config, parts)
  assert params['conv_in']['kernel'].shape == (3, 3, 8, 32)
  rng = np.random.default_rng(1)
  z, pose = rng.normal(size=(1, 8, 8, 4)).astype(np.float32), rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
  ctx = rng.normal(size=(1, 4, 32)).astype(np.float32)
  ts = jnp.asarray([7])
  want = m.apply({'params': p4}, z, ts, ctx)
  got = parts.unet.apply({'params': params}, np.concatenate([z, pose], -1), ts, ctx)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert sd_train.sample_tag(config) == 'guided'


def test_tiny_vae_and_detector_trainers_write_dirs_the_run_reads(roots, tmp_path, fast_compile):
  """sd_train_vae / sd_train_detector: a few steps, then their outputs are what latent.vae_dir and
  pose.checkpoint / sd.detector_dir read (the scaling factor 1 / std of the training latents)."""
  from reposedm_jax import pose_estimator
  from reposedm_jax.models.autoencoder import vae_config_for
  config = _config(roots, vae_steps=3, ckpt_every=2)
  config.mode = 'sd_train_vae'
  config.pose.num_steps, config.pose.ckpt_every, config.pose.log_every, config.pose.batch_size = 3, 2, 1, 4
  vae_dir, det_dir = str(tmp_path / 'vae'), str(tmp_path / 'det')
  result = main.run_mode(config, vae_dir)
  assert result['psnr'] > 0 and os.path.isfile(os.path.join(vae_dir, 'vae.json'))
  config.latent.vae_dir = vae_dir
  vcfg = vae_config_for(config.latent)
  assert vcfg.scaling_factor == pytest.approx(json.load(open(os.path.join(vae_dir, 'vae_eval.json')))['scaling_factor'])
  config.mode = 'sd_train_detector'
  det = main.run_mode(config, det_dir)
  assert set(det) >= {'AP', 'CAP', 'PCE'} and os.path.isfile(os.path.join(det_dir, 'pose_eval.json'))
  variables, module = pose_estimator.load_pose_estimator(config, det_dir, use_pose_checkpoint=False)
  assert int(json.load(open(os.path.join(det_dir, 'pose_eval.json')))['step']) == 3
  config.pose.checkpoint, config.sd.detector_dir = det_dir, det_dir
  parts = model.build(config)  # the real parts load: VAE from vae_dir, the guide from the detector run
  jax.tree.map(np.testing.assert_array_equal, parts.frozen['guide']['params'], variables['params'])
  assert parts.vae.cfg.scaling_factor == vcfg.scaling_factor


def test_config_mistakes_are_one_line_errors(roots, tmp_path):
  from reposedm_jax import config_lib
  config = reposesd.get_config()  # the real-size config, no VAE given
  config.mode = 'sd_sample'
  config.sd.eval_root = roots['humanart']
  config.sd.vocab = os.path.join(os.path.dirname(__file__), 'data', 'bpe_simple_vocab_16e6.txt.gz')
  config.sd.dtype, config.sd.sample_steps, config.pif.source = 'float16', 5000, 'residual'
  config.sd.unet_dir = str(tmp_path)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  msg = str(e.value)
  for part in ("RePoseSD needs the VAE: model.space='latent' needs --config.latent.vae_dir", "sd.dtype='float16'",
               'sd.sample_steps=5000', "pif.source must be 'x0'", 'has no unet.json'):
    assert part in msg
  config = _config(roots)
  config.mode = 'sd_train'
  config.sd.batch_size = 6  # 4 fake devices
  with pytest.raises(config_lib.ConfigError, match='sd.batch_size=6 must be divisible by the 4 devices'):
    config_lib.validate(config)
