"""Eval mode: metrics of the generated set in `workdir/samples` against the ground truth.

Here: SSIM (variant from `config.eval.ssim_variant`) of generated vs target, and the
copy-the-source baseline SSIM(source, target) on the same pairs, at model resolution.
Writes `workdir/eval/metrics.json` and `workdir/eval/metrics.md`.
"""

import glob
import json
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from reposedm_jax import logs
from reposedm_jax.data import dataset, pipeline
from reposedm_jax.metrics import ssim as ssim_lib


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
  gen_scores, copy_scores = [], []
  for start in tqdm(range(0, len(rows), batch_size), desc='eval', unit='batch'):
    chunk = rows[start:start + batch_size]
    gen = np.stack([np.asarray(Image.open(os.path.join(sample_dir, r['name'])).convert('RGB')) for r in chunk])
    if gen.shape[1:3] != hw:
      raise ValueError(f'{chunk[0]["name"]}: generated size {gen.shape[1:3]} != data size {hw}')
    tgt = np.stack([pipeline.load_view(split, r['target'], hw, None, 0.0)[0] for r in chunk])
    src = np.stack([pipeline.load_view(split, r['source'], hw, None, 0.0)[0] for r in chunk])
    gen_scores.append(np.asarray(ssim_lib.ssim_uint8(gen, tgt, variant)))
    copy_scores.append(np.asarray(ssim_lib.ssim_uint8(src, tgt, variant)))
  gen_ssim, copy_ssim = float(np.concatenate(gen_scores).mean()), float(np.concatenate(copy_scores).mean())
  metrics = {
      'dataset': config.data.dataset, 'variant': config.variant, 'resolution': list(hw), 'num_images': len(rows),
      'sampler': {'name': config.sample.sampler, 'steps': config.sample.num_steps,
                  'guidance_scale': config.sample.guidance_scale},
      'ssim': {'protocol': f'ssim_{variant}', 'generated': gen_ssim, 'copy_source_baseline': copy_ssim},
  }
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(metrics, f, indent=1)
  table = ('| run | images | SSIM (' + variant + ') |\n|---|---|---|\n'
           f'| {config.variant} generated | {len(rows)} | {gen_ssim:.4f} |\n'
           f'| copy source (baseline) | {len(rows)} | {copy_ssim:.4f} |\n')
  with open(os.path.join(out_dir, 'metrics.md'), 'w') as f:
    f.write(table)
  logs.log_line(f'SSIM generated {gen_ssim:.4f} vs copy-source {copy_ssim:.4f} on {len(rows)} pairs; '
                f'wrote {out_dir}/metrics.json')
  return metrics
