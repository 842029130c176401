"""Sample grids: nearest-neighbour upscaling, titled columns, the pose redrawn from keypoints."""

import numpy as np
import pytest

from reposedm_jax import visualize


def _batch(b=2, h=8, w=6, seed=0):
  rng = np.random.default_rng(seed)
  img = lambda: rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  return img(), rng.uniform(0, 1, (b, h, w, 20)).astype(np.float32), img(), img()


@pytest.mark.parametrize('h,factor', [(64, 3), (128, 2), (192, 1), (256, 1), (8, 24)])
def test_upscale_factor_reaches_min_cell_height(h, factor):
  assert visualize.upscale_factor(h) == factor
  assert h * factor >= visualize.MIN_CELL_HEIGHT


def test_cells_are_pixel_replicas_of_the_inputs():
  src, pose, gen, tgt = _batch()
  grid = visualize.pair_grid(src, pose, gen, tgt, min_height=24, titles=None)  # factor 3, pad 2
  f, pad, h, w = 3, 2, 8, 6
  assert grid.shape == (2 * (h * f + pad) + pad, 4 * (w * f + pad) + pad, 3)
  for j, col in enumerate((src, None, gen, tgt)):
    if col is None:
      continue
    for i in range(2):
      y, x = pad + i * (h * f + pad), pad + j * (w * f + pad)
      cell = grid[y:y + h * f, x:x + w * f]
      small = visualize.to_uint8(col[i])
      np.testing.assert_array_equal(cell[::f, ::f], small)  # every f-th pixel is the source pixel ...
      np.testing.assert_array_equal(cell, np.kron(small, np.ones((f, f, 1), np.uint8)))  # ... and so is its block


def test_pose_column_is_drawn_from_keypoints_at_the_upscaled_size():
  src, pose, gen, tgt = _batch(b=1, h=64, w=44)
  kpts = np.full((1, 18, 2), -1.0, np.float32)
  kpts[0, 2], kpts[0, 3] = (10.0, 20.0), (10.0, 40.0)  # right shoulder -> right elbow: a vertical limb
  grid = visualize.pair_grid(src, pose, gen, tgt, tgt_kpts=kpts, titles=None)
  f, pad = 3, 2
  cell = grid[pad:pad + 64 * f, pad + 44 * f + pad:pad + 2 * (44 * f) + pad]
  assert cell.shape == (192, 132, 3)
  lit = cell.max(axis=-1) > 0
  # The limb runs from x=(10.5*3-0.5)=31 between y=61 and y=121; strokes are PIDM's 4 px, so nothing lit 10 px away.
  assert lit[61:122, 31].all()
  assert not lit[:, 45:].any() and not lit[:50].any() and not lit[135:].any()


def test_titles_are_drawn_above_each_column():
  src, pose, gen, tgt = _batch(b=1, h=64, w=44)
  titled = visualize.pair_grid(src, pose, gen, tgt)
  plain = visualize.pair_grid(src, pose, gen, tgt, titles=None)
  band = titled.shape[0] - plain.shape[0]
  assert band > 0
  np.testing.assert_array_equal(titled[band:], plain)
  cell_w = 44 * 3 + 2
  for j in range(4):
    assert (titled[:band, 2 + j * cell_w:2 + (j + 1) * cell_w] < 128).any(), f'no title over column {j}'
  with pytest.raises(ValueError, match='3 titles for 4 columns'):
    visualize.tile_columns([visualize.to_uint8(src)] * 4, titles=('a', 'b', 'c'))


def test_alignment_strip_has_one_titled_column_per_warp():
  src, _, gen, tgt = _batch(b=2, h=64, w=44)
  strip = visualize.alignment_strip(src, np.stack([gen, gen, gen]), tgt)
  assert strip.shape[1] == 5 * (44 * 3 + 2) + 2
