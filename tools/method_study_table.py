"""Prints the table of `tools/method_study.sh`'s runs (every */eval/metrics.json under the study dir).

  python tools/method_study_table.py [runs/study13]
"""

import glob
import json
import os
import sys


def _row(name, m, which='generated'):
  judge = m.get('pose', {}).get('judges', {}).get('hrnet', {}).get(which, {})
  cells = [m.get(k, {}).get(which) for k in ('ssim', 'lpips', 'fid')]
  cells += [judge.get(k) for k in ('pck@0.05', 'pck@0.1', 'pck@0.2', 'mean_error_px')]
  fmt = lambda v: '-' if v is None else (f'{v:.1f}' if abs(v) >= 10 else f'{v:.4f}' if abs(v) < 1 else f'{v:.2f}')
  return f'| {name} | ' + ' | '.join(fmt(v) for v in cells) + ' |'


def main(root='runs/study13'):
  paths = sorted(glob.glob(os.path.join(root, '**', 'eval', 'metrics.json'), recursive=True))
  if not paths:
    sys.exit(f'no */eval/metrics.json under {root}')
  print('| run | SSIM | LPIPS | FID (32) | PCK@0.05 | PCK@0.1 | PCK@0.2 | kpt error px |')
  print('|---|---|---|---|---|---|---|---|')
  first = None
  for path in paths:
    with open(path) as f:
      m = json.load(f)
    first = first or m
    print(_row(os.path.relpath(os.path.dirname(os.path.dirname(path)), root), m))
  print(_row('copy source', first, 'copy_source_baseline'))
  judge = os.path.join(root, 'judge', 'pose', 'pose_eval.json')
  if os.path.exists(judge):  # the judge's own accuracy on real held-out images: the ceiling of the PCK columns
    with open(judge) as f:
      h = json.load(f)['heldout']
    print(f"\njudge on {h['images']} real held-out images: PCK@0.05 {h['pck@0.05']:.4f}, PCK@0.1 {h['pck@0.1']:.4f}, "
          f"error {h['mean_error_px']:.2f} px")


if __name__ == '__main__':
  main(*sys.argv[1:])
