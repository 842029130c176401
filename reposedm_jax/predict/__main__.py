"""python -m reposedm_jax.predict: your own photo in a new pose, a pose sequence, or an edited garment.

  # one photo, one or more target poses (pose files or photos)
  python -m reposedm_jax.predict --workdir runs/demo --source me.jpg --pose pose.json --pose other.jpg --out out/
  # a sequence: --interpolate N frames between the first two poses, or a folder / JSON list of poses
  python -m reposedm_jax.predict --workdir RUN --source me.jpg --pose a.json --pose b.json --interpolate 16 --out out/
  # garment editing (paper Fig. 4): --source is the reference person, --garment the person whose clothes go on
  python -m reposedm_jax.predict --workdir RUN --source ref.jpg --garment other.jpg --mask upper --out out/

Weights: `--workdir RUN` (its latest checkpoint or `--step`, EMA unless `--raw`), `--weights DIR` (an export), or
`--weights DIR --config configs/X.py [--set k=v]` (a bare params directory: PIDM's weights after the converter).
Keypoints of a photo come from `--source-pose FILE` (or `--garment-pose`), else BlazePose (`make pose-venv`).
Outputs in --out: result_<i>.png (model resolution), side_<i>.png (source | pose | result, titled), for sequences
frames/, sequence.gif and sequence.mp4, and predict.json (every input, crop and setting used).
"""

import argparse
import json
import os
import re
import sys
import time

from reposedm_jax import pose_estimator, visualize
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.pose_files import FORMATS
from reposedm_jax.predict import engine, inputs, outputs


def build_parser():
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.predict', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
  w = p.add_mutually_exclusive_group(required=True)
  w.add_argument('--workdir', help='training workdir')
  w.add_argument('--weights', help='export directory (python -m reposedm_jax.export)')
  p.add_argument('--config', default='', help='configs/X.py[:args] for --weights that are a bare params directory '
                 '(a converter\'s output, e.g. PIDM\'s released weights); with --set key=value overrides')
  p.add_argument('--set', action='append', default=[], help='config override for --config, e.g. data.width=256')
  p.add_argument('--step', type=int, default=None, help='checkpoint step of --workdir (default: latest)')
  p.add_argument('--raw', action='store_true', help='raw instead of EMA weights')
  p.add_argument('--source', required=True, help='source photo (any size; cropped around the person)')
  p.add_argument('--source-pose', default='', help='pose file of the source photo (default: BlazePose)')
  p.add_argument('--pose', action='append', default=[], help='target pose: a pose file, a photo, a folder or a '
                 'JSON list of them (repeatable)')
  p.add_argument('--pose-frame', default='', help='HxW of the image an OpenPose JSON was made on, or of a '
                 'keypoint CSV that is not PATN\'s 256x176 (Market-1501: 128x64)')
  p.add_argument('--min-confidence', type=float, default=0.1, help='OpenPose joints below it are missing')
  p.add_argument('--interpolate', type=int, default=0, help='N frames between the first two poses (sequence)')
  p.add_argument('--fps', type=float, default=8.0)
  p.add_argument('--garment', default='', help='editing: the person wearing the garment to put on --source')
  p.add_argument('--garment-pose', default='', help='pose file of --garment (default: BlazePose)')
  p.add_argument('--mask', default='upper', help='editing: PNG mask (white = regenerate) or upper / lower')
  p.add_argument('--crop', default='person', choices=inputs.CROPS)
  p.add_argument('--pose-crop', default='', choices=('',) + inputs.CROPS,
                 help='crop of the target poses when it differs from --crop (default: the same)')
  p.add_argument('--crop-aspect', default='', help='HxW: crop at this aspect and stretch into the model frame '
                 '(256x176 for PIDM\'s released 256x256 weights, trained on stretched DeepFashion images)')
  p.add_argument('--out', required=True)
  p.add_argument('--steps', type=int, default=None, help='sampling steps (default: the run\'s sample.num_steps)')
  p.add_argument('--sampler', default=None, choices=('ddpm', 'ddim'))
  p.add_argument('--guidance-scale', type=float, default=None, help='CFG w_c (default: the run\'s)')
  p.add_argument('--pif-scale', type=float, default=None, help='PIF guidance s (variant full)')
  p.add_argument('--seed', type=int, default=None, help='sampling seed (default: the run\'s sample.seed)')
  p.add_argument('--batch', type=int, default=None, help='batch size (default: the run\'s sample.batch_size)')
  p.add_argument('--pose-python', default='', help='interpreter of the BlazePose venv (default .venv-pose)')
  p.add_argument('--pose-detector', default='blazepose', choices=('blazepose', 'hrnet'),
                 help="keypoints of photos: BlazePose, or the project's HigherHRNet (--hrnet-dir)")
  p.add_argument('--hrnet-dir', default='', help='HigherHRNet weights for --pose-detector hrnet: a train_pose dir '
                 "or a converted official checkpoint (default: the run's guide estimator)")
  p.add_argument('--hrnet-height', type=int, default=0, help='rows the photo is resized to for the HigherHRNet '
                 "(default: the run's data.height; 512 for the official weights)")
  return p


