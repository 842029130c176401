"""Evaluation: every metric of generated images vs the ground truth, next to the copy-source baseline.

Two front ends share the engine `evaluate_pairs` (one pass, no duplicated metric loops):
* eval mode (`--config.mode=eval`, `run_eval`): `workdir/samples` + its manifest, images and keypoints
  from the dataset at model resolution; writes `workdir/eval/metrics.{json,md}`.
* the CLI, `python -m reposedm_jax.evaluation --generated DIR --reference DIR --pairs FILE ...`
  (cli.py: accepted pairs formats and how files are matched are in its docstring).

Metrics (config.eval, each stored under its protocol name, with image count and resolution):
* SSIM, every variant of `eval.ssim_variants` as 'ssim_<variant>'; `eval.ssim_variant` is the headline
  ('ssim' in metrics.json and the paper-comparison table).
* LPIPS (`eval.lpips_net`), optionally with PIDM's 176x256 resize.
* FID with the TF-FID Inception (fid.py) vs `eval.fid_reference`.
* Mask-SSIM and Mask-LPIPS with the target's limb mask (`eval.masked_metrics`, Market-1501; masked.py).
* Pose accuracy: PCK and mean error of each judge in `eval.pose_judges` on the generated images vs the
  dataset's target keypoints (OpenPose-18 at eval resolution -> COCO-17); a judge that cannot run is
  skipped with its reason in metrics.json.
Each metric is also computed for the copy-source baseline (the source image scored as if generated).
`eval.protocol='pidm'` switches FID and LPIPS to PIDM's protocol (see `resolve_settings`).

The pass reads fixed-size batches (the last padded by repetition, so no jitted metric recompiles) and
records the seconds spent in each part under 'timing_s'.
"""

import collections
import contextlib
import dataclasses
import glob
import json
import os
import resource
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from reposedm_jax import config_lib, logs
from reposedm_jax import sharding as sharding_lib
from reposedm_jax.convert import inception as inception_convert
from reposedm_jax.data import dataset, names, pipeline
from reposedm_jax.evaluation import fid as eval_fid
from reposedm_jax.evaluation import pose as eval_pose
from reposedm_jax.evaluation import report as eval_report
from reposedm_jax.metrics import fid as fid_lib
from reposedm_jax.metrics import inception
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import masked as masked_lib
from reposedm_jax.metrics import pose_accuracy
from reposedm_jax.metrics import ssim as ssim_lib

