"""The grain training pipeline and the eval iterator."""

import os

import numpy as np
import pytest
from PIL import Image

from reposedm_jax.data import pipeline, pose, synthetic
from reposedm_jax.data.dataset import load_split
from reposedm_jax.data.errors import SkipCounter
from reposedm_jax.data.images import FolderImages
from reposedm_jax.data.splits import Pair, Split
from tests.test_data_readers import H, W, data_cfg


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  r = str(tmp_path_factory.mktemp('pipe'))
  synthetic.generate(r, seed=5, identities=8, views_per_identity=3, height=H, width=W, fmt='pidm')
  return r


def take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_contract(root):
  cfg = data_cfg(root)
  split = load_split(cfg, 'train')
  it = iter(pipeline.make_train_loader(cfg, split, global_batch=4, seed=0))
  b = next(it)
  assert set(b) == set(pipeline.BATCH_KEYS)
  assert b['src_img'].shape == (4, H, W, 3) and b['src_img'].dtype == np.float32
  assert b['tgt_pose'].shape == (4, H, W, 20) and b['tgt_kpts'].shape == (4, 18, 2)
  assert b['pair_index'].dtype == np.int32
  assert -1.0 <= b['src_img'].min() and b['src_img'].max() <= 1.0
  assert 0.0 <= b['src_pose'].min() and b['src_pose'].max() <= 1.0
  # Both directions: rows 2k and 2k+1 are the same pair with source and target swapped.
  np.testing.assert_array_equal(b['src_img'][0], b['tgt_img'][1])
  np.testing.assert_array_equal(b['tgt_pose'][0], b['src_pose'][1])
  assert b['pair_index'][0] == b['pair_index'][1]


def test_determinism_for_a_seed(root):
  cfg = data_cfg(root)
  split = load_split(cfg, 'train')
  a = take(iter(pipeline.make_train_loader(cfg, split, global_batch=4, seed=7)), 3)
  b = take(iter(pipeline.make_train_loader(cfg, split, global_batch=4, seed=7)), 3)
  c = take(iter(pipeline.make_train_loader(cfg, split, global_batch=4, seed=8)), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x['tgt_img'], z['tgt_img']) for x, z in zip(a, c))


