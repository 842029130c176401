"""Runs the ablation's stages in order, skipping the done ones, with progress, elapsed time and ETA.

Each stage is `python -m reposedm_jax.main` in a subprocess (`in_process=False`, the default: every job gets
a fresh XLA client and its own memory) or `main.run_mode` in this process (tests). Stage wall times are
appended to <out>/stage_times.jsonl, so the ETA after a restart uses the times measured before it.
"""

import importlib
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

from reposedm_jax import logs, main
from reposedm_jax.ablation import plan
from reposedm_jax.data import synthetic

CONFIG_FILE = 'configs/demo.py'


def _flag_value(v) -> str:
  return v if isinstance(v, str) else repr(v)


def command(stage: plan.Stage) -> List[str]:
  """The command line of a config stage (what a person would type to rerun it alone)."""
  cfg = CONFIG_FILE + (f':{stage.config_arg}' if stage.config_arg else '')
  return ([sys.executable, '-m', 'reposedm_jax.main', f'--config={cfg}', f'--workdir={stage.workdir}'] +
          [f'--config.{k}={_flag_value(v)}' for k, v in stage.overrides.items()])


def build_config(stage: plan.Stage):
  """The stage's config in this process: configs/demo.py with its overrides (types follow the config's)."""
  config = importlib.import_module('configs.demo').get_config(stage.config_arg or None)  # repo-root configs/
  for key, value in stage.overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    current = node[leaf]
    node[leaf] = type(current)(value) if isinstance(current, (float, tuple)) and current is not None else value
  return config


def _run_stage(stage: plan.Stage, in_process: bool) -> None:
  if stage.kind == 'data':
    synthetic.generate(stage.workdir, **stage.overrides)
  elif in_process:
    main.run_mode(build_config(stage), stage.workdir)
  else:
    env = dict(os.environ)
    env.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
    r = subprocess.run(command(stage), env=env)
    if r.returncode != 0:
      raise RuntimeError(f'ablation stage {stage.name!r} failed (exit {r.returncode}); rerun the same command to '
                         f'resume. Alone: {" ".join(command(stage))}')


def _load_times(path: str) -> Dict[str, List[float]]:
  times: Dict[str, List[float]] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        times.setdefault(row['kind'], []).append(row['seconds'])
  return times


def run(stages: List[plan.Stage], out: str, in_process: bool = False,
        log: Callable[[str], None] = logs.log_line) -> Dict[str, float]:
  """Runs what is not done; returns {stage name: seconds} of the stages run now."""
  os.makedirs(out, exist_ok=True)
  times_path = os.path.join(out, 'stage_times.jsonl')
  times = _load_times(times_path)
  todo = [st for st in stages if not st.is_done()]
  log(f'ablation: {len(stages) - len(todo)} of {len(stages)} stages done already, {len(todo)} to run')
  ran, t_start = {}, time.perf_counter()
  for i, st in enumerate(todo):
    mean = lambda k: sum(times[k]) / len(times[k]) if times.get(k) else None
    known = [mean(x.kind) for x in todo[i:]]
    eta = '' if any(v is None for v in known) else f', ETA {logs.format_seconds(sum(known))}'
    log(f'[{i + 1}/{len(todo)}] {st.name} -> {st.workdir} '
        f'(elapsed {logs.format_seconds(time.perf_counter() - t_start)}{eta})')
    t0 = time.perf_counter()
    _run_stage(st, in_process)
    if not st.is_done():
      raise RuntimeError(f'ablation stage {st.name!r} finished without writing {st.done}')
    dt = time.perf_counter() - t0
    ran[st.name] = dt
    times.setdefault(st.kind, []).append(dt)
    with open(times_path, 'a') as f:
      f.write(json.dumps({'stage': st.name, 'kind': st.kind, 'seconds': round(dt, 1)}) + '\n')
  log(f'ablation: all {len(stages)} stages done ({logs.format_seconds(time.perf_counter() - t_start)} this run)')
  return ran
