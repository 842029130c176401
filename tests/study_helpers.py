"""Shared by tests/test_study*.py: a small synthetic study, and scripted participants whose scores are known."""

import os

import numpy as np
from PIL import Image, ImageFilter

from reposedm_jax.data import deepfashion, names, synthetic
from reposedm_jax.study import build, inputs, plan

METHODS = ('ours', 'PIDM', 'CFLD')
# Small enough to build in about a second: block 1 has 6 real + 3 x 3 generated, block 2 has 6 sets.
DESIGN = plan.Design(real=6, generated=3, sets=6, catch=2, practice=2, rg_methods=METHODS, seed=0)


def _fake_method(name: str, img: Image.Image) -> Image.Image:
  """Stand-ins for three methods: each a different, visible degradation of the real target."""
  if name == 'ours':
    return img.filter(ImageFilter.GaussianBlur(0.8))
  if name == 'PIDM':
    return img.filter(ImageFilter.GaussianBlur(2.0))
  arr = np.asarray(img).astype(np.int16)
  return Image.fromarray(np.clip(arr[..., ::-1] * 0.9 + 10, 0, 255).astype(np.uint8))


def make_folders(root: str, *, identities: int = 24, views: int = 4, height: int = 64, width: int = 44) -> dict:
  """A synthetic DeepFashion-layout dataset and one folder of `<src>_2_<tgt>_vis.png` images per method."""
  data = os.path.join(root, 'data')
  synthetic.generate(data, seed=0, identities=identities, views_per_identity=views, height=height, width=width,
                     test_fraction=1.0)
  folders = {}
  pairs = deepfashion.read_pairs_txt(os.path.join(data, 'test_pairs.txt'))
  for m in METHODS:
    folders[m] = os.path.join(root, m)
    os.makedirs(folders[m], exist_ok=True)
    for p in pairs:
      with Image.open(os.path.join(data, p.target[:-4] + '.png')) as im:
        out = os.path.join(folders[m], names.output_name(p.sources[0], p.target))
        _fake_method(m, im.convert('RGB')).save(out)
  return {'data': data, 'pairs': os.path.join(data, 'test_pairs.txt'), 'generated': folders}


def study_inputs(folders: dict, **kw) -> inputs.StudyInputs:
  kw = {'real': folders['data'], 'generated': dict(folders['generated']), 'pairs': folders['pairs'],
        'keypoints': folders['data'], **kw}
  return inputs.StudyInputs(**kw)


def build_study(folders: dict, out: str, design: plan.Design = DESIGN, inputs_kw=(), **kw) -> dict:
  """build.build on the folders; `inputs_kw` overrides StudyInputs fields, `kw` goes to build.build."""
  return build.build(study_inputs(folders, **dict(inputs_kw)), design, out, **kw)


def scored(plan_dict: dict, block: str, **match) -> list[dict]:
  """The block's scored (non-practice, non-catch) trials that match, sorted by id."""
  return sorted((t for t in plan_dict['trials'] if t['block'] == block and not t['practice'] and not t['catch']
                 and all(t.get(k) == v for k, v in match.items())), key=lambda t: t['id'])


def answers_for(plan_dict: dict, *, r2g: int, g2r: dict, jab: dict, catch_fail: int = 0) -> dict:
  """trial id -> the answer of a participant with known counts.

  Args:
    r2g: how many of the real images (the first by trial id) are judged generated.
    g2r: method -> how many of its images (the first by trial id) are judged real.
    jab: method -> how many comparison sets it wins (sets taken in id order, methods in the order given).
    catch_fail: how many attention checks (the last by id) are answered wrongly.
  """
  out = {}
  for t in plan_dict['trials']:
    if t['practice']:
      out[t['id']] = 'real' if t['block'] == 'rg' else t['candidates'][0]['image']
  for i, t in enumerate(scored(plan_dict, 'rg', truth='real')):
    out[t['id']] = 'generated' if i < r2g else 'real'
  for m in plan_dict['design']['rg_methods']:
    for i, t in enumerate(scored(plan_dict, 'rg', truth='generated', method=m)):
      out[t['id']] = 'real' if i < g2r.get(m, 0) else 'generated'
  winners = [m for m, n in jab.items() for _ in range(n)]
  sets = scored(plan_dict, 'cmp')
  assert len(winners) == len(sets), 'jab counts must add up to the number of sets'
  for t, m in zip(sets, winners):
    out[t['id']] = next(c['image'] for c in t['candidates'] if c['method'] == m)
  checks = sorted((t for t in plan_dict['trials'] if t['catch']), key=lambda t: t['id'])
  for i, t in enumerate(checks):
    wrong = i >= len(checks) - catch_fail
    if t['block'] == 'rg':
      out[t['id']] = 'real' if wrong else 'generated'
    else:
      out[t['id']] = next(c['image'] for c in t['candidates'] if (c['image'] != t['correct']) == wrong)
  return out


def response(plan_dict: dict, participant: str, answers: dict, drop: int = 0) -> dict:
  """A response file as the page writes it, answers in the order of `answers` (the last `drop` left out)."""
  trials = {t['id']: t for t in plan_dict['trials']}
  rows = []
  for tid, ans in answers.items():
    t = trials[tid]
    options = ['real', 'generated'] if t['block'] == 'rg' else [c['image'] for c in t['candidates']]
    rows.append({'trial': tid, 'block': t['block'], 'practice': t['practice'], 'options': options,
                 'position': options.index(ans), 'answer': ans, 'rt_ms': 1000 + 10 * len(rows), 'hidden': False})
  rows = rows[:len(rows) - drop]
  return {'format': 'reposedm-study-response', 'version': 1, 'study_id': plan_dict['study_id'],
          'participant': participant, 'started_at': '', 'finished_at': '', 'user_agent': 'test',
          'rg_options': ['real', 'generated'], 'answers': rows}
