"""Synthetic pose-transfer benchmark written in the real DeepFashion on-disk conventions.

Procedural articulated people (drawn by `synthetic_draw`) with exact keypoints, so that every code
path can run end to end without the real dataset (see DESIGN.md, "The synthetic benchmark").

  python -m reposedm_jax.data.synthetic --out DIR --seed 0 --identities 2000 --views-per-identity 5 \
      --height 128 --width 88 [--test-fraction 0.2] [--format pidm|patn] [--difficulty standard|hard] \
      [--grid docs/synthetic_samples.png]

Format 'pidm' (PIDM's DeepFashion layout, reference/pidm-and-benchmarks.md §1b):
  DIR/img/{MEN,WOMEN}/<Category>/id_<8 digits>/NN_V_view.png   H x W RGB PNG
  DIR/pose/.../NN_V_view.txt     18 rows "x y" (np.savetxt '%.18e'), OpenPose-18, legacy 256x256 frame
                                 (x = x_px * 176 / W + 40, y = y_px * 256 / H), missing rows exactly "-1 -1"
  DIR/train_pairs.txt            per train identity, each image once as target (field 0) then all its
                                 other images as sources; paths relative, with '.jpg' like the real file
  DIR/test_pairs.txt             "target,source" for every ordered pair within a test identity
  DIR/{train,test}.lst           the fashion name of each image of the split
Format 'patn' (PATN/GFLA CSV convention):
  DIR/{train,test}/<fashion name>              real JPEG files (quality 95) under their .jpg flat names
  DIR/fasion-resize-annotation-{train,test}.csv  "name:keypoints_y:keypoints_x", integer image pixels, -1 missing
  DIR/fasion-resize-pairs-{train,test}.csv     "from,to" (source, target), every ordered pair per identity
  DIR/{train,test}.lst
Both write DIR/synthetic_meta.json (arguments and counts; no timings, so reruns are byte-identical).

Each identity has one appearance; its K views are 01_1_front, 01_2_side, 01_3_back, 01_4_full,
01_7_additional, then 02_1_front... (same person, further outfit numbers). Every image is drawn from a
generator seeded by (seed, identity, view), so the output does not depend on generation order.
An identity with a single view has no pairs; its image still appears in the .lst file.
"""

import argparse
import json
import os
import time

import cv2
import numpy as np

from reposedm_jax.data import keypoints as kpl
from reposedm_jax.data import synthetic_draw
from reposedm_jax.data.names import fashion_name

FORMATS = ('pidm', 'patn')
_LEGACY_W, _LEGACY_H, _LEGACY_BAR = 176.0, 256.0, 40.0


def view_file_stem(view_index: int) -> str:
  """0 -> '01_1_front', 4 -> '01_7_additional', 5 -> '02_1_front'."""
  num, name = synthetic_draw.VIEWS[view_index % len(synthetic_draw.VIEWS)]
  return f'{view_index // len(synthetic_draw.VIEWS) + 1:02d}_{num}_{name}'


def split_identities(seed: int, identities: int, test_fraction: float) -> np.ndarray:
  """Bool [identities], True for test; at least one identity in each split when there are two or more."""
  n_test = int(round(identities * test_fraction))
  if identities >= 2:
    n_test = min(max(n_test, 1), identities - 1)
  perm = np.random.default_rng([seed, 0x5B1]).permutation(identities)
  is_test = np.zeros(identities, bool)
  is_test[perm[:n_test]] = True
  return is_test


def legacy_keypoints(kpts_px: np.ndarray, height: int, width: int) -> np.ndarray:
  """Image-pixel (x, y) -> PIDM's legacy 256x256 frame with 40-px side bars; -1 stays exactly -1."""
  out = np.empty_like(kpts_px, dtype=np.float64)
  out[:, 0] = kpts_px[:, 0] * (_LEGACY_W / width) + _LEGACY_BAR
  out[:, 1] = kpts_px[:, 1] * (_LEGACY_H / height)
  out[kpl.is_missing(kpts_px)] = kpl.MISSING
  return out


