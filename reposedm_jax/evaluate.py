"""Eval mode: metrics of the generated set in `workdir/samples` against the ground truth.

SSIM (variant `config.eval.ssim_variant`), LPIPS (`config.eval.lpips_net`) and FID
(`config.eval.fid_reference`, TF-FID Inception; both need their weight packages, see requirements-eval.txt)
of generated vs target, each next to the copy-the-source baseline metric(source, target)
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
from reposedm_jax.metrics import fid as fid_lib
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
  extractor, fid_note = None, ''
  if config.eval.fid_reference:
    try:
      from reposedm_jax.metrics import inception
      extractor = inception.FeatureExtractor()
    except FileNotFoundError as e:
      fid_note = str(e)
  gen_scores, copy_scores, gen_lpips, copy_lpips = [], [], [], []
  feats = {'gen': [], 'tgt': [], 'src': []}
  for start in tqdm(range(0, len(rows), batch_size), desc='eval', unit='batch'):
    chunk = rows[start:start + batch_size]
    gen = np.stack([np.asarray(Image.open(os.path.join(sample_dir, r['name'])).convert('RGB')) for r in chunk])
    if gen.shape[1:3] != hw:
      raise ValueError(f'{chunk[0]["name"]}: generated size {gen.shape[1:3]} != data size {hw}')
    tgt = np.stack([pipeline.load_view(split, r['target'], hw, None, 0.0)[0] for r in chunk])
    src = np.stack([pipeline.load_view(split, r['source'], hw, None, 0.0)[0] for r in chunk])
    gen_scores.append(np.asarray(ssim_lib.ssim_uint8(gen, tgt, variant)))
    copy_scores.append(np.asarray(ssim_lib.ssim_uint8(src, tgt, variant)))
    if extractor is not None:
      for k, imgs in (('gen', gen), ('tgt', tgt), ('src', src)):
        feats[k].append(np.asarray(extractor(imgs)))
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
  if extractor is not None:
    metrics['fid'] = fid_metric(config, split, hw, extractor, {k: np.concatenate(v) for k, v in feats.items()})
  elif config.eval.fid_reference:
    metrics['fid'] = {'skipped': fid_note}
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


def fid_metric(config, split, hw, extractor, feats: dict) -> dict:
  """FID of the generated set (and of the copied sources) against the configured reference.

  'test_targets': the ground-truth targets of the evaluated pairs (same count, model resolution).
  'train_images': every image of the training split (PIDM's protocol, §1f), statistics cached in
  eval.fid_cache_dir keyed by the image list, resolution and Inception weights.
  """
  ref = config.eval.fid_reference
  if ref == 'test_targets':
    ref_feats = feats['tgt']
  elif ref == 'train_images':
    train = dataset.load_split(config.data, 'train')
    keys = train.image_keys()
    ref_feats = None
    cache = None
    if config.eval.fid_cache_dir:
      import hashlib
      h = hashlib.sha256(json.dumps([config.data.root, list(hw), extractor.cache_id, sorted(keys)]).encode())
      cache = os.path.join(config.eval.fid_cache_dir, f'fid_train_feats_{h.hexdigest()[:16]}.npy')
      if os.path.exists(cache):
        ref_feats = np.load(cache)
    if ref_feats is None:
      chunks = []
      for start in tqdm(range(0, len(keys), 32), desc='FID reference', unit='batch'):
        imgs = np.stack([pipeline.load_view(train, k, hw, None, 0.0)[0] for k in keys[start:start + 32]])
        chunks.append(np.asarray(extractor(imgs)))
      ref_feats = np.concatenate(chunks)
      if cache:
        os.makedirs(config.eval.fid_cache_dir, exist_ok=True)
        np.save(cache, ref_feats)
  else:
    raise ValueError(f"eval.fid_reference must be '', 'test_targets' or 'train_images', got {ref!r}")
  # Below 2048 images the covariances are rank-deficient; the Gram form is exact and fast there.
  method = 'gram' if min(len(ref_feats), len(feats['gen'])) < 2048 else 'sqrtm'
  return {'protocol': f'fid_tf_inception_vs_{ref}', 'reference_images': int(len(ref_feats)),
          'generated': fid_lib.fid_from_features(feats['gen'], ref_feats, method=method),
          'copy_source_baseline': fid_lib.fid_from_features(feats['src'], ref_feats, method=method)}


def markdown_table(metrics: dict, config) -> str:
  """The run's numbers, the copy-source baseline, and the paper's Table 1 rows for this dataset."""
  lp, fd = metrics.get('lpips', {}), metrics.get('fid', {})
  n = metrics['num_images']
  head = (f"| run | images | {fd.get('protocol', 'FID (not computed)')} | SSIM ({metrics['ssim']['protocol']}) | "
          f"{lp.get('protocol', 'LPIPS (not computed)')} |\n|---|---|---|---|---|\n")
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else '-'  # noqa: E731
  rows = [f"| {config.variant} generated | {n} | {fmt(fd.get('generated'))} | {fmt(metrics['ssim']['generated'])} | "
          f"{fmt(lp.get('generated'))} |",
          f"| copy source (baseline) | {n} | {fmt(fd.get('copy_source_baseline'))} | "
          f"{fmt(metrics['ssim']['copy_source_baseline'])} | {fmt(lp.get('copy_source_baseline'))} |"]
  key = (config.data.dataset, config.data.height, config.data.width)
  for name, (fid_v, ssim_v, lpips_v) in PAPER_TABLE1.get(key, {}).items():
    rows.append(f'| paper Table 1: {name} (their protocol) | - | {fid_v:.4f} | {ssim_v:.4f} | {lpips_v:.4f} |')
  return head + '\n'.join(rows) + '\n'
