"""Synthetic multi-person text-image-pose data in HumanSD's on-disk layout, for RePoseSD's tiny runs and tests.

Each image holds 1-3 people drawn as filled limbs (a coloured torso, skin-toned head and arms, dark legs) with
independently drawn articulation on a plain background; the caption names the count, the shirt colours and the
background ("two people, one in a red shirt and one in a blue shirt, on a green background"). The keypoints are
the drawing's own joints (COCO-17, score 1), saved as HumanSD saves mmpose's output (data.write_pose_npz).

  python -m reposedm_jax.sd.synthetic --out runs/reposesd/data --train 48 --val 16 --height 80 --width 72
writes <out>/laion_human/{images,pose}/00000/*.{jpg,npz} + mapping_file_training.json and
<out>/humanart/{images,pose}/real_human/synthetic/* + mapping_file_training.json / mapping_file_validation.json.
"""

import json
import os

import cv2
import numpy as np
from absl import app, flags

from reposedm_jax.sd import data

COLOURS = {'red': (200, 40, 40), 'blue': (40, 70, 200), 'yellow': (220, 200, 40), 'purple': (130, 50, 160),
           'white': (235, 235, 235), 'orange': (230, 120, 30)}
BACKGROUNDS = {'green': (60, 140, 70), 'grey': (128, 128, 128), 'teal': (40, 130, 130), 'beige': (210, 190, 150)}
COUNT_WORDS = {1: 'a person', 2: 'two people', 3: 'three people'}


