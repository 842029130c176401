"""predict / export on a tiny trained model: predict equals sample mode, sequences share noise, editing keeps
the reference outside its mask, and exports round-trip bit for bit (orbax, and safetensors with PIDM's names)."""

import glob
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from reposedm_jax import checkpoint, main, run_weights, train_state
from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.data import pose_files, synthetic
from reposedm_jax.diffusion import samplers
from reposedm_jax.diffusion.schedule import ddim_timesteps, linear_schedule, respace
from reposedm_jax.models import factory
from reposedm_jax.predict import __main__ as predict_cli
from reposedm_jax.predict import engine, inputs
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
  same = engine.generate(model, rows * 3, seed=3, batch_size=4, shared_noise=True)  # 6 rows: two batches
  for image in same[1:]:
    np.testing.assert_array_equal(same[0], image)
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
  chex.assert_trees_all_equal(checkpoint.load_params(dst, abstract), params)
  raw, _ = run_weights.restore_run_params(workdir, ema=False)
  export_cli.main(['--workdir', workdir, '--dst', dst + '_raw', '--raw'])
  chex.assert_trees_all_equal(checkpoint.load_params(dst + '_raw', abstract), raw)
  _, src, src_pose, tgt_pose = _first_pair(root, workdir)
  args = ['--source', src, '--source-pose', src_pose, '--pose', tgt_pose, '--crop', 'resize']
  predict_cli.main(['--weights', dst, '--out', str(tmp_path / 'a')] + args)
  predict_cli.main(['--workdir', workdir, '--out', str(tmp_path / 'b')] + args)
  a, b = (np.asarray(Image.open(str(tmp_path / d / 'result_000.png'))) for d in 'ab')
  np.testing.assert_array_equal(a, b)


def test_export_never_replaces_what_is_not_an_export(trained, tmp_path):
  _, workdir, _ = trained
  for dst in (workdir, os.path.dirname(workdir)):
    with pytest.raises(SystemExit, match='overlaps the run'):
      export_cli.main(['--workdir', workdir, '--dst', dst])
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'mine.txt').write_text('keep me')
  with pytest.raises(SystemExit, match='not an earlier export'):
    export_cli.main(['--workdir', workdir, '--dst', str(tmp_path / 'notes')])
  assert (tmp_path / 'notes' / 'mine.txt').read_text() == 'keep me'
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))


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
  chex.assert_trees_all_equal(converted, params)
  chex.assert_trees_all_equal(run_weights.load_export_params(dst, run_weights.read_config(dst)),
               params)


def test_safetensors_dict_of_a_b2_tree_round_trips():
  config = tiny_config()
  config.variant = 'b2'
  model = factory.build_model(config)
  params = jax.device_get(train_state.init_state(model, optax.sgd(1.0), config, jax.random.key(0))['params'])
  tensors = run_weights.to_safetensors_dict(config, params)
  assert any(k.startswith(run_weights.EXTRA_PREFIX + 'rpa/') for k in tensors)
  assert any(k.startswith('input_blocks.') for k in tensors)
  chex.assert_trees_all_equal(run_weights.from_safetensors_dict(config, tensors), params)


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


POSE_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.venv-pose', 'bin', 'python')


@pytest.mark.skipif(not os.path.isfile(POSE_VENV), reason='needs the BlazePose venv (make pose-venv)')
def test_a_photo_as_source_and_pose_goes_through_blazepose(trained, tmp_path):
  """A 256x176 synthetic front view: BlazePose's keypoints (the real pretrained model) near the drawn ones."""
  _, workdir, _ = trained
  root = str(tmp_path / 'photos')
  synthetic.generate(root, seed=0, identities=3, views_per_identity=1, height=256, width=176, fmt='pidm')
  (photo,) = glob.glob(os.path.join(root, 'img', '**', '01_1_front.png'), recursive=True)[:1]
  truth = pose_files.read_pose_file(os.path.splitext(photo.replace('/img/', '/pose/'))[0] + '.txt')[0]
  truth = inputs._frame_pixels(truth, 'legacy256')[0]  # pylint: disable=protected-access
  found = inputs.PhotoPoses()(inputs.read_photo(photo), photo)
  both = (found[:, 0] != -1) & (truth[:, 0] != -1)
  assert both.sum() >= 10
  assert np.median(np.linalg.norm(found[both] - truth[both], axis=1)) < 0.05 * 256
  record = predict_cli.main(['--workdir', workdir, '--source', photo, '--pose', photo, '--out', str(tmp_path / 'o')])
  assert record['source']['keypoints_from'] == 'BlazePose'
  assert os.path.isfile(str(tmp_path / 'o' / 'result_000.png'))


def test_a_bare_params_directory_loads_with_a_config(trained, tmp_path):
  """A converter's output (here: an export's params/ tree) with a config gives the run's own images."""
  root, workdir, config = trained
  dst = str(tmp_path / 'export')
  export_cli.main(['--workdir', workdir, '--dst', dst])
  bare = engine.load(os.path.join(dst, 'params'), config=run_weights.read_config(workdir))
  run = engine.load(workdir)
  chex.assert_trees_all_equal(bare.params, run.params)
  cfg = engine.config_from_file('configs/demo.py:runlocal', ['data.width=256', 'sample.sampler=ddim'])
  assert (cfg.data.width, cfg.sample.sampler) == (256, 'ddim')
  with pytest.raises(FileNotFoundError, match='no such file'):
    engine.config_from_file('configs/nope.py')


