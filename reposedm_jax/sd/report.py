"""`make reposesd-tiny`'s report: HumanSD's loss vs RePoseSD's (eq. 17 + guided sampling) with HumanSD's metrics,
beside the paper's Table 3, and a grid (pose | HumanSD | RePoseSD | real).

  python -m reposedm_jax.sd.report --run runs/reposesd_tiny --out docs/reposesd
"""

import json
import os

import numpy as np
from absl import app, flags
from PIL import Image

from reposedm_jax import visualize
from reposedm_jax.sd import data

ROWS = (('HumanSD loss, plain sampling', 'humansd', 'plain'), ('RePoseSD: eq. 17 + guided sampling', 'reposesd', 'guided'))
PAPER = {'HumanSD': (26.28, 31.85, 24.95, 59.11, 1.61), 'RePoseSD': (24.83, 33.79, 26.85, 61.25, 1.56)}


def _load(path):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _fmt(m, key, pct=False):
  v = None if m is None else m.get(key)
  if v is None:
    return 'n/a'
  return f'{100 * v:.1f}' if pct else f'{v:.2f}'


def table(run: str) -> str:
  lines = ['| run | FID | AP | AP(m) | CAP | PCE | people (GT / detected) |', '|---|---|---|---|---|---|---|']
  for name, sub, tag in ROWS:
    m = _load(os.path.join(run, sub, 'sd_eval', f'{tag}.json'))
    people = 'n/a' if m is None else f'{m["gt_people"]} / {m["detected_people"]}'
    lines.append(f'| {name} | {_fmt(m, "FID")} | {_fmt(m, "AP", True)} | {_fmt(m, "AP_m", True)} | '
                 f'{_fmt(m, "CAP", True)} | {_fmt(m, "PCE")} | {people} |')
  m = _load(os.path.join(run, 'reposesd', 'sd_eval', 'guided.json'))
  real = None if m is None else m.get('real_images')
  lines.append(f'| real validation images (the detector\'s ceiling) | - | {_fmt(real, "AP", True)} | '
               f'{_fmt(real, "AP_m", True)} | {_fmt(real, "CAP", True)} | {_fmt(real, "PCE")} | '
               + ('n/a' if real is None else f'{real["gt_people"]} / {real["detected_people"]}') + ' |')
  for name, vals in PAPER.items():
    lines.append(f'| paper Table 3: {name} (SD 2.1, Human-Art val) | ' + ' | '.join(str(v) for v in vals) + ' | - |')
  vae = _load(os.path.join(run, 'vae', 'vae_eval.json'))
  guide = _load(os.path.join(run, 'guide', 'pose_eval.json'))
  notes = ['', 'AP, AP(m), CAP in %, on the whole validation set; the detector is the seed-1 HigherHRNet (`judge/`), '
           'independent of the seed-0 guide (`guide/`'
           + ('' if guide is None else f', AP {100 * guide["AP"]:.1f} % on the real images') + ').']
  if vae is not None:
    notes.append(f'The tiny VAE reconstructs the validation images at {vae["psnr"]:.1f} dB PSNR.')
  return '\n'.join(lines + notes) + '\n'


def grid(run: str, n: int = 6) -> np.ndarray:
  cfg = _load(os.path.join(run, 'reposesd', 'config.json')) or _load(os.path.join(run, 'humansd', 'config.json'))
  s = cfg['sd']
  records = data.read_mapping(s['eval_root'], s['eval_mapping'])[:n]
  _, b = next(data.eval_batches(records, n, size=s['image_size'], max_persons=s['max_persons'],
                                threshold=s['keypoint_threshold']))
  cols = [visualize.to_uint8(b['pose_image'])]
  for _, sub, tag in ROWS:
    paths = [os.path.join(run, sub, 'sd_samples', tag, r.key.replace('/', '__') + '.png') for r in records]
    cols.append(np.stack([np.asarray(Image.open(p).convert('RGB')) if os.path.isfile(p)
                          else np.zeros_like(cols[0][0]) for p in paths]))
  cols.append(visualize.to_uint8(b['image']))
  f = visualize.upscale_factor(s['image_size'])
  return visualize.tile_columns([visualize.upscale(c, f) for c in cols],
                                titles=['pose', 'HumanSD loss', 'RePoseSD', 'real'])


def _main(argv):
  del argv
  f = flags.FLAGS
  os.makedirs(f.out, exist_ok=True)
  text = table(f.run)
  with open(os.path.join(f.out, 'table.md'), 'w') as fh:
    fh.write(text)
  visualize.save_png(os.path.join(f.out, 'grid.png'), grid(f.run))
  print(text)


if __name__ == '__main__':
  flags.DEFINE_string('run', 'runs/reposesd_tiny', 'the make reposesd-tiny run directory')
  flags.DEFINE_string('out', 'docs/reposesd', 'where table.md and grid.png go')
  app.run(_main)