def pose_txt(kpts: np.ndarray) -> str:
  """The bytes np.savetxt writes for an [18, 2] array with its defaults ('%.18e', ' ', '\\n'), 4x faster."""
  return ''.join('%.18e %.18e\n' % (float(x), float(y)) for x, y in kpts)


def render_identity(seed, identity, views_per_identity, height, width, difficulty='standard'):
  """Yields (appearance, view_index, image RGB uint8, keypoints px) for one identity."""
  app = synthetic_draw.make_appearance(seed, identity, height)
  for v in range(views_per_identity):
    image, kp = synthetic_draw.render_view(app, seed, identity, v, height, width, difficulty=difficulty)
    yield app, v, image, kp


def pair_displacement(kp_a: np.ndarray, kp_b: np.ndarray, height: int) -> float:
  """Mean distance between the joints present in both [18, 2] keypoint sets, as a fraction of the image
  height (NaN when none is shared): how far a copy of the source is from the target pose."""
  both = ~kpl.is_missing(kp_a) & ~kpl.is_missing(kp_b)
  if not both.any():
    return float('nan')
  return float(np.mean(np.linalg.norm(kp_a[both] - kp_b[both], axis=1)) / height)


def _write_lines(path, lines):
  with open(path, 'w') as f:
    f.write(''.join(ln + '\n' for ln in lines))


def patn_annotation_row(name: str, kp: np.ndarray) -> str:
  """One row of a PATN annotation CSV: `name: [y0, ..., y17]: [x0, ..., x17]`, rounded pixels, -1 missing."""
  miss = kpl.is_missing(kp)
  ys = [-1 if m else int(round(y)) for m, y in zip(miss, kp[:, 1])]
  xs = [-1 if m else int(round(x)) for m, x in zip(miss, kp[:, 0])]
  return f'{name}: {json.dumps(ys)}: {json.dumps(xs)}'


