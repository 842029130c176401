"""Host input pipeline: pair -> (augment, render) -> batch of numpy arrays.

A batch is a dict of numpy arrays with a leading batch axis B:
  src_img   float32 [B, H, W, 3]   source image, RGB in [-1, 1]
  tgt_img   float32 [B, H, W, 3]   target image (ground truth), RGB in [-1, 1]
  src_pose  float32 [B, H, W, 20]  PIDM pose tensor of the source, [0, 1]
  tgt_pose  float32 [B, H, W, 20]  PIDM pose tensor of the target, [0, 1]
  src_kpts  float32 [B, 18, 2]     OpenPose (x, y) at model resolution, -1 missing
  tgt_kpts  float32 [B, 18, 2]
  pair_index int32  [B]            index of the pair in its split (names outputs)
  valid     bool    [B]            (eval batches only) False on padding rows

Training follows PIDM: per image an independent random upscale in [0, scale_param) + crop,
then one horizontal flip (p = hflip_prob) of both images and both pose tensors, and each pair
used in both directions. Pose tensors are flipped as pixels without relabelling left/right
joints (PIDM's behaviour, so PIDM checkpoints see what they were trained on); the keypoint
arrays *are* relabelled, because the pose estimator that consumes them later reads a flipped
person's right arm as a left arm.
"""

import dataclasses
import logging

import grain.python as pygrain
import numpy as np
from PIL import Image

from reposedm_jax.data import errors, pose
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.splits import Pair, Split

BATCH_KEYS = ('src_img', 'tgt_img', 'src_pose', 'tgt_pose', 'src_kpts', 'tgt_kpts', 'pair_index')


@dataclasses.dataclass(frozen=True)
class Augment:
  """Train-time augmentation settings (all zero at test time)."""
  scale_param: float = 0.0
  hflip_prob: float = 0.0


def to_model_frame(split: Split, kpts: np.ndarray, scaled_hw, crop_xy=(0, 0)) -> np.ndarray:
  """Keypoints of `split`'s frame -> pixel frame of an image resized to `scaled_hw`, then cropped."""
  if split.keypoint_frame == 'legacy256':
    return pose.legacy_to_image(kpts, scaled_hw, crop_xy)
  return pose.image_to_image(kpts, split.ann_hw, scaled_hw, crop_xy)


def load_view(split: Split, key: str, hw, rng: np.random.Generator | None, scale_param: float):
  """Reads one image and its keypoints at model resolution `hw`, with PIDM's scale + crop.

  Returns uint8 [H, W, 3] and float32 [18, 2].
  """
  h, w = hw
  img = split.images.read(key)
  s = rng.uniform(0.0, scale_param) if (rng is not None and scale_param > 0) else 0.0
  sh, sw = int(h * (1 + s)), int(w * (1 + s))
  if img.shape[:2] != (sh, sw):
    img = np.asarray(Image.fromarray(img).resize((sw, sh), Image.BICUBIC))
  cx = int(rng.integers(0, sw - w + 1)) if rng is not None else 0
  cy = int(rng.integers(0, sh - h + 1)) if rng is not None else 0
  img = img[cy:cy + h, cx:cx + w]
  kpts = to_model_frame(split, split.keypoints[key], (sh, sw), (cx, cy))
  return img, kpts


def _to_unit(img_u8: np.ndarray) -> np.ndarray:
  return img_u8.astype(np.float32) / 127.5 - 1.0


def make_example(split: Split, index: int, hw, aug: Augment, rng: np.random.Generator | None,
                 both_directions: bool) -> dict[str, np.ndarray]:
  """One pair -> arrays with a leading direction axis D (2 if both_directions, else 1)."""
  pair: Pair = split.pairs[index]
  source = pair.sources[int(rng.integers(len(pair.sources)))] if rng is not None else pair.sources[0]
  try:
    src_img, src_kpts = load_view(split, source, hw, rng, aug.scale_param)
    tgt_img, tgt_kpts = load_view(split, pair.target, hw, rng, aug.scale_param)
  except BadExampleError as e:
    raise BadExampleError(e.file, f'{e.reason} (pair at {pair.origin})', line=e.line, field=e.field) from e
  h, w = hw
  src_pose = pose.render_pidm_pose(src_kpts, h, w)
  tgt_pose = pose.render_pidm_pose(tgt_kpts, h, w)
  if rng is not None and aug.hflip_prob > 0 and rng.uniform() < aug.hflip_prob:
    src_img, tgt_img = src_img[:, ::-1], tgt_img[:, ::-1]
    src_pose, tgt_pose = src_pose[:, ::-1], tgt_pose[:, ::-1]
    src_kpts = pose.hflip_keypoints(src_kpts, w, relabel=True)
    tgt_kpts = pose.hflip_keypoints(tgt_kpts, w, relabel=True)
  fwd = dict(src_img=_to_unit(src_img), tgt_img=_to_unit(tgt_img), src_pose=src_pose, tgt_pose=tgt_pose,
             src_kpts=src_kpts, tgt_kpts=tgt_kpts)
  dirs = [fwd]
  if both_directions:
    dirs.append(dict(src_img=fwd['tgt_img'], tgt_img=fwd['src_img'], src_pose=tgt_pose, tgt_pose=src_pose,
                     src_kpts=tgt_kpts, tgt_kpts=src_kpts))
  out = {k: np.stack([np.ascontiguousarray(d[k]) for d in dirs]) for k in dirs[0]}
  out['pair_index'] = np.full((len(dirs),), index, np.int32)
  return out


