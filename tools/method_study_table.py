"""Prints the table of `tools/method_study.sh`'s runs (every */eval/metrics.json under the study dir).

  python tools/method_study_table.py [runs/study13]

Pose columns are the independent judge's; the last column is the guiding estimator's reading of the same
images (runs/study13/guide_judged/<run>/metrics.json, when the study wrote one).
"""

import glob
import json
import os
import sys


def _judge(m, which):
  return m.get('pose', {}).get('judges', {}).get('hrnet', {}).get(which, {})


def _row(name, m, which='generated', guide=None):
  judge = _judge(m, which)
  cells = [m.get(k, {}).get(which) for k in ('ssim', 'lpips', 'fid')]
  cells += [judge.get(k) for k in ('pck@0.05', 'pck@0.1', 'pck@0.2', 'mean_error_px')]
  # The same images read by the estimator that guided them (guide_judged/<run>): what guidance optimised.
  cells.append(_judge(guide, which).get('pck@0.1') if guide else None)
  fmt = lambda v: '-' if v is None else (f'{v:.1f}' if abs(v) >= 10 else f'{v:.4f}' if abs(v) < 1 else f'{v:.2f}')
  return f'| {name} | ' + ' | '.join(fmt(v) for v in cells) + ' |'


def main(root='runs/study13'):
  paths = sorted(glob.glob(os.path.join(root, '**', 'eval', 'metrics.json'), recursive=True))
  if not paths:
    sys.exit(f'no */eval/metrics.json under {root}')
  print('| run | SSIM | LPIPS | FID (32) | PCK@0.05 | PCK@0.1 | PCK@0.2 | kpt error px | PCK@0.1 by the guide |')
  print('|---|---|---|---|---|---|---|---|---|')
  first = first_guide = None
  for path in paths:
    with open(path) as f:
      m = json.load(f)
    name = os.path.relpath(os.path.dirname(os.path.dirname(path)), root)
    guide_path = os.path.join(root, 'guide_judged', name, 'metrics.json')
    guide = json.load(open(guide_path)) if os.path.exists(guide_path) else None
    first, first_guide = first or m, first_guide or guide
    print(_row(name, m, guide=guide))
  print(_row('copy source', first, 'copy_source_baseline', guide=first_guide))
  judge = os.path.join(root, 'judge', 'pose', 'pose_eval.json')
  if os.path.exists(judge):  # the judge's own accuracy on real held-out images: the ceiling of the PCK columns
    with open(judge) as f:
      h = json.load(f)['heldout']
    print(f"\njudge on {h['images']} real held-out images: PCK@0.05 {h['pck@0.05']:.4f}, PCK@0.1 {h['pck@0.1']:.4f}, "
          f"error {h['mean_error_px']:.2f} px")


if __name__ == '__main__':
  main(*sys.argv[1:])
