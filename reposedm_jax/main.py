"""Entry point: python -m reposedm_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.k=v].

`config.mode` picks the job: train | sample | eval | prepare (tfds ArrayRecord build) | train_pose
(the HigherHRNet estimator for PIF guidance, in <workdir>/pose).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from reposedm_jax import config_lib, logs, sharding

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, samples, logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  # orbax and absl log hundreds of INFO lines per run; the user's lines are printed (logs.log_line). The
  # config is in <workdir>/config.json. `--verbosity=0` brings the INFO stream back.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:  # the config file is loaded lazily, here: a missing file or a bad ':args' is the user's, in one line
    config = _CONFIG.value
    config.mode  # noqa: B018 -- a config that failed to load is a placeholder raising on first access
  except (OSError, ValueError) as e:
    sys.exit(f'Invalid --config: {_last_error_line(str(e))}')
  sharding.maybe_initialize_distributed()
  run_mode(config, _WORKDIR.value)


def _last_error_line(text: str) -> str:
  """The message of the innermost exception in `text` (ml_collections embeds whole tracebacks in its errors)."""
  lines = [line.strip() for line in text.replace('\\n', '\n').splitlines() if line.strip()]
  if 'No such file or directory' in text:
    return next(line for line in lines if 'No such file or directory' in line)
  errors = [line for line in lines if re.match(r'^\w+(Error|Exception): ', line)]
  return errors[-1] if errors else ' '.join(lines)


# Each mode imports only its own job (a function-local import, the package's one exception).
def run_mode(config, workdir: str):
  """Validates `config`, records it in `workdir` and runs its `config.mode` (what the command line does)."""
  config_lib.validate(config)
  config_lib.check_prediction_matches(config, workdir)
  config_lib.write_config(config, workdir)
  # One line, not the whole config (it is in the file; --verbosity=0 also logs it in full).
  logs.log_line(f'mode {config.mode}, variant {config.variant}: config in {os.path.join(workdir, "config.json")}')
  logging.info('Config:\n%s', config)
  if config.mode == 'train':
    from reposedm_jax import train
    return train.train_and_evaluate(config, workdir)
  if config.mode == 'sample':
    from reposedm_jax import sample
    return sample.run_sample(config, workdir)
  if config.mode == 'eval':
    from reposedm_jax.evaluation import engine
    return engine.run_eval(config, workdir)
  if config.mode == 'train_pose':
    from reposedm_jax import pose_train
    return pose_train.train_pose(config, workdir)
  if config.mode in ('reid_train', 'reid_eval'):
    from reposedm_jax.reid import train as reid_train
    return (reid_train.run_train if config.mode == 'reid_train' else reid_train.run_eval)(config, workdir)
  if config.mode == 'reid_augment':
    from reposedm_jax.reid import augment
    return augment.run_augment(config, workdir)
  if config.mode == 'sd_train_vae':
    from reposedm_jax.sd import vae_train
    return vae_train.run_train_vae(config, workdir)
  if config.mode == 'sd_train_detector':
    from reposedm_jax.sd import detector_train
    return detector_train.run_train_detector(config, workdir)
  if config.mode in ('sd_train', 'sd_sample', 'sd_eval'):
    from reposedm_jax.sd import train as sd_train
    return {'sd_train': sd_train.run_train, 'sd_sample': sd_train.run_sample,
            'sd_eval': sd_train.run_eval}[config.mode](config, workdir)
  if config.mode == 'prepare':
    from reposedm_jax.data import tfds_builder
    prepared = tfds_builder.prepare(config.data)
    logging.info('Prepared %s', prepared)
    return prepared
  raise ValueError(f'config.mode={config.mode!r} is not a mode')  # validate() already refuses it


def _parse_flags(argv):
  """absl's parser, but a bad --config.key=value becomes one readable line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError, ValueError, flags.Error) as e:
    overrides = [a for a in argv[1:] if a.startswith('--config')]
    reason = str(e).strip('"\'').replace("\\'", "'")
    reason = _last_error_line(reason) if 'Traceback' in reason else reason.replace('\\n', ' ').replace('\n', ' ')
    sys.exit(f'Invalid command line: {reason} (config arguments given: {overrides})')


def run():
  from reposedm_jax import checkpoint
  from reposedm_jax.data.errors import BadExampleError
  try:
    app.run(main, flags_parser=_parse_flags)
  except config_lib.ConfigError as e:
    sys.exit(str(e))
  except (BadExampleError, checkpoint.CheckpointError, FloatingPointError) as e:
    # The user's data, workdir or run (not a bug): one line; --verbosity=0 keeps the traceback.
    if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present:
      raise
    sys.exit(f'{type(e).__name__}: {e}')


if __name__ == '__main__':
  run()