TORCHVISION_FID_TODO = (
    'FID with torchvision ImageNet Inception-v3 weights (eval.fid_torchvision_weights) is not implemented: '
    'the Flax InceptionV3 (metrics/inception.py) is the TF-FID graph and lacks torchvision\'s variant '
    '(BatchNorm with gamma, 3x3 average pools that count padding, an average pool in Mixed_7c, PIDM\'s '
    'input scaling x*std/0.5+(mean-0.5)/0.5 after a half-pixel bilinear resize to 299), and there is no '
    'torchvision->Flax key map or parity test. Leave eval.fid_torchvision_weights empty: the table then '
    'states that the TF-FID Inception was used.')


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One evaluated pair: the generated file and the image keys of its target and source ('' = none)."""
  gen_path: str
  target: str
  source: str = ''


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """config.eval resolved for one dataset (the protocol applied, every value checked)."""
  protocol: str
  ssim_headline: str
  ssim_variants: Tuple[str, ...]
  lpips_net: str
  lpips_pidm_resize: bool
  fid_reference: str
  fid_pidm_resize: bool
  fid_cache_dir: str
  masked: bool
  pose_judges: Tuple[str, ...]
  pck_alphas: Tuple[float, ...]
  pose_score_targets: bool
  batch_size: int


def resolve_settings(eval_cfg, dataset: str) -> EvalSettings:
  """Checks config.eval and applies `eval.protocol`.

  'pidm' (PIDM's Table 1 protocol, reference notes 1f): FID against every training image (unless FID is
  off, fid_reference=''); for DeepFashion also PIDM's cv2 resize to 176x256 before the Inception and
  before LPIPS. 'standard' takes every key as given.

  Raises:
    config_lib.ConfigError (a ValueError): any value config_lib.validate_eval rejects (all listed at once).
    NotImplementedError: eval.fid_torchvision_weights is set (see TORCHVISION_FID_TODO).
  """
  e = eval_cfg
  config_lib.validate_eval(e)
  variants = tuple(dict.fromkeys((e.ssim_variant, *e.ssim_variants)))  # headline first, no repeats
  if e.fid_torchvision_weights:
    raise NotImplementedError(f'{e.fid_torchvision_weights}: {TORCHVISION_FID_TODO}')
  pidm = e.protocol == 'pidm'
  pidm_resize = pidm and dataset == 'deepfashion'
  return EvalSettings(
      protocol=e.protocol, ssim_headline=e.ssim_variant, ssim_variants=variants, lpips_net=e.lpips_net,
      lpips_pidm_resize=e.lpips_pidm_resize or pidm_resize,
      fid_reference='train_images' if pidm and e.fid_reference else e.fid_reference,
      fid_pidm_resize=e.fid_pidm_resize or pidm_resize, fid_cache_dir=e.fid_cache_dir,
      masked=e.masked_metrics, pose_judges=tuple(e.pose_judges), pck_alphas=tuple(e.pck_alphas),
      pose_score_targets=e.pose_score_targets, batch_size=e.batch_size)


class _Timer(collections.defaultdict):
  """part -> seconds; `with timer('ssim'):` adds the block's wall time."""

  def __init__(self):
    super().__init__(float)

  @contextlib.contextmanager
  def __call__(self, part: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self[part] += time.perf_counter() - t0


def _pad(arr: np.ndarray, n: int) -> np.ndarray:
  """Repeats the last row until the leading axis has n rows (fixed shapes: one compile per metric)."""
  return arr if len(arr) >= n else np.concatenate([arr, np.repeat(arr[-1:], n - len(arr), axis=0)])


def _pair_metrics(settings: EvalSettings, hw, notes: Dict[str, str],
                  sharding=None) -> List[Tuple[str, str, Callable]]:
  """(key, protocol, fn) for every per-pair metric that can run here.

  fn(cands_u8 [K, B, H, W, 3], tgt_u8 [B, H, W, 3], masks) -> [K, B]: each of the K candidate batches
  (the generated images, then the copied sources) scored against the targets; LPIPS computes the
  targets' features once for all K. `sharding` splits the batch over local devices.
  """
  put = lambda x: sharding_lib.put_batch(x, sharding)  # noqa: E731
  per_cand = lambda f: lambda c, t, m: np.stack([np.asarray(f(x, t, m)) for x in c])  # noqa: E731
  out = []
  for v in settings.ssim_variants:
    win = ssim_lib.VARIANTS[v].win_size
    if min(hw) < win:
      notes[f'ssim_{v}'] = f'SSIM window {win} exceeds the {hw[0]}x{hw[1]} images'
    else:
      out.append((f'ssim_{v}', f'ssim_{v}',
                  per_cand(lambda x, t, m, v=v: ssim_lib.ssim_uint8(put(x), put(t), v))))
  lpips_vars = None
  if settings.lpips_net and min(hw) < 32 and not settings.lpips_pidm_resize:
    # AlexNet's stride-4 stem and two 3/2 max-pools leave no pixels below ~27 px.
    notes['lpips'] = f'images of {tuple(hw)} are too small for LPIPS (need >= 32 px a side)'
  elif settings.lpips_net:
    try:
      lpips_vars = lpips_lib.load_lpips_weights(settings.lpips_net)
    except FileNotFoundError as e:  # optional weights package: report, do not fail the other metrics
      # pylint: disable-next=protected-access  # lpips.py keeps the release hashes in its file table
      notes['lpips'] = f'{e} (expected file sha256 {lpips_lib._WEIGHT_FILES[settings.lpips_net][2]})'
  if lpips_vars is not None:
    resize = settings.lpips_pidm_resize
    protocol = f'lpips_{settings.lpips_net}' + ('_pidm_resize_176x256' if resize else '')
    out.append(('lpips', protocol,
                lambda c, t, m: lpips_lib.lpips_uint8(lpips_vars, t, c, resize=resize, sharding=sharding)))
  if settings.masked:
    out.append(('mask_ssim', masked_lib.MASK_SSIM_PROTOCOL, per_cand(masked_lib.mask_ssim)))
    if lpips_vars is not None:
      out.append(('mask_lpips', f'mask_lpips_{settings.lpips_net}',
                  per_cand(lambda x, t, m: masked_lib.mask_lpips(lpips_vars, x, t, m))))
  return out


def evaluate_pairs(items: Sequence[EvalItem], read_gen: Callable[[str], np.ndarray],
                   read_real: Callable[[str], Tuple[np.ndarray, Optional[np.ndarray]]], hw,
                   settings: EvalSettings, *, config=None, workdir: str = '',
                   train_reference: Optional[eval_fid.TrainReference] = None) -> dict:
  """Runs every configured metric over `items`; returns the metrics dict (without run description).

  Args:
    items: the pairs; all have a source or none does.
    read_gen: path -> uint8 [H, W, 3] generated image.
    read_real: image key -> (uint8 [H, W, 3] at resolution hw, float32 [18, 2] OpenPose keypoints in
      that frame or None when unknown).
    hw: (H, W) evaluation resolution; every image must have it.
    settings: from `resolve_settings`.
    config, workdir: for building pose judges (their factories read config.eval / config.pose).
    train_reference: the 'train_images' FID reference (needed only for that setting).
  """
  if not items:
    raise ValueError('nothing to evaluate: no pairs')
  has_src = bool(items[0].source)
  if any(bool(it.source) != has_src for it in items):
    raise ValueError('either every pair has a source image or none has')
  bs, timer, notes = settings.batch_size, _Timer(), {}
  sharding = sharding_lib.local_batch_sharding(bs)
  metrics = _pair_metrics(settings, hw, notes, sharding)
  scores = {key: {'generated': [], 'copy_source_baseline': []} for key, _, _ in metrics}
  bank = None
  if settings.fid_reference:
    try:
      extractor = inception.FeatureExtractor(inception_convert.load_inception_params(), batch_size=bs,
                                             sharding=sharding)
      bank = eval_fid.FeatureBank(extractor, bs, settings.fid_pidm_resize)
    except FileNotFoundError as e:
      notes['fid'] = f'{e} (expected file sha256 {inception_convert.EXPECTED_SHA256})'
  pose = eval_pose.PoseScorer(*pose_accuracy.make_judges(settings.pose_judges, config, workdir),
                              settings.pck_alphas, settings.pose_score_targets)
  have_kpts = True
  t_start, cpu_start = time.perf_counter(), _cpu_seconds()
  for start in tqdm(range(0, len(items), bs), desc='eval', unit='batch'):
    chunk = items[start:start + bs]
    n = len(chunk)
    with timer('read'):
      gen = np.stack([read_gen(it.gen_path) for it in chunk])
      tgt_views = [read_real(it.target) for it in chunk]
      tgt = np.stack([v[0] for v in tgt_views])
      src = np.stack([read_real(it.source)[0] for it in chunk]) if has_src else None
      kpts = [v[1] for v in tgt_views]
      have_kpts = have_kpts and all(k is not None for k in kpts)
    if gen.shape[1:3] != tuple(hw) or tgt.shape[1:3] != tuple(hw):
      raise ValueError(f'{chunk[0].gen_path}: generated {gen.shape[1:3]} / target {tgt.shape[1:3]} images, '
                       f'expected the evaluation size {tuple(hw)}')
    if pose.judges and have_kpts:  # started first: a worker-process judge runs during the other metrics
      with timer('pose_start'):
        real = ([(it.source, x) for it, x in zip(chunk, src)] if has_src else []) + \
            ([(it.target, x) for it, x in zip(chunk, tgt)] if settings.pose_score_targets else [])
        pose.start(gen, real, np.stack(kpts))
    gen_p, tgt_p = _pad(gen, bs), _pad(tgt, bs)
    src_p = _pad(src, bs) if has_src else None
    masks = None
    if settings.masked and have_kpts:
      with timer('masks'):
        masks = _pad(masked_lib.target_masks(np.stack(kpts), hw), bs)
    for key, _, fn in metrics:
      if key.startswith('mask_') and masks is None:
        continue
      with timer(key):
        per_pair = np.asarray(fn(np.stack([gen_p, src_p]) if has_src else gen_p[None], tgt_p, masks))
        scores[key]['generated'].append(per_pair[0, :n])
        if has_src:
          scores[key]['copy_source_baseline'].append(per_pair[1, :n])
    if bank is not None:
      with timer('fid_features'):
        bank.add_generated(gen)
        bank.add_real([it.target for it in chunk], tgt)
        if has_src:
          bank.add_real([it.source for it in chunk], src)
    with timer('pose_wait'):
      pose.finish()
  out: dict = {'num_images': len(items), 'resolution': list(hw)}
  for key, protocol, _ in metrics:
    if key.startswith('mask_') and not have_kpts:
      notes[key] = 'no target keypoints for some pairs (the body mask needs them)'
      continue
    out[key] = {'protocol': protocol, **{k: float(np.concatenate(v).astype(np.float64).mean())
                                        for k, v in scores[key].items() if v}}
  if bank is not None:
    with timer('fid_distance'):
      out['fid'] = _fid_result(settings, bank, items, has_src, train_reference, hw)
  out['pose'] = pose.result([it.source for it in items], [it.target for it in items], have_kpts)
  pose.close()
  if f'ssim_{settings.ssim_headline}' in out:
    out['ssim'] = {'variant': settings.ssim_headline, **out[f'ssim_{settings.ssim_headline}']}
  for key, why in notes.items():
    out.setdefault(key, {})['skipped'] = why
    logs.log_line(f'{key} skipped: {why}')
  # CPU seconds next to wall seconds: on a shared machine the CPU figure is the one that does not depend
  # on other jobs (children = finished helper processes such as the BlazePose worker).
  cpu = _cpu_seconds()
  out['timing_s'] = {**{k: round(v, 2) for k, v in timer.items()},
                     'total': round(time.perf_counter() - t_start, 2),
                     'cpu_process': round(cpu[0] - cpu_start[0], 2), 'cpu_children': round(cpu[1] - cpu_start[1], 2)}
  return out


def _cpu_seconds() -> Tuple[float, float]:
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _fid_result(settings, bank, items, has_src, train_reference, hw) -> dict:
  ref_name = settings.fid_reference
  if ref_name == 'test_targets':
    reference = bank.rows([it.target for it in items])
    count = len(reference)
  else:
    if train_reference is None:
      raise ValueError("eval.fid_reference='train_images' needs the training images (none were given)")
    reference = eval_fid.train_statistics(train_reference, bank, settings.fid_cache_dir,
                                          {'hw': list(hw), 'pidm_resize': settings.fid_pidm_resize})
    count = reference[2]
  protocol = f'fid_tf_inception_vs_{ref_name}' + ('_pidm_resize_176x256' if settings.fid_pidm_resize else '')
  gen = np.concatenate(bank.gen)
  res = {'protocol': protocol, 'network': eval_report.FID_NETWORK, 'reference_images': int(count),
         'generated': eval_fid.fid_against(gen, reference)}
  if has_src:
    res['copy_source_baseline'] = eval_fid.fid_against(bank.rows([it.source for it in items]), reference)
  return res


def read_manifest(sample_dir: str) -> List[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(sample_dir, 'manifest_p*.jsonl'))):
    with open(path) as f:
      rows += [json.loads(ln) for ln in f if ln.strip()]
  if not rows:
    raise FileNotFoundError(f'No manifest_p*.jsonl in {sample_dir}: run --config.mode=sample first.')
  return rows


