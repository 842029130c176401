"""The in-memory description of one split: pairs, keypoints and where the images live.

Readers for each on-disk convention (`deepfashion.py` for PIDM's layout, `patn.py` for the
PATN/GFLA CSVs) build a `Split`; the input pipeline only ever sees this class.
"""

import dataclasses

import numpy as np

from reposedm_jax.data.errors import SkipCounter


@dataclasses.dataclass(frozen=True)
class Pair:
  """One pairs-file record: a target and the candidate sources for it.

  `origin` is 'file:line' of the record, carried along so any later failure names it.
  """
  target: str
  sources: tuple[str, ...]
  origin: str


@dataclasses.dataclass
class Split:
  """A split ready for the pipeline.

  Attributes:
    name: 'train' or 'test'.
    pairs: validated pairs (bad ones already removed in skip mode).
    keypoints: image key -> float32 [18, 2] (x, y) OpenPose keypoints in `keypoint_frame`, -1 missing.
    images: an image store with `read(key) -> uint8 [h, w, 3]` and `exists(key)`.
    keypoint_frame: 'legacy256' (PIDM's 256x256 frame with 40-px bars) or 'image'
      (pixel frame of size `ann_hw`).
    ann_hw: (H, W) of the 'image' keypoint frame.
    skipped: what start-up validation skipped.
  """
  name: str
  pairs: list[Pair]
  keypoints: dict[str, np.ndarray]
  images: object
  keypoint_frame: str
  ann_hw: tuple[int, int]
  skipped: SkipCounter

  def __len__(self) -> int:
    return len(self.pairs)

  def image_keys(self) -> list[str]:
    """Every distinct image the pairs refer to, in first-seen order."""
    seen = {}
    for p in self.pairs:
      for k in (p.target, *p.sources):
        seen.setdefault(k, None)
    return list(seen)


def first_out_of_frame(kpts: np.ndarray, frame_hw: tuple[int, int]) -> int | None:
  """Index of the first present keypoint outside [0, W] x [0, H], or None if all are inside."""
  h, w = frame_hw
  present = ~((kpts[:, 0] == -1) | (kpts[:, 1] == -1))
  bad = present & ((kpts[:, 0] < 0) | (kpts[:, 0] > w) | (kpts[:, 1] < 0) | (kpts[:, 1] > h))
  idx = np.flatnonzero(bad)
  return int(idx[0]) if idx.size else None
