"""Sample grids: one row per pair, columns source | target pose | generated | ground truth."""

import os

import numpy as np
from PIL import Image


def to_uint8(img: np.ndarray) -> np.ndarray:
  """[-1, 1] float image(s) -> uint8 in [0, 255]."""
  return np.clip(np.round((np.asarray(img, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def pose_to_uint8(pose: np.ndarray) -> np.ndarray:
  """The RGB skeleton channels (0-2, in [0, 1]) of PIDM pose tensors -> uint8."""
  return np.clip(np.round(np.asarray(pose)[..., :3] * 255.0), 0, 255).astype(np.uint8)


def tile_columns(cols, pad: int = 2) -> np.ndarray:
  """uint8 columns, each [B, H, W, 3] -> one grid with a row per batch element."""
  b, h, w, _ = cols[0].shape
  grid = np.full((b * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(b):
    for j, col in enumerate(cols):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  return grid


def pair_grid(src, tgt_pose, generated, target, pad: int = 2) -> np.ndarray:
  """[B,H,W,3] sources/generated/targets in [-1,1] and [B,H,W,20] poses -> uint8 grid [B*(H+p), 4*(W+p), 3]."""
  return tile_columns([to_uint8(src), pose_to_uint8(tgt_pose), to_uint8(generated), to_uint8(target)], pad)


def save_png(path: str, img_u8: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(img_u8).save(path)


def alignment_strip(src, warped_nbhwc, target, pad: int = 2) -> np.ndarray:
  """RPA strips (paper Fig. 8): per row, source | warped by F^0 .. F^N | target -> uint8 grid."""
  cols = [to_uint8(src)] + [to_uint8(w) for w in warped_nbhwc] + [to_uint8(target)]
  return tile_columns(cols, pad)
