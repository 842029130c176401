"""The ablation pipeline: its plan (equal steps, independent judge), resumability, report, and a tiny real run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from reposedm_jax.ablation import __main__ as cli
from reposedm_jax.ablation import plan, report, runner


def test_every_row_starts_from_the_same_b1_and_gets_the_same_diffusion_steps():
  s = plan.Settings(out='/x', train_seeds=(0, 1), sample_seeds=(1, 2, 3))
  stages = plan.stages(s)
  trains = {st.workdir: st for st in stages if st.kind == 'train'}
  for ts in (0, 1):
    base = plan.run_dir(s, ts, 'b1_base')
    assert trains[base].overrides['train.num_steps'] == s.base_steps and 'init_from' not in trains[base].overrides
    for model in plan.MODELS:
      o = trains[plan.run_dir(s, ts, model)].overrides
      assert o['init_from'] == base and o['seed'] == ts
      assert o['train.num_steps'] - o['rpa.pretrain_steps'] == s.ft_steps  # diffusion steps, equal for all rows
      assert o['rpa.pretrain_steps'] == (0 if model == 'b1' else s.pretrain_steps)
      assert ('pose.checkpoint' in o) == (model == 'full')
  # The committed table's settings hold regardless of what configs/demo.py defaults to (make demo's budget).
  assert all(st.overrides['diffusion.prediction'] == 'eps' and st.overrides['rpa.iterations'] == 5
             for st in stages if st.kind in ('train', 'sample', 'eval'))
  # ... while the tiny setting's own overrides still win, and the CLI sets the pin.
  assert all(st.overrides['rpa.iterations'] == 1 for st in plan.stages(cli.tiny_settings('/x')) if st.kind != 'data')
  assert cli.build_parser().parse_args(['--rpa-iterations', '3']).rpa_iterations == 3
  pose = [st for st in stages if st.kind == 'pose']
  assert [st.overrides['seed'] for st in pose] == [0, 1]
  evals = [st for st in stages if st.kind == 'eval']
  assert len(evals) == 2 * 3 * 3 and len({st.workdir for st in evals}) == 18
  judge = os.path.join(pose[1].workdir, 'pose')
  assert all(st.overrides['eval.hrnet_dir'] == judge != st.overrides.get('pose.checkpoint') for st in evals)
  # Each stage reads only what an earlier one writes.
  order = [st.workdir for st in stages]
  for i, st in enumerate(stages):
    src = st.overrides.get('init_from')
    if src:
      assert src in order[:i]
  with pytest.raises(ValueError, match='models must be'):
    plan.stages(plan.Settings(models=('b3',)))


def test_a_stage_counts_as_done_only_when_its_output_is_complete(tmp_path):
  st = plan.Stage('t', 'train', str(tmp_path), '', {'train.num_steps': 10}, str(tmp_path / 'train_summary.json'))
  assert not st.is_done()
  for summary, done in (({'step': 6, 'preempted': True}, False), ({'step': 10, 'preempted': True}, False),
                        ({'step': 10, 'preempted': False}, True)):
    (tmp_path / 'train_summary.json').write_text(json.dumps(summary))
    assert st.is_done() == done


def test_a_benchmark_made_with_other_settings_is_refused_not_reused(tmp_path):
  s = plan.Settings(out=str(tmp_path))
  data = plan.stages(s)[0]
  assert data.kind == 'data' and not data.is_done()
  os.makedirs(data.workdir)
  args = {'seed': 0, 'identities': s.identities, 'views_per_identity': 5, 'height': 64, 'width': 44,
          'test_fraction': s.test_fraction, 'difficulty': 'hard', 'format': 'pidm'}
  with open(data.done, 'w') as f:
    json.dump({'args': args}, f)
  assert data.is_done()
  with open(data.done, 'w') as f:  # the earlier default benchmark, 150 identities
    json.dump({'args': {**args, 'identities': 150, 'test_fraction': 0.2}}, f)
  with pytest.raises(ValueError, match=r"identities=150 \(settings: 1000\).*test_fraction=0.2"):
    data.is_done()


def test_command_lines_are_what_a_person_would_type():
  st = plan.Stage('e', 'eval', 'runs/a/b', 'variant=full', {'mode': 'eval', 'eval.pose_judges': ('hrnet',),
                                                             'seed': 1, 'sample.rpa_strips': False}, 'x')
  cmd = runner.command(st)
  assert cmd[1:] == ['-m', 'reposedm_jax.main', '--config=configs/demo.py:variant=full', '--workdir=runs/a/b',
                     '--config.mode=eval', "--config.eval.pose_judges=('hrnet',)", '--config.seed=1',
                     '--config.sample.rpa_strips=False']


def _metrics(ssim, lpips, fid, pck, err):
  judge = lambda p, e: {'pck@0.1': p, 'mean_error_px': e}
  return {'ssim': {'generated': ssim, 'copy_source_baseline': 0.2}, 'lpips': {'generated': lpips,
          'copy_source_baseline': 0.25}, 'fid': {'generated': fid, 'copy_source_baseline': 20.0},
          'pose': {'judges': {'hrnet': {'generated': judge(pck, err), 'copy_source_baseline': judge(0.3, 9.0)}}}}


def test_report_gives_mean_and_sample_sd_over_seeds(tmp_path):
  s = plan.Settings(out=str(tmp_path / 'run'), models=('b1', 'full'), sample_seeds=(1, 2, 3))
  rng = np.random.default_rng(0)
  vals = {m: rng.uniform(0.1, 0.9, (3, 5)) for m in s.models}
  for m in s.models:
    for k, ss in enumerate(s.sample_seeds):
      d = os.path.join(plan.sample_dir(s, 0, m, ss), 'eval')
      os.makedirs(d)
      with open(os.path.join(d, 'metrics.json'), 'w') as f:
        json.dump(_metrics(*vals[m][k]), f)
  results = report.write(s, str(tmp_path / 'docs'))
  np.testing.assert_allclose(results['full']['lpips'], vals['full'][:, 1])
  md = open(tmp_path / 'docs' / 'table.md').read()
  mean, sd = vals['b1'][:, 0].mean(), vals['b1'][:, 0].std(ddof=1)
  assert f'| B1 (PIDM) | 3 | {mean:.4f} ± {sd:.4f} |' in md
  assert '| copy source | 1 | 0.2000 |' in md
  assert Image.open(tmp_path / 'docs' / 'chart.png').size == (980, 380)


# Measured 856 s on the 2-core VM with the suite's other worker busy (2026-12-03), so the suite's 900-s
# default is no margin; the limit is still a hang guard, far below CI's 90 minutes.
@pytest.mark.timeout(1800)
def test_tiny_ablation_runs_end_to_end_and_resumes(tmp_path, fast_compile):
  out, docs = str(tmp_path / 'run'), str(tmp_path / 'docs')
  results = cli.main(['--tiny', '--in-process', '--out', out, '--docs', docs])
  assert set(results) == {'b1', 'full', 'copy'}
  for model in ('b1', 'full'):
    assert len(results[model]['ssim']) == 1 and all(np.isfinite(results[model]['pck']))
    assert os.path.exists(os.path.join(docs, f'{model}_grid.png'))
  assert os.path.exists(os.path.join(docs, 'chart.png'))
  lines = open(os.path.join(out, 'stage_times.jsonl')).read().splitlines()
  ran = runner.run(plan.stages(cli.tiny_settings(out)), out, in_process=True)
  assert ran == {} and open(os.path.join(out, 'stage_times.jsonl')).read().splitlines() == lines
