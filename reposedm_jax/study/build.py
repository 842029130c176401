"""`study build`: pairs and image folders -> STUDY/trials.json (private plan) + STUDY/page/ (for participants).

  STUDY/trials.json      the plan with its answer key: which image is real, which method made which, which
                         trials are attention checks. Keep it; `study score` reads it. Do not share it.
  STUDY/page/index.html  the self-contained page (HTML, CSS, JS; no network, works from file://)
  STUDY/page/img/*.png   every image, re-encoded at one size and named by a hash of its pixels
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os

from reposedm_jax.study import inputs as inputs_lib
from reposedm_jax.study import page, plan, stimuli

README = """This folder is one perception study (reposedm_jax.study), id {study_id}.

page/         share this folder (or host it anywhere static); participants open page/index.html.
trials.json   the answer key. Keep it private: it says which images are real and which method made which.

Score the downloaded answer files with:
  python -m reposedm_jax.study score {out} responses/*.json
"""


def study_id(plan_dict: dict) -> str:
  """A hash of everything that defines the trials, so answers are only ever scored against their own study."""
  key = {k: plan_dict[k] for k in ('design', 'size', 'page', 'trials')}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _rg_trial(slot: dict, pair: inputs_lib.PairImages, writer: stimuli.StimulusWriter, seed: int) -> dict:
  if slot['show'] == 'generated':
    path = pair.generated[slot['method']]
    image = writer.add(writer.load(path), role='generated', method=slot['method'], file=path)
  elif slot['show'] == 'real':
    image = writer.add(writer.load(pair.target_path), role='real', method=None, file=pair.target_path)
  else:
    image = writer.add(stimuli.scramble(writer.load(pair.target_path), seed), role='scrambled', method=None,
                       file=pair.target_path)
  return {'image': image, 'truth': 'real' if slot['show'] == 'real' else 'generated', 'method': slot['method']}


def _cmp_trial(slot: dict, pair: inputs_lib.PairImages, writer: stimuli.StimulusWriter, seed: int,
               kpts_fn) -> dict:
  out = {'source_image': writer.add(writer.load(pair.source_path), role='source', method=None,
                                    file=pair.source_path)}
  if kpts_fn is not None:
    out['pose_image'] = writer.add(stimuli.render_pose(kpts_fn(pair.target, writer.hw), writer.hw), role='pose',
                                   method=None, file=pair.target)
  else:
    out['pose_image'] = writer.add(writer.load(pair.target_path), role='pose-target', method=None,
                                   file=pair.target_path)
  cands = []
  for method, kind in slot['candidates']:
    path = pair.target_path if kind == 'real' else pair.generated[method]
    img = writer.load(path)
    if kind == 'scrambled':
      img = stimuli.scramble(img, seed + len(cands))
    cands.append({'image': writer.add(img, role=kind, method=method, file=path), 'method': method, 'kind': kind})
  out['candidates'] = cands
  if slot['catch']:
    out['correct'] = next(c['image'] for c in cands if c['kind'] == 'real')
  return out


def _prepare_out(out_dir: str, overwrite: bool) -> str:
  plan_path = os.path.join(out_dir, 'trials.json')
  if os.path.exists(plan_path) and not overwrite:
    raise FileExistsError(f'{plan_path}: a study is already there (answers to it would no longer score); '
                          'choose another --out or pass --overwrite')
  img_dir = os.path.join(out_dir, 'page', 'img')
  for old in glob.glob(os.path.join(img_dir, '*.png')):
    os.remove(old)  # Images of an earlier build would otherwise sit next to this one's.
  os.makedirs(img_dir, exist_ok=True)
  return img_dir


def build(inputs: inputs_lib.StudyInputs, design: plan.Design, out_dir: str, *, size=None,
          title: str = 'Person image study', display_ms: int = 0, gap_ms: int = 300,
          overwrite: bool = False) -> dict:
  """Builds a study and returns its private plan (also written to out_dir/trials.json).

  Args:
    inputs: the image folders and pairs file.
    design: trial counts and seed.
    out_dir: the study folder.
    size: (H, W) every image is shown at; default the size of the first method's first generated image.
    title: the page's title.
    display_ms: images disappear after this many ms (the answer stays possible); 0 = no limit.
    gap_ms: blank screen between trials.
    overwrite: replace a study already in out_dir.
  """
  methods = list(inputs.generated)
  kpts_fn = inputs_lib.keypoint_reader(inputs)
  if design.sets and kpts_fn is None and not inputs.pose_from_target:
    raise ValueError('the comparison block shows the target pose: pass --keypoints (an annotation CSV or a '
                     'PIDM root with pose/) or --pose-from-target (shows the real target image instead), '
                     'or --sets 0')
  pairs = inputs_lib.resolve_pairs(inputs, kpts_fn)
  slots = plan.make_plan([(p.source, p.target) for p in pairs], methods, design, pairs_file=inputs.pairs)
  if size is None:
    size = stimuli.read_rgb(pairs[slots[0]['pair']].generated[methods[0]]).shape[:2]
  writer = stimuli.StimulusWriter(_prepare_out(out_dir, overwrite), tuple(int(v) for v in size))
  trials = []
  for i, slot in enumerate(slots):
    pair = pairs[slot['pair']]
    seed = design.seed * 100_003 + i * 17  # A distinct scramble per trial, fixed by the plan's seed.
    body = _rg_trial(slot, pair, writer, seed) if slot['block'] == 'rg' else \
        _cmp_trial(slot, pair, writer, seed, kpts_fn)
    trials.append({'id': slot['id'], 'block': slot['block'], 'practice': slot['practice'],
                   'catch': slot['catch'], **body, 'source': pair.source, 'target': pair.target})
  result = {
      'format': plan.PLAN_FORMAT, 'version': 1, 'study_id': '',
      'design': {**dataclasses.asdict(design), 'rg_methods': plan.rg_methods(design, methods)},
      'methods': methods, 'size': list(writer.hw),
      'page': {'title': title, 'display_ms': int(display_ms), 'gap_ms': int(gap_ms)},
      'pose': 'keypoints' if kpts_fn is not None else 'target image',
      'inputs': {'real': inputs.real, 'source': inputs.source or inputs.real, 'generated': inputs.generated,
                 'pairs': inputs.pairs, 'keypoints': inputs.keypoints},
      'trials': trials, 'images': writer.images}
  result['study_id'] = study_id(result)
  with open(os.path.join(out_dir, 'trials.json'), 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  page.write(result, os.path.join(out_dir, 'page'))
  with open(os.path.join(out_dir, 'README.txt'), 'w') as f:
    f.write(README.format(study_id=result['study_id'], out=out_dir))
  logging.info('Study %s: %d trials, %d images in %s (share %s/page/, keep %s/trials.json private)',
               result['study_id'], len(trials), len(writer.images), out_dir, out_dir, out_dir)
  return result