def resize_to(img_u8: np.ndarray, hw) -> np.ndarray:
  """PIL-bicubic resize to hw (as the data pipeline), or the image itself when it already has that size."""
  if img_u8.shape[:2] == tuple(hw):
    return img_u8
  return np.asarray(Image.fromarray(img_u8).resize((hw[1], hw[0]), Image.BICUBIC))


def read_rgb(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def write_outputs(metrics: dict, out_dir: str, paper_key) -> None:
  """metrics.json and metrics.md (with the paper's Table 1 rows for `paper_key`) into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(metrics, f, indent=1)
  with open(os.path.join(out_dir, 'metrics.md'), 'w') as f:
    f.write(eval_report.markdown(metrics, paper_key))
  logs.log_line(eval_report.summary_line(metrics) + f'; wrote {out_dir}/metrics.json')


def run_eval(config, workdir: str, batch_size: Optional[int] = None) -> dict:
  """Eval mode: `workdir/samples` (manifest from sample mode) vs the test split -> workdir/eval/."""
  if batch_size is not None:
    config = config.copy_and_resolve_references()
    config.eval.batch_size = batch_size
  settings = resolve_settings(config.eval, config.data.dataset)
  sample_dir = os.path.join(workdir, 'samples')
  rows = read_manifest(sample_dir)
  split = dataset.load_split(config.data, 'test')
  hw = (config.data.height, config.data.width)
  items = [EvalItem(os.path.join(sample_dir, r['name']), r['target'], r['source']) for r in rows]
  train_ref = None
  if settings.fid_reference == 'train_images':
    train = dataset.load_split(config.data, 'train')
    train_ref = split_reference(config.data, train, hw, settings.fid_pidm_resize)
  metrics = evaluate_pairs(items, read_rgb, lambda k: pipeline.load_view(split, k, hw, None, 0.0), hw, settings,
                           config=config, workdir=workdir, train_reference=train_ref)
  metrics = eval_report.describe_run(metrics, settings, dataset=config.data.dataset, variant=config.variant,
                                     sampler={'name': config.sample.sampler, 'steps': config.sample.num_steps,
                                              'guidance_scale': config.sample.guidance_scale})
  write_outputs(metrics, os.path.join(workdir, 'eval'), (config.data.dataset, *hw))
  # TensorBoard next to the training curves (<workdir>/tb), at the step the samples came from.
  step = _trained_step(workdir)
  writer = logs.MetricWriter(workdir, jsonl=False)
  writer.scalars(step, {f'eval/{k}': v for k, v in logs.numeric_leaves(metrics).items()})
  writer.close()
  return metrics


def _trained_step(workdir: str) -> int:
  summary = os.path.join(workdir, 'train_summary.json')
  if os.path.exists(summary):
    with open(summary) as f:
      return int(json.load(f).get('step', 0))
  return 0


def reference_keys(data_cfg, train) -> List[str]:
  """The training images of the FID reference: DeepFashion's <root>/train.lst when present (PIDM's
  48,674-image set), every file of a PATN <root>/train/ folder, else every image of the training pairs."""
  lst = os.path.join(data_cfg.root, 'train.lst')
  if data_cfg.format == 'pidm' and os.path.isfile(lst):
    return eval_fid.read_image_list(lst, train.images.exists, names.parse_fashion_name)
  folder = os.path.join(data_cfg.root, 'train')
  if data_cfg.format == 'patn' and os.path.isdir(folder):
    return ['train/' + os.path.basename(p) for p in fid_lib.list_images(folder)]
  return train.image_keys()


def split_reference(data_cfg, train, hw, pidm_resize: bool) -> eval_fid.TrainReference:
  """The training images (`reference_keys`) as an FID reference (model resolution, or PIDM's input)."""
  keys = reference_keys(data_cfg, train)
  if pidm_resize:
    read = lambda k: eval_fid.pidm_inception_input(train.images.read(k), stretch_first=True)  # noqa: E731
  else:
    read = lambda k: resize_to(train.images.read(k), hw)  # noqa: E731
  store = train.images
  if hasattr(store, 'resolve'):  # a folder tree: every file's size and mtime
    identity = eval_fid.folder_identity([store.resolve(k) for k in keys])
  else:  # PIDM's LMDB: the database file
    identity = eval_fid.folder_identity([os.path.join(getattr(store, 'path', ''), 'data.mdb')])
  return eval_fid.TrainReference(keys, read, identity)
