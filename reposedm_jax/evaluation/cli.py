"""Standalone evaluation of a folder of generated images (the same metrics and code as eval mode).

  python -m reposedm_jax.evaluation --generated DIR --reference DIR --pairs FILE [--source DIR]
      [--keypoints CSV_OR_DIR] [--dataset deepfashion|market1501|synthetic] [--protocol standard|pidm]
      [--train-dir DIR] [--no-fid] [--out DIR] [--set eval.KEY=VALUE ...]

Pairs FILE, by content:
* this project's sample manifest (`manifest_p*.jsonl`: rows {"name", "source", "target"}); the
  generated file is DIR/name;
* PATN/GFLA pairs CSV (header `from,to`: source, target), e.g. market-pairs-test.csv;
* PIDM pairs txt (`target,source[,...]`, no header, e.g. test_pairs.txt; the first source is used).
For the last two the generated file of (source, target) is the first that exists of PIDM's (and this
project's) `<src>_2_<tgt>_vis.png` with DeepFashion fashion names, the same with a `deep` prefix on each
name, and GFLA's `<src>___<tgt>_vis.png`, with and without the names' extensions, as .png or .jpg.
A pair whose generated file is missing is an error naming it (`--skip-missing` drops it instead).

Images: the evaluation size is that of the generated images. A target (or source) is looked up in
--reference (--source, default --reference) as the pairs key itself (.png tried before .jpg, as PIDM),
its base name, its fashion name, or 'deep' + fashion name; one of another size is resized to the
evaluation size with PIL bicubic (PIDM's 256x256 ground truth vs 256x176 samples).

Keypoints (needed for Mask-SSIM/LPIPS and pose accuracy; skipped without): --keypoints is a PATN
annotation CSV (pixel frame --keypoint-frame, default the dataset's data.ann_height x ann_width) or a
PIDM dataset root holding pose/<...>.txt (legacy 256x256 frame); both are mapped to the evaluation size.

--protocol pidm needs --train-dir: FID is then computed against every image file directly in it
(PIDM's train_256x256_pngs/), or, with --train-list train.lst, against the listed images found in it
like the targets (the DeepFashion root with img/: PIDM's 48,674-image reference, not train_pairs.txt's
37,016). Results go to --out (default <generated>/../eval): metrics.json and metrics.md, as eval mode.
"""

import argparse
import ast
import importlib
import logging
import os
from typing import List

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.evaluation import engine
from reposedm_jax.evaluation import fid as eval_fid
from reposedm_jax.evaluation import report as eval_report
from reposedm_jax.evaluation.files import find_image, generated_candidates, load_keypoints, lst_key, read_pairs
from reposedm_jax.metrics import fid as fid_lib

DATASETS = ('deepfashion', 'market1501', 'synthetic')


def _parse_overrides(config, items: List[str]) -> None:
  for item in items:
    key, eq, value = item.partition('=')
    if not eq or not key.startswith('eval.') or key[5:] not in config.eval:
      raise ValueError(f'--set {item!r}: expected eval.KEY=VALUE with KEY one of {sorted(config.eval)}')
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a bare string
    current = config.eval[key[5:]]
    config.eval[key[5:]] = tuple(value) if isinstance(current, tuple) else type(current)(value)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.evaluation', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--generated', required=True, help='folder of generated images')
  p.add_argument('--reference', required=True, help='folder of ground-truth (target) images')
  p.add_argument('--pairs', required=True, help='manifest .jsonl, PATN pairs CSV or PIDM pairs txt')
  p.add_argument('--source', default='', help='folder of source images (default: --reference)')
  p.add_argument('--keypoints', default='', help='PATN annotation CSV or PIDM root with pose/')
  p.add_argument('--keypoint-frame', default='', help='HxW pixel frame of a CSV (default: dataset config)')
  p.add_argument('--dataset', default='deepfashion', choices=DATASETS)
  p.add_argument('--protocol', default='standard', choices=eval_fid.PROTOCOLS)
  p.add_argument('--train-dir', default='', help='training images for FID under --protocol pidm')
  p.add_argument('--train-list', default='', help='only these images of --train-dir (e.g. train.lst)')
  p.add_argument('--no-fid', action='store_true', help='skip FID (eval.fid_reference=\'\')')
  p.add_argument('--skip-missing', action='store_true', help='drop pairs without a generated file')
  p.add_argument('--out', default='', help='output folder (default: <generated>/../eval)')
  p.add_argument('--set', action='append', default=[], metavar='eval.KEY=VALUE', help='any config.eval key')
  return p


