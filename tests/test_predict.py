"""predict / export on a tiny trained model: predict equals sample mode, sequences share noise, editing keeps
the reference outside its mask, and exports round-trip bit for bit (orbax, and safetensors with PIDM's names)."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from reposedm_jax import checkpoint, main, run_weights, train_state
from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.data import synthetic
from reposedm_jax.diffusion import samplers
from reposedm_jax.diffusion.schedule import ddim_timesteps, linear_schedule, respace
from reposedm_jax.models import factory
from reposedm_jax.predict import __main__ as predict_cli
from reposedm_jax.predict import engine
from reposedm_jax import export as export_cli
from tests.test_train import tiny_config

pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny B1 trained 4 steps and sampled on 2 test pairs by sample mode (the reference predict must match)."""
  base = tmp_path_factory.mktemp('predict')
  root = str(base / 'data')
  synthetic.generate(root, seed=0, identities=6, views_per_identity=2, height=32, width=22, fmt='pidm')
  config = tiny_config(root)
  config.train.num_steps, config.train.ckpt_every = 4, 4
  config.sample.num_steps, config.sample.num, config.sample.batch_size = 3, 2, 4
  workdir = str(base / 'run')
  main.run_mode(config, workdir)
  with config.unlocked():
    config.mode = 'sample'
  main.run_mode(config, workdir)
  return root, workdir, config


def _first_pair(root, workdir):
  with open(os.path.join(workdir, 'samples', 'manifest_p0.jsonl')) as f:
    row = json.loads(f.readline())
  pose_of = lambda key: os.path.join(root, os.path.splitext(key.replace('img/', 'pose/', 1))[0] + '.txt')
  # The pairs file names images '.jpg' as DeepFashion's does; the synthetic files are PNGs.
  (image,) = glob.glob(os.path.join(root, os.path.splitext(row['source'])[0]) + '.*')
  return row, image, pose_of(row['source']), pose_of(row['target'])


def test_predict_equals_sample_mode_on_the_same_pair_and_seed(trained, tmp_path):
  root, workdir, config = trained
  row, src, src_pose, tgt_pose = _first_pair(root, workdir)
  out = str(tmp_path / 'out')
  record = predict_cli.main(['--workdir', workdir, '--source', src, '--source-pose', src_pose, '--pose', tgt_pose,
                             '--crop', 'resize', '--out', out, '--batch', str(config.sample.batch_size)])
  got = np.asarray(Image.open(os.path.join(out, 'result_000.png')))
  want = np.asarray(Image.open(os.path.join(workdir, 'samples', row['name'])))
  np.testing.assert_array_equal(got, want)
  assert record['seed'] == config.sample.seed and record['source']['keypoints_from'] == src_pose
  side = np.asarray(Image.open(os.path.join(out, 'side_000.png')))
  assert side.shape[0] >= 3 * 32 and side.shape[1] >= 3 * 3 * 22  # upscaled, three titled columns


def test_a_sequence_shares_its_noise_and_writes_gif_and_mp4(trained, tmp_path):
  root, workdir, _ = trained
  _, src, src_pose, tgt_pose = _first_pair(root, workdir)
  out = str(tmp_path / 'seq')
  record = predict_cli.main(['--workdir', workdir, '--source', src, '--source-pose', src_pose, '--pose', tgt_pose,
                             '--pose', src_pose, '--interpolate', '3', '--crop', 'resize', '--out', out])
  assert len(record['targets']) == 3
  gif = Image.open(os.path.join(out, 'sequence.gif'))
  assert gif.n_frames == 3
  if record['mp4']:
    assert os.path.getsize(record['mp4']) > 0
  # Shared noise: the same pose in two rows gives the same image; without it the rows differ.
  model = engine.load(workdir)
  view = np.asarray(Image.open(src).convert('RGB').resize((22, 32), Image.BICUBIC))
  kpts = np.asarray(json.load(open(os.path.join(out, 'predict.json')))['targets'][0]['keypoints'], np.float32)
  rows = [{'src': view, 'src_kpts': kpts, 'tgt_kpts': kpts}] * 2
  same = engine.generate(model, rows, seed=3, batch_size=4, shared_noise=True)
  np.testing.assert_array_equal(same[0], same[1])
  apart = engine.generate(model, rows, seed=3, batch_size=4, shared_noise=False)
  assert np.abs(apart[0].astype(int) - apart[1].astype(int)).max() > 0


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_editing_keeps_the_renoised_reference_outside_the_mask(sampler):
  """Each step's result outside the mask is q_sample(ref, t_prev) with the hook's own noise; after the last
  step it is the reference itself."""
  b, h, w = 2, 8, 6
  rng = np.random.default_rng(0)
  ref = jnp.asarray(rng.uniform(-1, 1, (b, h, w, 3)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(b, h, w, 1)) > 0.5, jnp.float32)
  key = jax.random.key(5)
  post = samplers.inpaint_post_step(ref, mask, key)
  seen = []

  def record(x_prev, idx, sa, s1m):
    out = post(x_prev, idx, sa, s1m)
    jax.debug.callback(lambda *a: seen.append([np.asarray(v) for v in a]), out, idx, sa, s1m)
    return out

  model_fn = lambda x, t: jnp.concatenate([0.3 * x, jnp.zeros_like(x)], -1)
  sched = linear_schedule(1000)
  x_t = jax.random.normal(jax.random.key(1), ref.shape)
  if sampler == 'ddpm':
    final = samplers.ddpm_sample(model_fn, respace(sched, ddim_timesteps(1000, 4)), x_t, jax.random.key(2),
                                 post_step_fn=record)
  else:
    final = samplers.ddim_sample(model_fn, sched, x_t, 4, post_step_fn=record)
  out_mask = np.asarray(mask[..., 0]) == 0
  np.testing.assert_allclose(np.asarray(final)[out_mask], np.clip(np.asarray(ref), -1, 1)[out_mask], atol=1e-6)
  assert len(seen) == 4
  for x_prev, idx, sa, s1m in seen[:-1]:
    noise = np.asarray(jax.random.normal(jax.random.fold_in(key, int(idx)), ref.shape))
    np.testing.assert_allclose(x_prev[out_mask], (sa * np.asarray(ref) + s1m * noise)[out_mask], atol=1e-5)
    assert 0 < float(sa) < 1


