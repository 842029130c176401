"""Eval mode: metrics of the generated set in `workdir/samples` against the ground truth.

SSIM (variant `config.eval.ssim_variant`) and LPIPS (`config.eval.lpips_net`, when its weights are
installed) of generated vs target, each next to the copy-the-source baseline metric(source, target)
on the same pairs, at model resolution. Writes `workdir/eval/metrics.json` (every metric with its
protocol name and image count) and `workdir/eval/metrics.md` (with the paper's Table 1 rows for the
dataset, when it has any).
"""

import glob
import json
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from reposedm_jax import logs
from reposedm_jax.data import dataset, pipeline
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import ssim as ssim_lib

# Paper Table 1 (FID, SSIM, LPIPS), for the Markdown table next to a run's numbers.
PAPER_TABLE1 = {
    ('deepfashion', 256, 176): {'PIDM': (6.3671, 0.7312, 0.1678), 'RePoseDM': (5.1986, 0.7923, 0.1463)},
    ('deepfashion', 512, 352): {'PIDM': (5.8365, 0.7419, 0.1768), 'RePoseDM': (4.7284, 0.7944, 0.1566)},
    ('market1501', 128, 64): {'PIDM': (14.451, 0.3054, 0.2415), 'RePoseDM': (13.689, 0.3284, 0.2206)},
}


def read_manifest(sample_dir: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(sample_dir, 'manifest_p*.jsonl'))):
    with open(path) as f:
      rows += [json.loads(ln) for ln in f if ln.strip()]
  if not rows:
    raise FileNotFoundError(f'No manifest_p*.jsonl in {sample_dir}: run --config.mode=sample first.')
  return rows


def run_eval(config, workdir: str, batch_size: int = 32) -> dict:
  sample_dir = os.path.join(workdir, 'samples')
  rows = read_manifest(sample_dir)
  split = dataset.load_split(config.data, 'test')
  hw = (config.data.height, config.data.width)
  variant = config.eval.ssim_variant
  lpips_vars, lpips_note = None, ''
  if config.eval.lpips_net and min(hw) < 32 and not config.eval.lpips_pidm_resize:
    # AlexNet's stride-4 stem and two 3/2 max-pools leave no pixels below ~27 px.
    lpips_note = f'images of {hw} are too small for LPIPS (need >= 32 px a side, or eval.lpips_pidm_resize)'
  elif config.eval.lpips_net:
    try:
      lpips_vars = lpips_lib.load_lpips_weights(config.eval.lpips_net)
    except FileNotFoundError as e:  # Optional weights package: report, do not fail the other metrics.
      lpips_note = str(e)
  gen_scores, copy_scores, gen_lpips, copy_lpips = [], [], [], []
  for start in tqdm(range(0, len(rows), batch_size), desc='eval', unit='batch'):
    chunk = rows[start:start + batch_size]
    gen = np.stack([np.asarray(Image.open(os.path.join(sample_dir, r['name'])).convert('RGB')) for r in chunk])
    if gen.shape[1:3] != hw:
      raise ValueError(f'{chunk[0]["name"]}: generated size {gen.shape[1:3]} != data size {hw}')
    tgt = np.stack([pipeline.load_view(split, r['target'], hw, None, 0.0)[0] for r in chunk])
    src = np.stack([pipeline.load_view(split, r['source'], hw, None, 0.0)[0] for r in chunk])
    gen_scores.append(np.asarray(ssim_lib.ssim_uint8(gen, tgt, variant)))
    copy_scores.append(np.asarray(ssim_lib.ssim_uint8(src, tgt, variant)))
    if lpips_vars is not None:
      resize = config.eval.lpips_pidm_resize
      gen_lpips.append(np.asarray(lpips_lib.lpips_uint8(lpips_vars, gen, tgt, resize=resize)))
      copy_lpips.append(np.asarray(lpips_lib.lpips_uint8(lpips_vars, src, tgt, resize=resize)))
  gen_ssim, copy_ssim = float(np.concatenate(gen_scores).mean()), float(np.concatenate(copy_scores).mean())
  metrics = {
      'dataset': config.data.dataset, 'variant': config.variant, 'resolution': list(hw), 'num_images': len(rows),
      'sampler': {'name': config.sample.sampler, 'steps': config.sample.num_steps,
                  'guidance_scale': config.sample.guidance_scale},
      'ssim': {'protocol': f'ssim_{variant}', 'generated': gen_ssim, 'copy_source_baseline': copy_ssim},
  }
  if lpips_vars is not None:
    protocol = f'lpips_{config.eval.lpips_net}' + ('_pidm_resize_176x256' if config.eval.lpips_pidm_resize else '')
    metrics['lpips'] = {'protocol': protocol, 'generated': float(np.concatenate(gen_lpips).mean()),
                        'copy_source_baseline': float(np.concatenate(copy_lpips).mean())}
  elif config.eval.lpips_net:
    metrics['lpips'] = {'skipped': lpips_note}
    logs.log_line(f'LPIPS skipped: {lpips_note}')
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(metrics, f, indent=1)
  with open(os.path.join(out_dir, 'metrics.md'), 'w') as f:
    f.write(markdown_table(metrics, config))
  logs.log_line(f'SSIM generated {gen_ssim:.4f} vs copy-source {copy_ssim:.4f} on {len(rows)} pairs; '
                f'wrote {out_dir}/metrics.json')
  return metrics


def markdown_table(metrics: dict, config) -> str:
  """The run's numbers, the copy-source baseline, and the paper's Table 1 rows for this dataset."""
  lp = metrics.get('lpips', {})
  lp_name = lp.get('protocol', 'LPIPS (not computed)')
  n = metrics['num_images']
  head = f"| run | images | SSIM ({metrics['ssim']['protocol']}) | {lp_name} |\n|---|---|---|---|\n"
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else '-'  # noqa: E731
  rows = [f"| {config.variant} generated | {n} | {fmt(metrics['ssim']['generated'])} | {fmt(lp.get('generated'))} |",
          f"| copy source (baseline) | {n} | {fmt(metrics['ssim']['copy_source_baseline'])} | "
          f"{fmt(lp.get('copy_source_baseline'))} |"]
  key = (config.data.dataset, config.data.height, config.data.width)
  for name, (_, ssim_v, lpips_v) in PAPER_TABLE1.get(key, {}).items():
    rows.append(f'| paper Table 1: {name} (their protocol) | - | {ssim_v:.4f} | {lpips_v:.4f} |')
  return head + '\n'.join(rows) + '\n'
