"""Re-ID training batches: P identities x K images, flips, pad-and-crop and random erasing (the "bag of tricks").

The batch of step s is a pure function of (seed, s): a resumed run draws exactly the batches a straight run
would, with no iterator state to checkpoint.
"""

import numpy as np

from reposedm_jax.reid.market import Image, load_image


def relabel(images: list[Image]) -> tuple[np.ndarray, dict[int, int]]:
  """Training labels 0..N-1 in sorted person-id order; junk (-1) and distractors (0) have no place in training."""
  bad = sorted({im.pid for im in images if im.pid <= 0})
  if bad:
    raise ValueError(f'training images include person ids {bad} (junk / distractors): not identities to learn')
  ids = sorted({im.pid for im in images})
  table = {pid: i for i, pid in enumerate(ids)}
  return np.asarray([table[im.pid] for im in images], np.int32), table


def pk_indices(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> np.ndarray:
  """P distinct identities (with replacement only when there are fewer than P), K images of each (with
  replacement when an identity has fewer than K)."""
  ids = np.unique(labels)
  chosen = rng.choice(ids, size=p, replace=len(ids) < p)
  out = []
  for pid in chosen:
    pool = np.flatnonzero(labels == pid)
    out.append(rng.choice(pool, size=k, replace=len(pool) < k))
  return np.concatenate(out)


def random_erase(img: np.ndarray, rng: np.random.Generator, prob: float, area=(0.02, 0.4), ratio=0.3) -> np.ndarray:
  """Zhong et al.'s random erasing: a rectangle of random area and aspect filled with random values in [-1, 1]."""
  if rng.random() >= prob:
    return img
  h, w, _ = img.shape
  for _ in range(100):
    target = rng.uniform(*area) * h * w
    aspect = np.exp(rng.uniform(np.log(ratio), np.log(1 / ratio)))
    eh, ew = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < eh < h and 0 < ew < w:
      y, x = rng.integers(0, h - eh), rng.integers(0, w - ew)
      img = img.copy()
      img[y:y + eh, x:x + ew] = rng.uniform(-1, 1, (eh, ew, 3))
      return img
  return img


def augment(img: np.ndarray, rng: np.random.Generator, rcfg) -> np.ndarray:
  if rng.random() < rcfg.flip_prob:
    img = img[:, ::-1]
  if rcfg.pad > 0:  # pad with zeros (mid-grey) and crop back at a random offset
    h, w, _ = img.shape
    padded = np.pad(img, ((rcfg.pad, rcfg.pad), (rcfg.pad, rcfg.pad), (0, 0)))
    y, x = rng.integers(0, 2 * rcfg.pad + 1, 2)
    img = padded[y:y + h, x:x + w]
  return random_erase(img, rng, rcfg.erase_prob)


def train_batch(images: list[Image], labels: np.ndarray, rcfg, seed: int, step: int) -> dict:
  """{'images' [P*K, H, W, 3] in [-1, 1], 'labels' [P*K]} of training step `step`."""
  rng = np.random.default_rng([seed, step, 0x1D])
  idx = pk_indices(labels, rcfg.ids_per_batch, rcfg.images_per_id, rng)
  hw = (rcfg.height, rcfg.width)
  batch = np.stack([augment(load_image(images[i].path, hw), rng, rcfg) for i in idx]).astype(np.float32)
  return {'images': batch, 'labels': labels[idx]}