def generate(out_dir: str, *, seed: int, identities: int, views_per_identity: int, height: int, width: int,
             test_fraction: float = 0.2, fmt: str = 'pidm', difficulty: str = 'standard') -> dict:
  """Writes the synthetic dataset under out_dir and returns its counts.

  Args:
    out_dir: output root (created if needed; existing files of the same names are overwritten).
    seed: master seed; the same arguments give byte-identical files.
    identities: number of people.
    views_per_identity: images per person (K); views cycle front, side, back, full, additional.
    height, width: image size in pixels.
    test_fraction: share of identities held out for the test split (disjoint from train).
    fmt: 'pidm' (PIDM folder layout, PNG + pose txt) or 'patn' (flat JPEG folders + CSVs).
    difficulty: 'standard' or 'hard' (`synthetic_draw.render_view`: independent articulated poses per
      view and upper-body close-ups, so a copy of the source is far from the target pose).

  Returns:
    dict with 'images', 'train_images', 'test_images', 'train_identities', 'test_identities',
    'train_pairs' and 'test_pairs' (lines of the pairs file / rows of the pairs CSV), and
    'test_pair_displacement' (mean over test pairs of `pair_displacement`, a fraction of the height).
  """
  if fmt not in FORMATS:
    raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
  if identities < 1 or views_per_identity < 1 or height < 16 or width < 12:
    raise ValueError('need identities >= 1, views_per_identity >= 1, height >= 16 and width >= 12')
  if not 0.0 <= test_fraction <= 1.0:
    raise ValueError(f'test_fraction must lie in [0, 1], got {test_fraction}')
  is_test = split_identities(seed, identities, test_fraction)
  groups = {'train': [], 'test': []}  # split -> list of per-identity lists of (rel .jpg path, kpts px)
  jpeg = [cv2.IMWRITE_JPEG_QUALITY, 95]
  for i in range(identities):
    split = 'test' if is_test[i] else 'train'
    group = []
    for app, v, image, kp in render_identity(seed, i, views_per_identity, height, width, difficulty):
      rel = f'img/{app.gender}/{app.category}/id_{i + 1:08d}/{view_file_stem(v)}.jpg'
      bgr = np.ascontiguousarray(image[..., ::-1])
      if fmt == 'pidm':
        png = os.path.join(out_dir, rel[:-4] + '.png')
        os.makedirs(os.path.dirname(png), exist_ok=True)
        if not cv2.imwrite(png, bgr):
          raise OSError(f'could not write {png}')
        txt = os.path.join(out_dir, 'pose', rel[len('img/'):-4] + '.txt')
        os.makedirs(os.path.dirname(txt), exist_ok=True)
        with open(txt, 'w') as f:
          f.write(pose_txt(legacy_keypoints(kp, height, width)))
      else:
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        path = os.path.join(out_dir, split, fashion_name(rel))
        if not cv2.imwrite(path, bgr, jpeg):
          raise OSError(f'could not write {path}')
      group.append((rel, kp))
    groups[split].append(group)

  counts = {'images': identities * views_per_identity}
  for split, idents in groups.items():
    counts[f'{split}_identities'] = len(idents)
    counts[f'{split}_images'] = sum(len(g) for g in idents)
    _write_lines(os.path.join(out_dir, f'{split}.lst'), [fashion_name(r) for g in idents for r, _ in g])
    if fmt == 'pidm':
      lines = []
      for g in idents:
        rels = [r for r, _ in g]
        for t in rels:
          others = [s for s in rels if s != t]
          if not others:
            continue
          # Train lines carry every other view as a candidate source; test lines are single pairs.
          if split == 'train':
            lines.append(','.join([t] + others))
          else:
            lines.extend(f'{t},{s}' for s in others)
      _write_lines(os.path.join(out_dir, f'{split}_pairs.txt'), lines)
    else:
      rows = [f'{fashion_name(s)},{fashion_name(t)}' for g in idents for s, _ in g for t, _ in g if s != t]
      _write_lines(os.path.join(out_dir, f'fasion-resize-pairs-{split}.csv'), ['from,to'] + rows)
      ann = ['name:keypoints_y:keypoints_x'] + [patn_annotation_row(fashion_name(r), kp) for g in idents for r, kp in g]
      _write_lines(os.path.join(out_dir, f'fasion-resize-annotation-{split}.csv'), ann)
      lines = rows
    counts[f'{split}_pairs'] = len(lines)
  disp = [pair_displacement(ka, kb, height) for g in groups['test'] for ra, ka in g for rb, kb in g if ra != rb]
  disp = [d for d in disp if d == d]
  counts['test_pair_displacement'] = round(float(np.mean(disp)), 4) if disp else None

  meta = {'generator': 'reposedm_jax.data.synthetic', 'version': 1,
          'args': {'seed': seed, 'identities': identities, 'views_per_identity': views_per_identity,
                   'height': height, 'width': width, 'test_fraction': test_fraction, 'format': fmt,
                   'difficulty': difficulty},
          'counts': counts, 'views': [view_file_stem(v) for v in range(views_per_identity)],
          'keypoints': 'OpenPose-18; pidm: legacy 256x256 frame (x*176/W+40, y*256/H); patn: image pixels; -1 missing'}
  with open(os.path.join(out_dir, 'synthetic_meta.json'), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write('\n')
  return counts


def draw_keypoints(image: np.ndarray, kpts: np.ndarray) -> np.ndarray:
  """Copy of an RGB image with the OpenPose skeleton overlaid (thin limbs, joint dots)."""
  out = np.ascontiguousarray(image[..., ::-1]).copy()  # the colour table is BGR
  present = ~kpl.is_missing(kpts)
  for i, (a, b) in enumerate(kpl.OPENPOSE_LIMBS[:kpl.NUM_DRAWN_LIMBS]):
    if present[a] and present[b]:
      pa, pb = np.round(kpts[[a, b]] * 16).astype(np.int32)
      cv2.line(out, tuple(map(int, pa)), tuple(map(int, pb)), kpl.OPENPOSE_COLORS_BGR[i], 1, cv2.LINE_AA, 4)
  for j in np.flatnonzero(present):
    c = tuple(int(v) for v in np.round(kpts[j] * 16))
    cv2.circle(out, c, 2 * 16, kpl.OPENPOSE_COLORS_BGR[j], -1, cv2.LINE_AA, 4)
  return out[..., ::-1]


def sample_grid(*, seed: int = 0, identities: int = 4, height: int = 128, width: int = 88,
                keypoints: bool = True) -> np.ndarray:
  """RGB grid: one row per identity, its five views side by side, optionally a keypoint row below each."""
  gap = 2
  rows = []
  for i in range(identities):
    views = list(render_identity(seed, i, len(synthetic_draw.VIEWS), height, width))
    for with_kp in ((False, True) if keypoints else (False,)):
      tiles = [draw_keypoints(im, kp) if with_kp else im for _, _, im, kp in views]
      row = np.full((height, len(tiles) * (width + gap) - gap, 3), 255, np.uint8)
      for k, t in enumerate(tiles):
        row[:, k * (width + gap):k * (width + gap) + width] = t
      rows.append(row)
  out = np.full((len(rows) * (height + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
  for k, r in enumerate(rows):
    out[k * (height + gap):k * (height + gap) + height] = r
  return out


def write_grid(path: str, **kwargs) -> None:
  """Writes `sample_grid(**kwargs)` as a PNG (docs/synthetic_samples.png is made this way).

  The grid is stored with a 256-colour adaptive palette: the flat-shaded figures survive it
  unchanged to the eye and the file stays small enough to live in the repository (~75 KB).
  """
  from PIL import Image  # only the docs picture needs it
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(sample_grid(**kwargs)).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                         dither=Image.Dither.NONE)
  img.save(path, 'PNG', optimize=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', help='output root (omit to only write --grid)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--identities', type=int, default=100)
  p.add_argument('--views-per-identity', type=int, default=5)
  p.add_argument('--height', type=int, default=256)
  p.add_argument('--width', type=int, default=176)
  p.add_argument('--test-fraction', type=float, default=0.2)
  p.add_argument('--format', choices=FORMATS, default='pidm')
  p.add_argument('--difficulty', choices=synthetic_draw.DIFFICULTIES, default='standard',
                 help='hard: independent articulated poses per view and upper-body close-ups')
  p.add_argument('--grid', help='also write a sample grid PNG here (4 identities x 5 views, with keypoints)')
  p.add_argument('--grid-identities', type=int, default=4)
  args = p.parse_args(argv)
  if args.out is None and args.grid is None:
    p.error('give --out and/or --grid')
  if args.grid:
    write_grid(args.grid, seed=args.seed, identities=args.grid_identities, height=args.height, width=args.width)
    print(f'wrote sample grid {args.grid}')
  if args.out:
    t0 = time.perf_counter()
    counts = generate(args.out, seed=args.seed, identities=args.identities,
                      views_per_identity=args.views_per_identity, height=args.height, width=args.width,
                      test_fraction=args.test_fraction, fmt=args.format, difficulty=args.difficulty)
    dt = time.perf_counter() - t0
    print(f"wrote {counts['images']} images ({counts['train_images']} train / {counts['test_images']} test, "
          f"{counts['train_identities']} / {counts['test_identities']} identities, "
          f"{counts['train_pairs']} / {counts['test_pairs']} pair lines) to {args.out} "
          f"[{args.format}, {args.height}x{args.width}, {args.difficulty}] in {dt:.2f} s = "
          f"{counts['images'] / dt:.0f} images/s; test pairs: mean source->target joint displacement "
          f"{counts['test_pair_displacement']} of the image height")


if __name__ == '__main__':
  main()
