"""The images a study page shows: one size, one format, named by a hash of their pixels.

Nothing about a file may tell a participant where it came from: methods publish PNGs or JPEGs at different
sizes, with names that spell the method or the pair. So every image (real, generated, pose, scrambled) is
decoded, resized to the study size, re-encoded as a metadata-free PNG and saved as `<hash>.png`, where the hash
is of the PNG bytes alone.
"""

import hashlib
import io
import logging
import os

import numpy as np
from PIL import Image

from reposedm_jax import visualize
from reposedm_jax.data import images, pose
from reposedm_jax.study.plan import Rng

HASH_CHARS = 16


def read_rgb(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] of an image file (BadExampleError naming it if unreadable)."""
  return images.decode_image(path, path)


def fit(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes to (H, W) with PIL bicubic (as `evaluate` does), or returns the image if already that size."""
  if img.shape[:2] == tuple(hw):
    return img
  return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BICUBIC))


def scramble(img: np.ndarray, seed: int, grid: tuple[int, int] = (4, 4)) -> np.ndarray:
  """The image cut into grid tiles that are permuted so that no tile stays in place (an obvious fake).

  Rows and columns beyond a whole number of tiles stay where they are.
  """
  gh, gw = grid
  th, tw = img.shape[0] // gh, img.shape[1] // gw
  tiles = [img[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(gh) for c in range(gw)]
  rng = Rng(seed)
  order = list(range(len(tiles)))
  while any(i == j for i, j in enumerate(order)):
    order = rng.shuffled(range(len(tiles)))
  out = img.copy()
  for k, src in enumerate(order):
    r, c = divmod(k, gw)
    out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tiles[src]
  return out


def render_pose(kpts_xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """PIDM's coloured OpenPose skeleton on black, uint8 [H, W, 3]."""
  return visualize.pose_to_uint8(pose.render_skeleton_rgb(kpts_xy, hw[0], hw[1]))


def png_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


class StimulusWriter:
  """Writes stimuli into `img_dir` and remembers, for the private plan, what each hash is."""

  def __init__(self, img_dir: str, hw: tuple[int, int]):
    self.img_dir, self.hw = img_dir, tuple(hw)
    self.images: dict[str, dict] = {}
    self._warned_aspect: set[tuple[int, int]] = set()
    os.makedirs(img_dir, exist_ok=True)

  def load(self, path: str) -> np.ndarray:
    """An image file at the study size; warns once per size whose aspect ratio differs (it gets stretched)."""
    img = read_rgb(path)
    h, w = img.shape[:2]
    if abs(h / w - self.hw[0] / self.hw[1]) > 0.02 * self.hw[0] / self.hw[1] and (h, w) not in self._warned_aspect:
      self._warned_aspect.add((h, w))
      logging.warning('%s is %dx%d: stretched to the study size %dx%d (another aspect ratio)', path, h, w,
                      *self.hw)
    return fit(img, self.hw)

  def add(self, img: np.ndarray, **meta) -> str:
    """Saves `img` (already at the study size) and returns its hash name; `meta` goes to the private plan."""
    data = png_bytes(img)
    name = hashlib.sha256(data).hexdigest()[:HASH_CHARS]
    if name not in self.images:
      with open(os.path.join(self.img_dir, f'{name}.png'), 'wb') as f:
        f.write(data)
      self.images[name] = meta
    return name
