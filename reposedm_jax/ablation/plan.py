"""The ablation's stages: what runs, with which config, into which directory, and how it is known to be done.

Protocol (issue 14; WORKSPACE.md "Ablation"): one synthetic benchmark (`--difficulty hard` by default); a
guiding HigherHRNet (seed 0) and an independent judge (seed 1) trained on its keypoints; per training seed,
B1 trained from scratch for `base_steps`, then the three rows each trained `ft_steps` more *diffusion* steps
from that B1 with the same seed and data order (`--config.init_from`: b2 and full start at B1's function): b1
(the control), b2 (+RPA, `rpa.pretrain_steps` RPA-only steps first) and full (b2 + PIF training + guided
sampling, the guide of seed 0); every row sampled on the same `pairs` test pairs with each sampling seed and
evaluated with SSIM, LPIPS, FID (all generated images) and the judge's pose PCK.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Tuple

MODELS = ('b1', 'b2', 'full')


@dataclasses.dataclass(frozen=True)
class Settings:
  out: str = 'runs/ablation'
  # 1000 identities, 3 % held out (30 identities, 150 test images, 600 test pairs): with the earlier 150
  # (120 for training) the pose judge stopped at held-out PCK@0.1 0.73; with 970 it reaches 0.86 (WORKSPACE.md).
  identities: int = 1000
  views: int = 5
  height: int = 64
  width: int = 44
  difficulty: str = 'hard'
  test_fraction: float = 0.03
  data_seed: int = 0
  base_steps: int = 1000
  ft_steps: int = 400
  pretrain_steps: int = 100
  pose_steps: int = 2000  # 5 m 48 s on the 2-core VM; PCK@0.1 0.65 at 600, 0.81 at 1500, 0.86 at 2000 (WORKSPACE.md)
  pairs: int = 200
  sample_steps: int = 25
  train_seeds: Tuple[int, ...] = (0, 1)  # 1.53 h for both on the 2-core VM (WORKSPACE.md)
  sample_seeds: Tuple[int, ...] = (1, 2, 3)
  models: Tuple[str, ...] = MODELS
  # What every row's network predicts. 'eps' (the paper's) for all three rows: B2 / RePoseDM start from B1's
  # weights, and configs/demo.py's 'v_aligned' (its full variant) has no B1 form. docs/ablation/ used 'eps'.
  prediction: str = 'eps'
  # RPA's recurrent updates N for the B2 / RePoseDM rows: the paper's 5, which docs/ablation/ used
  # (configs/demo.py's own default is 2, for `make demo`'s time budget).
  rpa_iterations: int = 5
  config_arg: str = ''  # extra args of configs/demo.py (tests: 'runlocal=True')
  overrides: Tuple[Tuple[str, Any], ...] = ()  # applied to every stage's config (tests: tiny shapes)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  kind: str  # data | pose | train | sample | eval
  workdir: str
  config_arg: str  # after configs/demo.py:
  overrides: Dict[str, Any]
  done: str  # the file whose existence marks the stage done

  def is_done(self) -> bool:
    if not os.path.exists(self.done):
      return False
    if self.kind == 'data':
      _check_data(self)
      return True
    if self.kind != 'train':
      return True
    with open(self.done) as f:  # a preempted training leaves its summary: done only at num_steps
      summary = json.load(f)
    return summary.get('step', -1) >= self.overrides['train.num_steps'] and not summary.get('preempted')


def _check_data(stage: Stage) -> None:
  """A data dir made with other generator settings is an error, not a silent mix of two benchmarks."""
  with open(stage.done) as f:
    made = json.load(f).get('args', {})
  wrong = {k: (made.get(k), v) for k, v in stage.overrides.items() if made.get(k) != v}
  if wrong:
    diff = ', '.join(f'{k}={a!r} (settings: {b!r})' for k, (a, b) in sorted(wrong.items()))
    raise ValueError(f'{stage.done}: the benchmark there was generated with {diff}; use another --out or '
                     f'delete {stage.workdir}')


def _arg(s: Settings, variant: str) -> str:
  return ','.join(a for a in (f'variant={variant}', s.config_arg) if a)


def data_dir(s: Settings) -> str:
  return os.path.join(s.out, 'data')


def run_dir(s: Settings, seed: int, model: str) -> str:
  return os.path.join(s.out, f'train_seed{seed}', model)


def sample_dir(s: Settings, seed: int, model: str, sample_seed: int) -> str:
  return os.path.join(s.out, f'train_seed{seed}', f'{model}_sample{sample_seed}')


def stages(s: Settings) -> List[Stage]:
  """Every stage in order; a stage only reads what stages before it write."""
  unknown = set(s.models) - set(MODELS)
  if unknown or not s.models:
    raise ValueError(f'models must be a non-empty subset of {MODELS}, got {s.models}')
  common = dict(s.overrides)
  data = {'data.root': data_dir(s), 'data.height': s.height, 'data.width': s.width,
          'diffusion.prediction': s.prediction, 'rpa.iterations': s.rpa_iterations, **common}
  gen = {'seed': s.data_seed, 'identities': s.identities, 'views_per_identity': s.views, 'height': s.height,
         'width': s.width, 'test_fraction': s.test_fraction, 'difficulty': s.difficulty}
  out = [Stage(f'data ({s.difficulty} synthetic benchmark)', 'data', data_dir(s), '', gen,
               os.path.join(data_dir(s), 'synthetic_meta.json'))]
  guide, judge = os.path.join(s.out, 'guide'), os.path.join(s.out, 'judge')
  for name, wd, seed in (('guide', guide, 0), ('judge', judge, 1)):
    out.append(Stage(f'pose estimator ({name}, seed {seed})', 'pose', wd, _arg(s, 'b1'),
                     {**data, 'mode': 'train_pose', 'seed': seed, 'pose.num_steps': s.pose_steps},
                     os.path.join(wd, 'pose', 'pose_eval.json')))
  guide_pose = os.path.join(guide, 'pose')
  evaluate = {'eval.hrnet_dir': os.path.join(judge, 'pose'), 'eval.pose_judges': ('hrnet',),
              'eval.fid_reference': 'test_targets', **{k: v for k, v in common.items() if k.startswith('eval.')}}
  sampling = {'data.max_test_pairs': s.pairs, 'sample.num_steps': s.sample_steps, 'sample.num': s.pairs,
              'sample.rpa_strips': False}
  for ts in s.train_seeds:
    base = run_dir(s, ts, 'b1_base')
    train = {**data, 'mode': 'train', 'seed': ts, 'train.sample_every': 10**9}
    out.append(Stage(f'B1 from scratch (seed {ts})', 'train', base, _arg(s, 'b1'),
                     {**train, 'train.num_steps': s.base_steps}, os.path.join(base, 'train_summary.json')))
    for model in s.models:
      wd = run_dir(s, ts, model)
      extra = {'init_from': base, 'rpa.pretrain_steps': 0 if model == 'b1' else s.pretrain_steps}
      extra['train.num_steps'] = s.ft_steps + extra['rpa.pretrain_steps']
      if model == 'full':
        extra['pose.checkpoint'] = guide_pose
      out.append(Stage(f'{model} (seed {ts}, from B1)', 'train', wd, _arg(s, model), {**train, **extra},
                       os.path.join(wd, 'train_summary.json')))
      for ss in s.sample_seeds:
        sd = sample_dir(s, ts, model, ss)
        cfg = {**data, **sampling, 'init_from': wd, 'sample.seed': ss, 'rpa.pretrain_steps': extra['rpa.pretrain_steps']}
        if model == 'full':
          cfg['pose.checkpoint'] = guide_pose
        out.append(Stage(f'sample {model} (seed {ts}, sampling seed {ss})', 'sample', sd, _arg(s, model),
                         {**cfg, 'mode': 'sample'}, os.path.join(sd, 'samples', 'manifest_p0.jsonl')))
        out.append(Stage(f'evaluate {model} (seed {ts}, sampling seed {ss})', 'eval', sd, _arg(s, model),
                         {**cfg, **evaluate, 'mode': 'eval'}, os.path.join(sd, 'eval', 'metrics.json')))
  return out
