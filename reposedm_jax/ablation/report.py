"""The ablation's report: mean ± sd over seeds per model, a Markdown table, a bar chart, sample grids.

Drawn with Pillow (a core dependency), like the study's chart.
"""

import json
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reposedm_jax.ablation import plan

# (key, label, lower is better, reads a metrics.json dict for `which` = generated | copy_source_baseline)
METRICS = (
    ('ssim', 'SSIM', False, lambda m, w: m.get('ssim', {}).get(w)),
    ('lpips', 'LPIPS', True, lambda m, w: m.get('lpips', {}).get(w)),
    ('fid', 'FID', True, lambda m, w: m.get('fid', {}).get(w)),
    ('pck', 'PCK@0.1', False, lambda m, w: m.get('pose', {}).get('judges', {}).get('hrnet', {}).get(w, {}).get('pck@0.1')),
    ('kpt_err', 'kpt error px', True,
     lambda m, w: m.get('pose', {}).get('judges', {}).get('hrnet', {}).get(w, {}).get('mean_error_px')),
)
LABELS = {'b1': 'B1 (PIDM)', 'b2': 'B2 (+RPA)', 'full': 'RePoseDM', 'copy': 'copy source'}
COLORS = {'b1': (110, 110, 110), 'b2': (47, 95, 208), 'full': (222, 120, 40), 'copy': (190, 190, 190)}


def collect(s: plan.Settings) -> Dict[str, Dict[str, List[float]]]:
  """{model: {metric: [value per (training seed, sampling seed) evaluated]}}, plus 'copy' (copy-source)."""
  out: Dict[str, Dict[str, List[float]]] = {}
  for ts in s.train_seeds:
    for model in s.models:
      for ss in s.sample_seeds:
        path = os.path.join(plan.sample_dir(s, ts, model, ss), 'eval', 'metrics.json')
        if not os.path.exists(path):
          continue
        with open(path) as f:
          m = json.load(f)
        for name, which in ((model, 'generated'), ('copy', 'copy_source_baseline')):
          if name == 'copy' and 'copy' in out and len(out['copy']['ssim']) >= 1:
            continue  # the same pairs every time: one value
          row = out.setdefault(name, {k: [] for k, *_ in METRICS})
          for key, _, _, read in METRICS:
            v = read(m, which)
            # Copy-source's FID is ~0 by construction (the copied sources are the reference set): not a baseline.
            if v is not None and not (name == 'copy' and key == 'fid'):
              row[key].append(float(v))
  return out


def _cell(values: List[float]) -> str:
  if not values:
    return '-'
  mean = float(np.mean(values))
  digits = 1 if abs(mean) >= 10 else 3 if abs(mean) >= 1 else 4
  if len(values) == 1:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}'


def table(results: Dict[str, Dict[str, List[float]]], s: plan.Settings) -> str:
  head = '| model | n | ' + ' | '.join(f'{label} {"↓" if low else "↑"}' for _, label, low, _ in METRICS) + ' |'
  lines = [head, '|' + '---|' * (len(METRICS) + 2)]
  for name in list(s.models) + ['copy']:
    if name in results:
      r = results[name]
      lines.append(f'| {LABELS[name]} | {len(r["ssim"])} | ' + ' | '.join(_cell(r[k]) for k, *_ in METRICS) + ' |')
  return '\n'.join(lines)


