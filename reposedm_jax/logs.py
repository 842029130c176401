"""Metric logging: TensorBoard events (tensorboardX, no TensorFlow), a JSONL copy, and progress lines.

clu's metric_writers pull in TensorFlow (+1.4 GB); tensorboardX writes the same event files.
Only process 0 writes; other processes get a writer that drops everything.
"""

import json
import os
import time

import jax
import numpy as np


class MetricWriter:
  """Scalars and images to `workdir/tb` (TensorBoard) and scalars to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, jsonl: bool = True):
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      from tensorboardX import SummaryWriter
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
      if jsonl:
        self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), step)
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in values.items()}}) + '\n')
      self._jsonl.flush()

  def image(self, step: int, name: str, img_hwc_u8: np.ndarray) -> None:
    if self.active:
      self._tb.add_image(name, img_hwc_u8, step, dataformats='HWC')

  def close(self) -> None:
    if self.active:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()


class Progress:
  """'step 120/1500 | loss 0.0312 | 2.41 steps/s | ETA 9m32s' lines at the log cadence."""

  def __init__(self, total_steps: int, first_step: int):
    self.total = total_steps
    self.t0, self.s0 = time.time(), first_step
    self.t_last, self.s_last = self.t0, first_step

  def exclude(self, seconds: float) -> None:
    """Keeps `seconds` (e.g. a compile) out of the next rate and the ETA."""
    self.t_last += seconds

  def rate(self, step: int) -> float:
    now = time.time()
    rate = (step - self.s_last) / max(now - self.t_last, 1e-9)
    self.t_last, self.s_last = now, step
    return rate

  def line(self, step: int, rate: float, **values) -> str:
    eta = (self.total - step) / max(rate, 1e-9)
    vals = ' | '.join(f'{k} {v:.4g}' for k, v in values.items())
    return f'step {step}/{self.total} | {vals} | {rate:.2f} steps/s | ETA {format_seconds(eta)}'


def format_seconds(s: float) -> str:
  s = int(s)
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h}h{m:02d}m{sec:02d}s' if h else f'{m}m{sec:02d}s'


def log_line(msg: str) -> None:
  """A line for the user, once (stdout; absl's INFO stream stays for libraries and --verbosity=0)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def fetch_metrics(metrics: dict, step: int, what: str = 'metrics') -> dict:
  """The step's device metrics as floats (fetched once per log interval); FloatingPointError if any is not finite."""
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not all(np.isfinite(v) for v in values.values()):
    raise FloatingPointError(f'Non-finite {what} at step {step}: {values}')
  return values


def write_parameter_table(workdir: str, params) -> None:
  """<workdir>/parameters.txt: every parameter's path, shape, dtype and size (clu's table; shapes only, so
  nothing is copied off the devices)."""
  if jax.process_index() != 0:
    return
  from clu import parameter_overview  # only here: the table is written once per run
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'parameters.txt'), 'w') as f:
    f.write(parameter_overview.get_parameter_overview(params, include_stats=False) + '\n')


def numeric_leaves(tree, prefix: str = '') -> dict:
  """{'a/b/c': float} for every int/float leaf of a nested dict (bools and strings left out)."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, dict):
      out.update(numeric_leaves(v, key))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[key] = float(v)
  return out
