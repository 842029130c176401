"""The training loop RePoseSD's three trainers share (sd_train, sd_train_detector, sd_train_vae).

One place for what every long job here must do: resume from the newest good checkpoint, report the first step's
compile time apart from the rate, log rate and ETA at the cadence (and to TensorBoard with a writer), stop on a
non-finite loss (read at the log and checkpoint steps) without saving, checkpoint every `ckpt_every` steps and on SIGTERM / SIGINT.
"""

import time
from typing import Callable, Optional

import jax
import numpy as np

from reposedm_jax import checkpoint, logs


def run(state, manager, *, total: int, log_every: int, ckpt_every: int, step_fn: Callable,
        inputs_at: Callable[[int], tuple], writer: Optional[logs.MetricWriter] = None):
  """Steps `state` from its own 'step' to `total`: state, metrics = step_fn(state, *inputs_at(step)).

  Returns (state, step reached, the last metrics as floats, stopped by a signal). The manager is finished
  (the last step saved unless it is already, writes awaited, closed).
  """
  step = first = int(state['step'])
  progress, stop, m = logs.Progress(total, first), checkpoint.StopFlag(), {}
  try:
    while step < total and not stop.stop:
      inputs = inputs_at(step)
      t0 = time.time()
      state, m = step_fn(state, *inputs)
      step += 1
      if step == first + 1:
        jax.block_until_ready(m)
        progress.exclude(time.time() - t0)
        logs.log_line(f'first step (compile + run) {time.time() - t0:.1f} s, not counted in the rate')
      # Read back only at log / checkpoint steps (a host sync every step would stop the next batch's loading from
      # overlapping the device); checkpoint.save refuses a non-finite state whatever this check saw.
      at_log, at_ckpt = step % log_every == 0 or step == total, step % ckpt_every == 0
      if (at_log or at_ckpt) and not np.isfinite(float(m['loss'])):
        raise FloatingPointError(f'non-finite loss at step {step}; nothing saved after step '
                                 f'{manager.latest_step()} in {manager.directory}')
      if at_log:
        vals = {k: float(v) for k, v in m.items()}
        if writer is not None:
          writer.scalars(step, vals)
        logs.log_line(progress.line(step, progress.rate(step), **vals))
      if at_ckpt:
        checkpoint.save(manager, step, state)
  finally:
    stop.restore()
    if writer is not None:
      writer.close()
  checkpoint.finish(manager, step, state, stopped=stop.stop)
  return state, step, {k: float(v) for k, v in m.items()}, stop.stop
