"""Start-up validation: every shipped config validates for every variant; bad values are all listed at once."""

import pytest

from configs import deepfashion, deepfashion_512, demo, market1501, synthetic
from reposedm_jax import config_lib


@pytest.mark.parametrize('module', [demo, synthetic, deepfashion, deepfashion_512, market1501])
@pytest.mark.parametrize('variant', ['b1', 'b2', 'full'])
def test_shipped_configs_validate(module, variant, tmp_path):
  config = module.get_config(f'variant={variant}')
  config.data.root = str(tmp_path)
  config_lib.validate(config)
  assert config.variant == variant


def test_every_problem_is_listed_in_one_error(tmp_path):
  config = demo.get_config('variant=full')
  config.data.root = str(tmp_path)
  config.variant = 'b3'
  config.pif.reference = 'keypoints'
  config.eval.protocol = 'paper'
  config.eval.ssim_variants = ('gaussian', 'ms_ssim')
  config.eval.pose_judges = ('hrnet', 'openpose')
  config.pose.arch = 'w64'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  msg = str(e.value)
  for needle in ("variant", "pif.reference='keypoints'", "eval.protocol='paper'", "['ms_ssim']", "['openpose']",
                 "pose.arch='w64'"):
    assert needle in msg, (needle, msg)


def test_missing_data_root_names_the_flag():
  config = demo.get_config()
  config.data.root = '/nonexistent/dataset'
  with pytest.raises(config_lib.ConfigError, match='--config.data.root'):
    config_lib.validate(config)


def test_config_arguments_are_strict():
  from configs import common
  assert common.parse_arg('runlocal=false,variant=b2', variant='b1', runlocal=True) == {'variant': 'b2',
                                                                                       'runlocal': False}
  assert common.parse_arg('runlocal', runlocal=False) == {'runlocal': True}
  with pytest.raises(ValueError, match="runlocal='ture' is not a boolean"):
    common.parse_arg('runlocal=ture', runlocal=False)
  with pytest.raises(ValueError, match="unknown config argument 'runlokal'"):
    common.parse_arg('runlokal', runlocal=False)


@pytest.mark.parametrize('config_arg,message', [
    ('configs/demoo.py', "Invalid --config: [Errno 2] No such file or directory: 'configs/demoo.py'"),
    ('configs/demo.py:runlokal', "ValueError: unknown config argument 'runlokal'"),
    ('configs/demo.py:runlocal=ture', "runlocal='ture' is not a boolean"),
])
def test_a_mistyped_config_is_one_line(config_arg, message, tmp_path):
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.main', f'--config={config_arg}',
                      f'--workdir={tmp_path}'], cwd=repo, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  err = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
  assert 'Traceback' not in r.stdout + r.stderr and message in err[0], err
  assert len(err) == 1, err


@pytest.mark.parametrize('key,value,needle', [
    ('keep_checkpoints', 0, 'train.keep_checkpoints=0 must be positive'),
    ('lr', -1e-4, 'train.lr=-0.0001 must be positive'),
    ('lr', 0.0, 'train.lr=0.0 must be positive'),
    ('ema_decay', 1.0, 'train.ema_decay'),
    ('b2', 1.5, 'AdamW betas'),
])
def test_training_hyperparameters_are_validated(key, value, needle, tmp_path):
  config = demo.get_config()
  config.data.root = str(tmp_path)
  config.train[key] = value
  with pytest.raises(config_lib.ConfigError, match=needle.replace('(', r'\(').replace('.', r'\.')):
    config_lib.validate(config)


def test_ddpm_variance_is_validated(tmp_path):
  config = demo.get_config()
  config.data.root = str(tmp_path)
  config.sample.ddpm_variance = 'fixed'
  with pytest.raises(config_lib.ConfigError, match=r"sample\.ddpm_variance='fixed' must be one of"):
    config_lib.validate(config)


def test_runlocal_is_small_at_512():
  full, local = deepfashion_512.get_config(), deepfashion_512.get_config('runlocal')
  assert len(full.model.channel_mult) == 7 and full.model.model_channels == 128
  assert local.model.model_channels == 16 and len(local.model.channel_mult) == 3
  assert (local.data.height, local.data.width) == (512, 352) and local.train.num_steps == 2


def test_empty_fid_reference_and_lpips_net_mean_skip_and_validate():
  """configs/base.py documents '' as "skip this metric": the validator accepts exactly that vocabulary."""
  from configs import demo
  from reposedm_jax import config_lib
  config = demo.get_config('runlocal')
  config.eval.fid_reference, config.eval.lpips_net = '', ''
  assert config_lib.eval_problems(config.eval) == []
  config_lib.validate_eval(config.eval)
  config.eval.lpips_net = 'vgg_typo'
  with pytest.raises(config_lib.ConfigError, match='lpips_net'):
    config_lib.validate_eval(config.eval)


def test_prediction_is_validated_and_v_aligned_needs_rpa(tmp_path):
  config = demo.get_config('variant=b1')
  config.data.root = str(tmp_path)
  config.diffusion.prediction = 'x0'
  with pytest.raises(config_lib.ConfigError, match=r"diffusion\.prediction='x0' must be one of"):
    config_lib.validate(config)
  config.diffusion.prediction = 'v_aligned'
  with pytest.raises(config_lib.ConfigError, match="variant='b1' does not have"):
    config_lib.validate(config)
  config.variant = 'b2'
  config_lib.validate(config)


def test_checkpoints_of_another_prediction_are_refused_in_one_line(tmp_path):
  """The prediction switch changes what the weights mean, not their shapes: resuming or sampling a workdir (or,
  sampling, an init_from run) trained with another one is a one-line error naming the file; other modes pass."""
  import json
  import os
  import subprocess
  import sys
  run = tmp_path / 'run'
  os.makedirs(run / 'checkpoints')
  with open(run / 'config.json', 'w') as f:
    json.dump({'diffusion': {'timesteps': 1000}}, f)  # before the switch existed: eps
  config = demo.get_config('variant=full')
  config.data.root = str(tmp_path)
  assert config.diffusion.prediction == 'v_aligned'
  config_lib.check_prediction_matches(config, str(run))  # no finished step yet (sampling makes the dir empty)
  os.makedirs(run / 'checkpoints' / '400')
  for mode in ('train', 'sample', 'eval'):  # eval too: it rewrites the config.json the next sample reads
    config.mode = mode
    with pytest.raises(config_lib.ConfigError, match=r"config\.json: its checkpoints were trained with "
                       r"diffusion\.prediction='eps', this config has 'v_aligned'"):
      config_lib.check_prediction_matches(config, str(run))
  config.mode, config.init_from = 'sample', str(run)
  with pytest.raises(config_lib.ConfigError, match='v_aligned'):
    config_lib.check_prediction_matches(config, str(tmp_path / 'fresh'))  # a sample workdir reading init_from
  config.diffusion.prediction = 'eps'
  config_lib.check_prediction_matches(config, str(run))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.main', '--config=configs/demo.py:variant=full',
                      f'--workdir={run}', f'--config.data.root={tmp_path}', '--config.mode=sample'], cwd=repo,
                     capture_output=True, text=True, timeout=120)
  err = [line for line in (r.stdout + r.stderr).splitlines() if line.strip() and 'WARNING' not in line]
  assert r.returncode != 0 and 'Traceback' not in r.stdout + r.stderr, err
  assert any("--config.diffusion.prediction=eps" in line for line in err), err