def expand_poses(specs):
  """Pose arguments -> a flat list of pose specs (folders and JSON lists opened)."""
  out = []
  for spec in specs:
    if os.path.isdir(spec):
      # Natural order (frame_2 before frame_10), as a sequence's frames are numbered.
      names = sorted((n for n in os.listdir(spec) if os.path.splitext(n)[1].lower() in FORMATS + inputs.PHOTO_EXTENSIONS),
                     key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', n)])
      if not names:
        raise BadExampleError(spec, 'no pose file or photo in this folder')
      out += [os.path.join(spec, n) for n in names]
    elif spec.lower().endswith('.json') and os.path.isfile(spec) and _is_list_file(spec):
      with open(spec) as f:
        out += [p if os.path.isabs(p) else os.path.join(os.path.dirname(spec), p) for p in json.load(f)]
    else:
      out.append(spec)
  return out


def _is_list_file(path: str) -> bool:
  try:
    with open(path) as f:
      doc = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return False
  return isinstance(doc, list) and all(isinstance(p, str) for p in doc)


def _frame(text: str, flag: str):
  if not text:
    return None
  try:
    h, w = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise BadExampleError(flag, f'expected HxW, got {text!r}') from None
  return h, w


def _progress(start):
  def report(done, total):
    rate = done / max(time.perf_counter() - start, 1e-9)
    print(f'  {done}/{total} images, {rate:.2f} images/s, ETA {(total - done) / max(rate, 1e-9):.0f} s', flush=True)
  return report


def run(args) -> dict:
  overrides = {'sample.num_steps': args.steps, 'sample.sampler': args.sampler,
               'sample.guidance_scale': args.guidance_scale, 'pif.sample_scale': args.pif_scale}
  config = engine.config_from_file(args.config, args.set) if args.config else None
  model = engine.load(args.workdir or args.weights, step=args.step, ema=not args.raw, sample_overrides=overrides,
                      config=config)
  photo_poses = inputs.PhotoPoses(args.pose_python, hrnet=_hrnet_detector(args, model))
  try:
    return _run(args, model, photo_poses)
  finally:
    photo_poses.close()


def _hrnet_detector(args, model):
  if args.pose_detector != 'hrnet':
    return None
  cfg = model.config
  path = args.hrnet_dir or cfg.pose.checkpoint or os.path.join(args.workdir or args.weights, 'pose')
  arch = pose_estimator.stored_arch(path) or cfg.pose.arch
  variables, module = pose_estimator.load_pose_estimator(cfg, path, use_pose_checkpoint=False, arch=arch)
  return module, variables, cfg.pose.score_threshold, args.hrnet_height or cfg.data.height


def _run(args, model, photo_poses) -> dict:
  cfg, hw = model.config, model.hw
  seed = cfg.sample.seed if args.seed is None else args.seed
  batch = cfg.sample.batch_size if args.batch is None else args.batch
  aspect = _frame(args.crop_aspect, '--crop-aspect')
  # B1 with --crop resize never reads the source's keypoints: no BlazePose needed for it (region masks do).
  skip_detector = args.source_pose or (args.crop == 'resize' and not model.needs_keypoints and not args.garment)
  src = inputs.source_view(args.source, hw, crop=args.crop, pose_spec=args.source_pose,
                           photo_poses=None if skip_detector else photo_poses, need_keypoints=model.needs_keypoints,
                           aspect_hw=aspect)
  record = {'model': model.description, 'variant': cfg.variant, 'frame': list(hw), 'crop': args.crop, 'seed': seed,
            'sampler': f'{cfg.sample.sampler} x {cfg.sample.num_steps}, CFG {cfg.sample.guidance_scale}',
            'source': {'photo': args.source, 'keypoints_from': src.keypoints_from, 'keypoints': src.kpts.tolist()}}
  if cfg.variant == 'full':
    record['pif_scale'] = cfg.pif.sample_scale
  os.makedirs(args.out, exist_ok=True)
  visualize.save_png(os.path.join(args.out, 'source.png'), src.image)
  if args.garment:
    return _edit(args, model, src, photo_poses, record, seed, batch)
  specs = expand_poses(args.pose)
  if not specs:
    raise BadExampleError('--pose', 'no target pose given')
  targets = [inputs.target_view(s, hw, crop=args.pose_crop or args.crop, photo_poses=photo_poses, aspect_hw=aspect,
                                pose_frame=_frame(args.pose_frame, '--pose-frame'),
                                min_confidence=args.min_confidence) for s in specs]
  # A sequence (shared noise, GIF / MP4): interpolation, or a folder / JSON list of poses.
  sequence = args.interpolate > 0 or len(specs) > len(args.pose)
  kpts, names = [t.kpts for t in targets], [t.origin for t in targets]
  if args.interpolate:
    if len(kpts) < 2:
      raise BadExampleError('--interpolate', 'needs two --pose arguments to interpolate between')
    kpts = inputs.interpolate(kpts[0], kpts[1], args.interpolate)
    names = [f'{specs[0]} -> {specs[1]}, frame {i}/{len(kpts) - 1}' for i in range(len(kpts))]
  rows = [{'src': src.image, 'src_kpts': src.kpts, 'tgt_kpts': k} for k in kpts]
  print(f'{model.description}: {len(rows)} image(s) at {hw[0]}x{hw[1]}' +
        (' (a sequence: shared noise)' if sequence else ''), flush=True)
  images = engine.generate(model, rows, seed=seed, batch_size=batch, shared_noise=sequence,
                           progress=_progress(time.perf_counter()))
  sub = 'frames' if sequence else ''
  sides = [outputs.side_by_side(src.image, k, im) for k, im in zip(kpts, images)]
  record['targets'] = []
  for i, (k, image, side, name) in enumerate(zip(kpts, images, sides, names)):
    visualize.save_png(os.path.join(args.out, sub, f'result_{i:03d}.png'), image)
    visualize.save_png(os.path.join(args.out, sub, f'side_{i:03d}.png'), side)
    record['targets'].append({'pose': name, 'keypoints': k.tolist()})
  _write_record(args.out, record)  # before the videos: a failing encoder must not lose it
  if sequence:
    record['gif'] = outputs.write_gif(os.path.join(args.out, 'sequence.gif'), sides, args.fps)
    record['mp4'] = outputs.write_mp4(os.path.join(args.out, 'sequence.mp4'), sides, args.fps)
    _write_record(args.out, record)
  print(f'Wrote {len(images)} result(s) to {args.out}')
  return record


def _edit(args, model, ref, photo_poses, record, seed, batch) -> dict:
  """Garment editing: the garment person is the appearance condition, the reference's pose the target, and
  outside the mask every step is the reference re-noised (sample.generate with edit_ref / edit_mask)."""
  hw = model.hw
  garment = inputs.source_view(args.garment, hw, crop=args.crop, pose_spec=args.garment_pose,
                               photo_poses=None if args.garment_pose else photo_poses,
                               need_keypoints=model.needs_keypoints, aspect_hw=_frame(args.crop_aspect, '--crop-aspect'))
  if os.path.splitext(args.mask)[1]:
    mask = outputs.mask_from_png(args.mask, ref.photo_hw, ref.window, hw)
  else:
    mask = outputs.region_mask(ref.kpts, hw, args.mask)
  rows = [{'src': garment.image, 'src_kpts': garment.kpts, 'tgt_kpts': ref.kpts, 'edit_ref': ref.image,
           'edit_mask': mask}]
  image = engine.generate(model, rows, seed=seed, batch_size=batch)[0]
  visualize.save_png(os.path.join(args.out, 'edited.png'), image)
  f = visualize.upscale_factor(hw[0])
  mask_u8 = (mask.repeat(3, -1) * 255).astype('uint8')
  cols = [visualize.upscale(x[None], f) for x in (ref.image, garment.image, mask_u8, image)]
  visualize.save_png(os.path.join(args.out, 'edit_side.png'),
                     visualize.tile_columns(cols, titles=['reference', 'garment', 'mask', 'edited']))
  record['edit'] = {'garment': args.garment, 'garment_keypoints_from': garment.keypoints_from, 'mask': args.mask,
                    'mask_pixels': int(mask.sum())}
  _write_record(args.out, record)
  print(f'Wrote the edited image to {args.out}/edited.png')
  return record


def _write_record(out: str, record: dict) -> None:
  with open(os.path.join(out, 'predict.json'), 'w') as fh:
    json.dump(record, fh, indent=1)


def main(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.fps <= 0:
    parser.error(f'--fps must be positive, got {args.fps}')
  try:
    return run(args)
  except (BadExampleError, FileNotFoundError, ValueError) as e:
    sys.exit(f'predict: {e}')
  except Exception as e:  # the BlazePose worker's failures: one line, the fix in it
    if type(e).__name__ == 'JudgeUnavailable':
      sys.exit(f'predict: {e}')
    raise


if __name__ == '__main__':
  main()