def chart(results: Dict[str, Dict[str, List[float]]], s: plan.Settings) -> Image.Image:
  """One panel per metric (SSIM, LPIPS, FID, PCK@0.1): a bar per model, the error bar one sd over seeds."""
  names = [n for n in list(s.models) + ['copy'] if n in results]
  panel_w, h, top, bottom = 240, 380, 60, 320
  img = Image.new('RGB', (panel_w * 4 + 20, h), 'white')
  d = ImageDraw.Draw(img)
  font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
  d.text((10, 8), f'Ablation: mean ± sd over {len(s.train_seeds)} training x {len(s.sample_seeds)} sampling seeds, '
                  f'{s.pairs} pairs ({s.difficulty} synthetic, {s.height}x{s.width})', font=font, fill=(20, 20, 20))
  for p, (key, label, low, _) in enumerate(METRICS[:4]):
    x0 = 20 + p * panel_w
    vals = {n: results[n][key] for n in names if results[n][key]}
    if not vals:
      continue
    vmax = max(float(np.mean(v)) + (float(np.std(v, ddof=1)) if len(v) > 1 else 0) for v in vals.values()) * 1.15
    vmax = vmax or 1.0
    d.text((x0 + 10, top - 24), f'{label} ({"lower" if low else "higher"} is better)', font=small, fill=(20, 20, 20))
    d.line((x0 + 10, bottom, x0 + panel_w - 20, bottom), fill=(80, 80, 80))
    bw = (panel_w - 40) / max(len(vals), 1)
    for i, (n, v) in enumerate(vals.items()):
      mean = float(np.mean(v))
      sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
      bx = x0 + 14 + i * bw
      # max(0): copy-source's FID against the very images it copies is 0 up to rounding (-1e-13).
      y = bottom - (bottom - top) * max(mean, 0.0) / vmax
      d.rectangle((bx + 4, y, bx + bw - 4, bottom), fill=COLORS[n])
      cx = bx + bw / 2
      if sd:
        y_lo, y_hi = (bottom - (bottom - top) * (mean + k * sd) / vmax for k in (-1, 1))
        d.line((cx, y_lo, cx, y_hi), fill=(20, 20, 20), width=2)
        for yy in (y_lo, y_hi):
          d.line((cx - 5, yy, cx + 5, yy), fill=(20, 20, 20), width=2)
      text = f'{mean:.3g}'
      d.text((cx - d.textlength(text, font=small) / 2, min(y, bottom - (bottom - top) * (mean + sd) / vmax) - 16),
             text, font=small, fill=(20, 20, 20))
  for i, n in enumerate(names):  # legend
    lx = 20 + i * 170
    d.rectangle((lx, h - 34, lx + 14, h - 20), fill=COLORS[n])
    d.text((lx + 20, h - 35), LABELS[n], font=font, fill=(20, 20, 20))
  return img


def write(s: plan.Settings, docs: str, wall_seconds: Optional[float] = None, machine: str = '') -> Dict:
  """Writes docs/table.md, chart.png, <model>_grid.png and results.json; returns the results."""
  results = collect(s)
  if not results:
    raise FileNotFoundError(f'no evaluated sample sets under {s.out}: run the ablation first')
  os.makedirs(docs, exist_ok=True)
  md = table(results, s)
  note = (f'\n\n{len(s.train_seeds)} training seed(s) x {len(s.sample_seeds)} sampling seed(s); {s.pairs} test pairs '
          f'of the {s.difficulty} synthetic benchmark ({s.identities} identities, {s.height}x{s.width}); B1 '
          f'{s.base_steps} steps from scratch, then each row {s.ft_steps} more diffusion steps from it '
          f'(b2 / full: + {s.pretrain_steps} RPA-only steps); DDPM {s.sample_steps} + CFG. sd = over all seeds.')
  if wall_seconds:
    note += f' Wall time of the stages: {wall_seconds / 3600:.2f} h{f" ({machine})" if machine else ""}.'
  with open(os.path.join(docs, 'table.md'), 'w') as f:
    f.write(md + note + '\n')
  chart(results, s).save(os.path.join(docs, 'chart.png'))
  for model in s.models:
    grid = os.path.join(plan.sample_dir(s, s.train_seeds[0], model, s.sample_seeds[0]), 'samples', 'grids',
                        'grid_p0_00000.png')
    if os.path.exists(grid):
      shutil.copyfile(grid, os.path.join(docs, f'{model}_grid.png'))
  with open(os.path.join(docs, 'results.json'), 'w') as f:
    json.dump({'settings': {k: v for k, v in vars(s).items() if k != 'overrides'}, 'results': results}, f, indent=1)
  return results
