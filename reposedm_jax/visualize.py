"""Sample grids: one row per pair, columns source | target pose | generated | ground truth.

Grids are for people: cells are upscaled by an integer factor (nearest neighbour, so no pixel is invented) until
they are at least `MIN_CELL_HEIGHT` px high, the columns carry titles, and the target pose is drawn from its
keypoints at the upscaled size (PIDM's 4-px strokes at 64x44 merge into one blob).
"""

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reposedm_jax.data import pose as pose_lib
from reposedm_jax.data.keypoints import is_missing

MIN_CELL_HEIGHT = 192  # 3x at 64x44, 1x from 256x176 up
PAIR_TITLES = ('source', 'target pose', 'generated', 'target')
_TITLE_HEIGHT = 16


def to_uint8(img: np.ndarray) -> np.ndarray:
  """[-1, 1] float image(s) -> uint8 in [0, 255]."""
  return np.clip(np.round((np.asarray(img, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def pose_to_uint8(pose: np.ndarray) -> np.ndarray:
  """The RGB skeleton channels (0-2, in [0, 1]) of PIDM pose tensors -> uint8."""
  return np.clip(np.round(np.asarray(pose)[..., :3] * 255.0), 0, 255).astype(np.uint8)


def upscale_factor(height: int, min_height: int = MIN_CELL_HEIGHT) -> int:
  return max(1, math.ceil(min_height / height))


def upscale(images_u8: np.ndarray, factor: int) -> np.ndarray:
  """[..., H, W, C] -> [..., H*f, W*f, C] by pixel replication."""
  return np.repeat(np.repeat(images_u8, factor, axis=-3), factor, axis=-2)


def skeletons_uint8(kpts_bk2: np.ndarray, height: int, width: int, factor: int) -> np.ndarray:
  """Keypoints [B, 18, 2] in pixels of an H x W image -> stick figures [B, H*f, W*f, 3] drawn at the upscaled size.

  Pixel i of the small image covers [i*f, (i+1)*f) of the large one, so its centre i maps to (i + 0.5) f - 0.5."""
  out = []
  for kpts in np.asarray(kpts_bk2, np.float64):
    big = np.where(is_missing(kpts)[:, None], -1.0, (kpts + 0.5) * factor - 0.5)
    out.append(pose_to_uint8(pose_lib.render_skeleton_rgb(big, height * factor, width * factor)))
  return np.stack(out) if out else np.zeros((0, height * factor, width * factor, 3), np.uint8)


def tile_columns(cols, pad: int = 2, titles=None) -> np.ndarray:
  """uint8 columns, each [B, H, W, 3] -> one grid with a row per batch element (and a title row if given)."""
  b, h, w, _ = cols[0].shape
  top = _TITLE_HEIGHT if titles else 0
  grid = np.full((top + b * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(b):
    for j, col in enumerate(cols):
      y, x = top + pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  if titles:
    if len(titles) != len(cols):
      raise ValueError(f'{len(titles)} titles for {len(cols)} columns')
    image = Image.fromarray(grid)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for j, title in enumerate(titles):
      left, _, right, bottom = draw.textbbox((0, 0), title, font=font)
      x = pad + j * (w + pad) + max(0, (w - (right - left)) // 2)
      draw.text((x, max(0, (top - bottom) // 2)), title, fill=(0, 0, 0), font=font)
    grid = np.asarray(image)
  return grid


def pair_grid(src, tgt_pose, generated, target, tgt_kpts=None, pad: int = 2,
              min_height: int = MIN_CELL_HEIGHT, titles=PAIR_TITLES) -> np.ndarray:
  """[B,H,W,3] sources/generated/targets in [-1,1], [B,H,W,20] poses -> one titled, upscaled uint8 grid.

  With `tgt_kpts` ([B, 18, 2], pixels of the H x W images) the pose column is redrawn at the upscaled size;
  without, the pose tensor's skeleton channels are upscaled like the images."""
  h, w = np.shape(src)[1:3]
  f = upscale_factor(h, min_height)
  pose_col = (skeletons_uint8(tgt_kpts, h, w, f) if tgt_kpts is not None
              else upscale(pose_to_uint8(tgt_pose), f))
  cols = [upscale(to_uint8(src), f), pose_col, upscale(to_uint8(generated), f), upscale(to_uint8(target), f)]
  return tile_columns(cols, pad, titles)


def save_png(path: str, img_u8: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(img_u8).save(path)


def alignment_strip(src, warped_nbhwc, target, pad: int = 2, min_height: int = MIN_CELL_HEIGHT) -> np.ndarray:
  """RPA strips (paper Fig. 8): per row, source | warped by F^0 .. F^N | target -> uint8 grid."""
  f = upscale_factor(np.shape(src)[1], min_height)
  cols = [to_uint8(src)] + [to_uint8(w) for w in warped_nbhwc] + [to_uint8(target)]
  titles = ['source'] + [f'warp {n}' for n in range(len(cols) - 2)] + ['target']
  return tile_columns([upscale(c, f) for c in cols], pad, titles)