class _PairToExample(pygrain.RandomMapTransform):
  """grain transform: pair index -> example; in skip mode a bad pair becomes a marker the filter drops."""

  def __init__(self, split, hw, aug, both_directions, on_bad):
    self.split, self.hw, self.aug, self.both, self.on_bad = split, hw, aug, both_directions, on_bad
    self.counter = errors.SkipCounter(f'{split.name} examples (runtime)')

  def random_map(self, element, rng: np.random.Generator):
    try:
      return make_example(self.split, int(element), self.hw, self.aug, rng, self.both)
    except BadExampleError as e:
      errors.handle(e, self.on_bad, self.counter)
      return {'_bad': np.zeros((), np.bool_)}


class _DropBad(pygrain.FilterTransform):

  def filter(self, element) -> bool:
    return '_bad' not in element


class _FlattenDirections(pygrain.MapTransform):
  """[pairs, D, ...] -> [pairs * D, ...]."""

  def map(self, batch):
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def pairs_per_batch(global_batch: int, process_count: int, both_directions: bool) -> int:
  per_process, rem = divmod(global_batch, process_count)
  d = 2 if both_directions else 1
  if rem or per_process % d:
    raise ValueError(f'train.batch_size={global_batch} must be divisible by process_count * '
                     f'{d} (both_directions) = {process_count * d}')
  return per_process // d


def make_train_loader(data_cfg, split: Split, *, global_batch: int, seed: int, shard_index: int = 0,
                      shard_count: int = 1) -> pygrain.DataLoader:
  """Endless, shuffled, per-process-sharded training loader; its iterator state is checkpointable."""
  hw = (data_cfg.height, data_cfg.width)
  aug = Augment(data_cfg.scale_param, data_cfg.hflip_prob)
  sampler = pygrain.IndexSampler(
      num_records=len(split),
      shard_options=pygrain.ShardOptions(shard_index, shard_count, drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  ops = [_PairToExample(split, hw, aug, data_cfg.both_directions, data_cfg.on_bad_example)]
  if data_cfg.on_bad_example == 'skip':
    ops.append(_DropBad())
  ops += [pygrain.Batch(pairs_per_batch(global_batch, shard_count, data_cfg.both_directions), drop_remainder=True),
          _FlattenDirections()]
  return pygrain.DataLoader(data_source=pygrain.RangeDataSource(0, len(split), 1), sampler=sampler,
                            operations=ops, worker_count=data_cfg.worker_count,
                            worker_buffer_size=data_cfg.worker_buffer_size)


def iterate_eval(data_cfg, split: Split, batch_size: int, *, limit: int = -1, shard_index: int = 0,
                 shard_count: int = 1):
  """Deterministic test batches (no augmentation, first source), padded to `batch_size`.

  Yields dicts with the batch keys plus `valid` [B]. Pairs are taken in file order, `limit`
  first ones (-1 = all), and strided over processes so each process handles its own share.
  """
  hw = (data_cfg.height, data_cfg.width)
  n = len(split) if limit < 0 else min(limit, len(split))
  indices = list(range(n))[shard_index::shard_count]
  counter = errors.SkipCounter(f'{split.name} examples (eval)')
  for start in range(0, len(indices), batch_size):
    rows = []
    for i in indices[start:start + batch_size]:
      try:
        rows.append(make_example(split, i, hw, Augment(), None, both_directions=False))
      except BadExampleError as e:
        errors.handle(e, data_cfg.on_bad_example, counter)
    if not rows:
      continue
    valid = [True] * len(rows) + [False] * (batch_size - len(rows))
    rows += [rows[-1]] * (batch_size - len(rows))
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    batch['valid'] = np.asarray(valid)
    yield batch
  if counter.total:
    logging.warning(counter.summary())
