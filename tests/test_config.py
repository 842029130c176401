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