def run(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  try:
    config = importlib.import_module(f'configs.{args.dataset}').get_config()
  except ImportError as e:
    raise SystemExit(f'cannot import configs.{args.dataset} ({e}): run from the repository root') from None
  config.eval.protocol = args.protocol
  if args.no_fid:
    config.eval.fid_reference = ''
  _parse_overrides(config, args.set)
  settings = engine.resolve_settings(config.eval, config.data.dataset)
  if settings.fid_reference == 'train_images' and not args.train_dir:
    raise SystemExit("FID against the training images (--protocol pidm) needs --train-dir DIR (or --no-fid)")

  items, missing = [], []
  for src, tgt, name in read_pairs(args.pairs):
    cands = [name] if name else generated_candidates(src, tgt)
    path = next((os.path.join(args.generated, c) for c in cands
                 if os.path.isfile(os.path.join(args.generated, c))), None)
    if path is None:
      missing.append(f'{src} -> {tgt} (tried {", ".join(cands[:4])}{", ..." if len(cands) > 4 else ""})')
    else:
      items.append(engine.EvalItem(path, tgt, src))
  if missing and not args.skip_missing:
    raise SystemExit(f'{len(missing)} pairs of {args.pairs} have no generated image in {args.generated}, '
                     'e.g.\n  ' + '\n  '.join(missing[:5]) + '\n(--skip-missing evaluates the others)')
  if missing:
    logging.warning('%d pairs without a generated image skipped', len(missing))
  if not items:
    raise SystemExit(f'no pair of {args.pairs} has a generated image in {args.generated}')
  hw = engine.read_rgb(items[0].gen_path).shape[:2]

  src_root = args.source or args.reference
  if find_image(src_root, items[0].source) is None:
    if args.source:
      raise SystemExit(f'source image {items[0].source!r} not found in --source {args.source}')
    logging.warning('sources not in --reference; no copy-source baseline (pass --source DIR)')
    items = [engine.EvalItem(it.gen_path, it.target) for it in items]
  frame = tuple(int(v) for v in args.keypoint_frame.split('x')) if args.keypoint_frame else \
      (config.data.ann_height, config.data.ann_width)
  kpts_fn = load_keypoints(args.keypoints, frame) if args.keypoints else None
  target_keys = {it.target for it in items}

  def read_real(key: str):
    is_target = key in target_keys
    path = find_image(args.reference if is_target else src_root, key)
    if path is None:
      raise BadExampleError(args.reference if is_target else src_root, f'image {key!r} not found', field='image')
    return engine.resize_to(engine.read_rgb(path), hw), (kpts_fn(key, hw) if kpts_fn else None)

  train_ref = None
  if settings.fid_reference == 'train_images':
    if args.train_list:  # names of a .lst (fashion names) found in --train-dir like any other key
      paths = eval_fid.read_image_list(args.train_list, lambda p: p is not None,
                                       lambda name: find_image(args.train_dir, lst_key(name)))
    else:
      paths = fid_lib.list_images(args.train_dir)

    def read_train(p):
      img = engine.read_rgb(p)
      if settings.fid_pidm_resize:
        return eval_fid.pidm_inception_input(img, stretch_first=True)
      return engine.resize_to(img, hw)
    train_ref = eval_fid.TrainReference(paths, read_train, eval_fid.folder_identity(paths))
  workdir = os.path.dirname(os.path.abspath(args.generated.rstrip('/')))
  metrics = engine.evaluate_pairs(items, engine.read_rgb, read_real, hw, settings, config=config,
                                    workdir=workdir, train_reference=train_ref)
  metrics = eval_report.describe_run(metrics, settings, dataset=config.data.dataset, variant='',
                                     inputs={k: getattr(args, k) for k in ('generated', 'reference', 'pairs',
                                                                           'source', 'keypoints', 'train_dir')})
  engine.write_outputs(metrics, args.out or os.path.join(workdir, 'eval'), (config.data.dataset, *hw))
  return metrics


def main(argv=None) -> None:
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  run(argv)