def person_keypoints(rng: np.random.Generator, cx: float, foot_y: float, height: float) -> np.ndarray:
  """COCO-17 joints of a standing person `height` px tall, feet at foot_y, with random arm and leg angles."""
  u = height / 8.0  # head-height units
  neck = np.array([cx, foot_y - 7.0 * u])
  k = np.zeros((17, 3), np.float32)
  k[:, 2] = 1.0
  k[0, :2] = neck + [0, -0.9 * u]
  k[1, :2], k[2, :2] = k[0, :2] + [0.25 * u, -0.2 * u], k[0, :2] + [-0.25 * u, -0.2 * u]
  k[3, :2], k[4, :2] = k[0, :2] + [0.5 * u, 0.0], k[0, :2] + [-0.5 * u, 0.0]
  k[5, :2], k[6, :2] = neck + [0.9 * u, 0.1 * u], neck + [-0.9 * u, 0.1 * u]
  k[11, :2], k[12, :2] = neck + [0.6 * u, 3.0 * u], neck + [-0.6 * u, 3.0 * u]
  for side, (sh, el, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
    a1 = np.deg2rad(rng.uniform(-100, 100))  # from straight up (-90) through horizontal to straight down (90)
    a2 = a1 + np.deg2rad(rng.uniform(-60, 60))
    k[el, :2] = k[sh, :2] + 1.4 * u * np.array([side * np.cos(a1), np.sin(a1)])
    k[wr, :2] = k[el, :2] + 1.3 * u * np.array([side * np.cos(a2), np.sin(a2)])
  for hip, knee, ankle in ((11, 13, 15), (12, 14, 16)):
    spread = rng.uniform(-0.6, 0.6) * u
    k[knee, :2] = k[hip, :2] + [spread, 1.9 * u]
    k[ankle, :2] = k[knee, :2] + [spread * rng.uniform(0.5, 1.5), 1.9 * u]
  return k


def draw_person(canvas: np.ndarray, k: np.ndarray, shirt, height: float) -> None:
  u = height / 8.0
  t = max(2, int(round(0.45 * u)))
  skin, trousers = (225, 180, 150), (50, 50, 70)
  torso = np.array([k[5, :2], k[6, :2], k[12, :2], k[11, :2]], np.int32)
  cv2.fillPoly(canvas, [torso], shirt)
  for a, b, c in ((11, 13, trousers), (13, 15, trousers), (12, 14, trousers), (14, 16, trousers),
                  (5, 7, shirt), (6, 8, shirt), (7, 9, skin), (8, 10, skin)):
    cv2.line(canvas, tuple(int(v) for v in k[a, :2]), tuple(int(v) for v in k[b, :2]), c, t)
  cv2.circle(canvas, tuple(int(v) for v in k[0, :2]), max(2, int(0.55 * u)), skin, -1)


def make_example(rng: np.random.Generator, height: int, width: int):
  n = int(rng.integers(1, 4))
  bg_name = str(rng.choice(list(BACKGROUNDS)))
  canvas = np.zeros((height, width, 3), np.uint8)
  canvas[:] = BACKGROUNDS[bg_name]
  names = [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]
  people = []
  slots = (np.arange(n) + 0.5) / n
  for i, name in enumerate(names):
    ph = rng.uniform(0.55, 0.9) * height
    cx = width * (slots[i] + rng.uniform(-0.08, 0.08))
    k = person_keypoints(rng, cx, rng.uniform(0.9, 0.98) * height, ph)
    draw_person(canvas, k, COLOURS[name], ph)
    inside = (k[:, 0] >= 0) & (k[:, 0] <= width - 1) & (k[:, 1] >= 0) & (k[:, 1] <= height - 1)
    k[~inside] = [0.0, 0.0, 0.0]  # mmpose reports every joint; an off-image joint scores 0 here
    people.append(k)
  shirts = ' and '.join(f'one in a {c} shirt' for c in names) if n > 1 else f'in a {names[0]} shirt'
  caption = f'{COUNT_WORDS[n]}, {shirts}, on a {bg_name} background'
  return canvas, np.stack(people), caption


def write_split(root: str, rel_dir: str, mapping_name: str, count: int, rng, height: int, width: int,
                start: int = 0) -> str:
  mapping = {}
  for i in range(start, start + count):
    image, people, caption = make_example(rng, height, width)
    img_rel = os.path.join('images', rel_dir, f'{i:09d}.jpg')
    pose_rel = os.path.join('pose', rel_dir, f'{i:09d}.npz')
    os.makedirs(os.path.join(root, os.path.dirname(img_rel)), exist_ok=True)
    cv2.imwrite(os.path.join(root, img_rel), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    data.write_pose_npz(os.path.join(root, pose_rel), people)
    mapping[f'{rel_dir}/{i:09d}'] = {'img_path': img_rel, 'pose_path': pose_rel, 'prompt': caption}
  path = os.path.join(root, mapping_name)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(mapping, f, indent=1)
  return path


def write_dataset(out: str, *, train: int, val: int, height: int, width: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  laion = os.path.join(out, 'laion_human')
  art = os.path.join(out, 'humanart')
  write_split(laion, '00000', data.MAPPING_FILES['laion_human'], train, rng, height, width)
  write_split(art, 'real_human/synthetic', data.MAPPING_FILES['humanart_train'], max(1, val // 2), rng, height, width)
  write_split(art, 'real_human/synthetic', data.MAPPING_FILES['humanart_val'], val, rng, height, width,
              start=max(1, val // 2))
  return {'laion_human': laion, 'humanart': art}


def _main(argv):
  del argv
  f = flags.FLAGS
  roots = write_dataset(f.out, train=f.train, val=f.val, height=f.height, width=f.width, seed=f.seed)
  print(f'Wrote {f.train} training and {f.val} validation examples: {roots}')


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'output directory')
  flags.DEFINE_integer('train', 48, 'LAION-Human-like training examples')
  flags.DEFINE_integer('val', 16, 'Human-Art-like validation examples')
  flags.DEFINE_integer('height', 80, 'image height')
  flags.DEFINE_integer('width', 72, 'image width')
  flags.DEFINE_integer('seed', 0, 'seed')
  flags.mark_flags_as_required(['out'])
  app.run(_main)