def test_edit_command_writes_the_reference_outside_the_mask(trained, tmp_path):
  root, workdir, _ = trained
  _, src, src_pose, tgt_pose = _first_pair(root, workdir)
  out = str(tmp_path / 'edit')
  mask = np.zeros((32, 22), np.uint8)
  mask[8:20, 4:18] = 255
  Image.fromarray(np.repeat(mask[..., None], 3, -1)).save(tmp_path / 'mask.png')
  record = predict_cli.main(['--workdir', workdir, '--source', src, '--source-pose', src_pose, '--garment', src,
                             '--garment-pose', src_pose, '--mask', str(tmp_path / 'mask.png'), '--crop', 'resize',
                             '--out', out])
  edited = np.asarray(Image.open(os.path.join(out, 'edited.png'))).astype(int)
  ref = np.asarray(Image.open(os.path.join(out, 'source.png'))).astype(int)
  keep = mask == 0
  assert np.abs(edited[keep] - ref[keep]).max() <= 1  # the reference, up to the [-1, 1] -> uint8 round trip
  assert record['edit']['mask_pixels'] == int((mask > 0).sum())


def test_export_orbax_round_trips_into_init_from_and_predict(trained, tmp_path):
  root, workdir, config = trained
  dst = str(tmp_path / 'export')
  record = export_cli.main(['--workdir', workdir, '--dst', dst])
  params, step = run_weights.restore_run_params(workdir)
  assert record['step'] == step == 4
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(dst, abstract), params)
  raw, _ = run_weights.restore_run_params(workdir, ema=False)
  export_cli.main(['--workdir', workdir, '--dst', dst + '_raw', '--raw'])
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(dst + '_raw', abstract), raw)
  _, src, src_pose, tgt_pose = _first_pair(root, workdir)
  args = ['--source', src, '--source-pose', src_pose, '--pose', tgt_pose, '--crop', 'resize']
  predict_cli.main(['--weights', dst, '--out', str(tmp_path / 'a')] + args)
  predict_cli.main(['--workdir', workdir, '--out', str(tmp_path / 'b')] + args)
  a, b = (np.asarray(Image.open(str(tmp_path / d / 'result_000.png'))) for d in 'ab')
  np.testing.assert_array_equal(a, b)


def test_safetensors_export_keeps_pidm_names_for_the_pidm_converter(trained, tmp_path):
  _, workdir, config = trained
  dst = str(tmp_path / 'st')
  export_cli.main(['--workdir', workdir, '--dst', dst, '--format', 'safetensors'])
  from safetensors.numpy import load_file
  tensors = load_file(os.path.join(dst, 'params.safetensors'))
  assert 'input_blocks.0.0.weight' in tensors and not any(k.startswith(run_weights.EXTRA_PREFIX) for k in tensors)
  assert tensors['input_blocks.0.0.weight'].ndim == 4  # PyTorch OIHW
  params, _ = run_weights.restore_run_params(workdir)
  converted = pidm_convert.convert_pidm_state_dict(tensors, config.model)
  jax.tree.map(np.testing.assert_array_equal, converted, params)
  jax.tree.map(np.testing.assert_array_equal, run_weights.load_export_params(dst, run_weights.read_config(dst)),
               params)


def test_safetensors_dict_of_a_b2_tree_round_trips():
  config = tiny_config()
  config.variant = 'b2'
  model = factory.build_model(config)
  params = jax.device_get(train_state.init_state(model, optax.sgd(1.0), config, jax.random.key(0))['params'])
  tensors = run_weights.to_safetensors_dict(config, params)
  assert any(k.startswith(run_weights.EXTRA_PREFIX + 'rpa/') for k in tensors)
  assert any(k.startswith('input_blocks.') for k in tensors)
  jax.tree.map(np.testing.assert_array_equal, run_weights.from_safetensors_dict(config, tensors), params)


def test_predict_errors_are_one_line(trained, tmp_path):
  root, workdir, _ = trained
  _, src, src_pose, _ = _first_pair(root, workdir)
  (tmp_path / 'nobody.json').write_text('{"people": []}')
  base = ['--workdir', workdir, '--source', src, '--source-pose', src_pose, '--out', str(tmp_path / 'o')]
  with pytest.raises(SystemExit, match='nobody.json.*no person'):
    predict_cli.main(base + ['--pose', str(tmp_path / 'nobody.json')])
  with pytest.raises(SystemExit, match='missing.jpg.*image not found'):
    predict_cli.main(base[:2] + ['--source', str(tmp_path / 'missing.jpg'), '--pose', src_pose, '--out', 'o'])
  with pytest.raises(SystemExit, match='no config.json'):
    predict_cli.main(['--workdir', str(tmp_path), '--source', src, '--pose', src_pose, '--out', 'o'])