APP_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.venv-app', 'bin', 'python')
CLIENT = '''
import json, sys
from gradio_client import Client
c = Client(sys.argv[1], verbose=False)
out = c.predict(None, sys.argv[2], None, None, sys.argv[3], 3, 0, 1, api_name='/transfer')
print('RESULT ' + json.dumps(out))
'''


@pytest.mark.skipif(not os.path.isfile(APP_VENV), reason='needs the web demo venv (make app)')
def test_the_web_demo_answers_a_client_with_predicts_image(trained, tmp_path):
  """`reposedm_jax.app` in its venv, called by gradio_client: the same image as predict's command line; with
  Chromium, a real click in the page shows it (a screenshot is written)."""
  import socket
  import subprocess
  import sys
  import time
  import urllib.request
  from reposedm_jax import app
  root, workdir, _ = trained
  examples = app.dataset_examples(root)
  src_label, pose_label = sorted(examples)[:2]
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'GRADIO_ANALYTICS_ENABLED': 'False'}
  server = subprocess.Popen([APP_VENV, '-m', 'reposedm_jax.app', '--workdir', workdir, '--data', root, '--port',
                             str(port)], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  url = f'http://127.0.0.1:{port}/'
  try:
    end = time.monotonic() + 240
    while True:
      try:
        urllib.request.urlopen(url, timeout=5)
        break
      except OSError:
        assert server.poll() is None and time.monotonic() < end, server.stdout.read()[-3000:]
        time.sleep(1)
    r = subprocess.run([APP_VENV, '-c', CLIENT, url, src_label, pose_label], capture_output=True, text=True,
                       timeout=300, env=env)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith('RESULT ')), None)
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    result, side, gif, status = json.loads(line[len('RESULT '):])
    assert gif is None and 'seed 0' in status, status
    src, src_pose = examples[src_label]
    predict_cli.main(['--workdir', workdir, '--source', src, '--source-pose', src_pose, '--crop', 'resize', '--pose',
                      examples[pose_label][1], '--steps', '3', '--seed', '0', '--out', str(tmp_path / 'cli')])
    np.testing.assert_array_equal(np.asarray(Image.open(result)),
                                  np.asarray(Image.open(str(tmp_path / 'cli' / 'result_000.png'))))
    from tests import study_browser
    chromium = study_browser.find_chromium()
    if chromium:
      import base64
      with study_browser.Chromium(chromium, str(tmp_path), size=(1280, 1250)) as page:
        page.call('Page.navigate', {'url': url})
        page.wait("!!document.querySelector('#generate')", timeout=60)
        page.click('#generate')
        page.wait("!!(document.querySelector('#result img') && document.querySelector('#result img').complete)",
                  timeout=240)
        shot = page.call('Page.captureScreenshot', {'format': 'png'})['data']
        (tmp_path / 'app.png').write_bytes(base64.b64decode(shot))
        assert Image.open(tmp_path / 'app.png').size[0] >= 1000
        if os.environ.get('REPOSEDM_APP_SCREENSHOT'):  # docs/app.png is made this way
          Image.open(tmp_path / 'app.png').save(os.environ['REPOSEDM_APP_SCREENSHOT'])
  finally:
    server.terminate()
    server.wait(timeout=30)


def test_the_project_hrnet_finds_photo_poses_in_the_photos_frame(trained, tmp_path):
  """--pose-detector hrnet: the estimator runs on the photo resized to its training height; its keypoints come
  back in the photo's own pixels (checked against running it on the resized image directly)."""
  from reposedm_jax.convert import hrnet as hrnet_convert
  from reposedm_jax.metrics import hrnet_judge
  from reposedm_jax.models import hrnet
  root, workdir, _ = trained
  module = hrnet.build_hrnet('small')
  variables = jax.device_get(hrnet.init_variables(module, jax.random.key(3)))
  weights = hrnet_convert.save_hrnet(variables, str(tmp_path / 'hrnet'), {'arch': 'small'})
  photo = np.asarray(Image.open(_first_pair(root, workdir)[1]).convert('RGB').resize((66, 96), Image.BICUBIC))
  found = inputs.PhotoPoses(hrnet=(module, variables, -np.inf, 32))._coco(photo)  # pylint: disable=protected-access
  small = np.asarray(Image.fromarray(photo).resize((22, 32), Image.BICUBIC))
  direct = hrnet_judge.HrnetJudge(module, variables, -np.inf, 'x', batch_size=1)(small[None])[0]
  np.testing.assert_allclose(found, (direct + 0.5) * 3.0 - 0.5, atol=1e-4)
  assert (found[:, 0] >= -0.5).all() and (found[:, 0] <= 66).all() and (found[:, 1] <= 96).all()
  Image.fromarray(photo).save(tmp_path / 'me.png')
  record = predict_cli.main(['--workdir', workdir, '--source', str(tmp_path / 'me.png'), '--pose',
                             str(tmp_path / 'me.png'), '--pose-detector', 'hrnet', '--hrnet-dir', weights,
                             '--hrnet-height', '32', '--out', str(tmp_path / 'o')])
  assert record['source']['keypoints_from'] == 'HigherHRNet'