def test_process_sharding_covers_split_once(root):
  cfg = data_cfg(root, both_directions=False)
  split = load_split(cfg, 'train')
  n = len(split) - len(split) % 2  # ShardOptions(drop_remainder=True) evens the shards.
  seen = []
  for shard in range(2):
    it = iter(pipeline.make_train_loader(cfg, split, global_batch=2, seed=1, shard_index=shard, shard_count=2))
    idx = np.concatenate([b['pair_index'] for b in take(it, n // 2)])  # One epoch of this shard.
    seen.append(set(idx.tolist()))
    assert len(idx) == len(set(idx.tolist()))  # No repeats within the epoch.
  assert not (seen[0] & seen[1])
  assert len(seen[0] | seen[1]) == n


def test_iterator_state_restore_continues_exactly(root):
  cfg = data_cfg(root)
  split = load_split(cfg, 'train')
  loader = pipeline.make_train_loader(cfg, split, global_batch=4, seed=3)
  it = iter(loader)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  it2 = iter(pipeline.make_train_loader(cfg, split, global_batch=4, seed=3))
  it2.set_state(state)
  for x, y in zip(expected, take(it2, 3)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _dot_split(tmp_path, h0=256, w0=176):
  """One image: white, with a red 3x3 dot where keypoint 0 is (PATN 'image' frame)."""
  img = np.full((h0, w0, 3), 255, np.uint8)
  ky, kx = 100, 70
  img[ky - 1:ky + 2, kx - 1:kx + 2] = (255, 0, 0)
  os.makedirs(tmp_path / 'train', exist_ok=True)
  Image.fromarray(img).save(tmp_path / 'train' / 'a.png')
  kpts = np.full((18, 2), -1, np.float32)
  kpts[0] = (kx, ky)
  kpts[1] = (kx, ky + 30)
  split = Split('train', [Pair('train/a.png', ('train/a.png',), 'x:1')], {'train/a.png': kpts},
                FolderImages(str(tmp_path)), 'image', (h0, w0), SkipCounter('t'))
  return split


def test_augmentation_moves_keypoints_with_pixels(tmp_path):
  split = _dot_split(tmp_path)
  for seed in range(6):
    rng = np.random.default_rng(seed)
    img, kpts = pipeline.load_view(split, 'train/a.png', (128, 88), rng, 0.05)
    red = (img[..., 0] > 150) & (img[..., 1] < 120)
    ys, xs = np.nonzero(red)
    assert len(xs) > 0
    # Pixel-centre convention: keypoint x indexes the pixel column.
    assert abs(xs.mean() - kpts[0, 0]) <= 1.0 and abs(ys.mean() - kpts[0, 1]) <= 1.0


def test_render_after_augment_equals_augment_after_render(tmp_path):
  split = _dot_split(tmp_path)
  kpts0 = split.keypoints['train/a.png']
  h, w = 128, 88
  sh, sw, cx, cy = 134, 92, 3, 5
  render_then_crop = pose.render_pidm_pose(pipeline.to_model_frame(split, kpts0, (sh, sw)), sh, sw)[cy:cy + h,
                                                                                                     cx:cx + w]
  crop_then_render = pose.render_pidm_pose(pipeline.to_model_frame(split, kpts0, (sh, sw), (cx, cy)), h, w)
  # Skeleton and the limb's own distance map agree to within a pixel's rasterisation.
  diff = np.abs(render_then_crop - crop_then_render)
  assert (diff[..., :3] > 0.05).mean() < 0.01
  assert (diff[..., 3:] > 2 / 255).mean() < 0.01


def test_hflip_flips_images_and_poses_jointly(root):
  cfg = data_cfg(root, hflip_prob=1.0, scale_param=0.0)
  split = load_split(cfg, 'train')
  flipped = pipeline.make_example(split, 0, (H, W), pipeline.Augment(0.0, 1.0), np.random.default_rng(0), False)
  plain = pipeline.make_example(split, 0, (H, W), pipeline.Augment(0.0, 0.0), np.random.default_rng(0), False)
  np.testing.assert_array_equal(flipped['tgt_img'][0], plain['tgt_img'][0][:, ::-1])
  np.testing.assert_array_equal(flipped['tgt_pose'][0], plain['tgt_pose'][0][:, ::-1])
  np.testing.assert_allclose(flipped['tgt_kpts'][0], pose.hflip_keypoints(plain['tgt_kpts'][0], W, relabel=True))


def test_eval_iterator_pads_and_masks(root):
  cfg = data_cfg(root)
  split = load_split(cfg, 'test')
  batches = list(pipeline.iterate_eval(cfg, split, 4, limit=6))
  assert [b['valid'].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
  assert batches[1]['pair_index'][:2].tolist() == [4, 5]
  assert batches[0]['src_img'].shape == (4, H, W, 3)


def test_skip_mode_drops_bad_runtime_examples(root, tmp_path):
  import shutil
  r = str(tmp_path / 'ds')
  shutil.copytree(root, r)
  cfg = data_cfg(r, on_bad_example='skip', both_directions=False)
  split = load_split(cfg, 'train')
  victim = split.pairs[0].target
  png = os.path.join(r, victim.replace('.jpg', '.png'))
  with open(png, 'wb') as f:
    f.write(b'not an image')
  it = iter(pipeline.make_train_loader(cfg, split, global_batch=2, seed=0))
  rows = np.concatenate([b['pair_index'] for b in take(it, len(split))])
  bad_pairs = {i for i, p in enumerate(split.pairs) if victim in (p.target, *p.sources)}
  assert rows.size and not (set(rows.tolist()) & {i for i in bad_pairs if len(split.pairs[i].sources) == 1
                                                   or split.pairs[i].target == victim})
