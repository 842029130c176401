"""A photo or a pose of any size and aspect -> the model's H x W frame, centred on the person (predict).

The window has the model's aspect. It spans the image's full height (DeepFashion and Market crops show the
whole person top to bottom; a person whose keypoints span less than half the photo's height is zoomed to,
the keypoints filling 70 % of the window) and is centred horizontally on the person's keypoints; where it sticks
out of the image (a portrait photo narrower than the model's aspect, a person near the edge) the image is
padded with its own border colour. A person wider than that window (arms spread in a landscape photo) widens
it, and the height follows. Keypoints move with exactly the same affine map, so `Window.apply` and the image
crop agree to the pixel (tested).

`aspect_hw` crops at another aspect than the frame's and stretches the crop into it: PIDM's released weights
were trained on 256x176 DeepFashion images stretched to 256x256 (predict `--crop-aspect 256x176`).

A pose given without its image size (OpenPose JSON) has no frame to crop: `fit_window` builds one around the
keypoints instead, the person's height filling `fill` of the model's height.
"""

import dataclasses

import numpy as np
from PIL import Image

from reposedm_jax.data.keypoints import MISSING, is_missing


@dataclasses.dataclass(frozen=True)
class Window:
  """Crop box (x0, y0, width, height) in source pixels, any part of it may lie outside the source."""
  x0: float
  y0: float
  w: float
  h: float

  def scale(self, out_hw) -> tuple[float, float]:
    """(sx, sy): equal unless the window's aspect differs from the frame's (PIDM's stretched 256x256)."""
    return out_hw[1] / self.w, out_hw[0] / self.h

  def apply(self, kpts, out_hw) -> np.ndarray:
    """Source-pixel keypoints -> keypoints of the resized crop (pixel centres at integers, as everywhere)."""
    kpts = np.asarray(kpts, np.float64)
    sx, sy = self.scale(out_hw)
    out = np.empty_like(kpts)
    # Pixel i of the crop covers source [x0 + i / s, x0 + (i + 1) / s): centres map by (x + .5 - x0) * s - .5.
    out[:, 0] = (kpts[:, 0] + 0.5 - self.x0) * sx - 0.5
    out[:, 1] = (kpts[:, 1] + 0.5 - self.y0) * sy - 0.5
    out[is_missing(kpts)] = MISSING
    return out.astype(np.float32)


def _person_box(kpts):
  present = ~is_missing(np.asarray(kpts))
  if present.sum() < 1:
    raise ValueError('no keypoint of the person is known: cannot centre the crop on them')
  pts = np.asarray(kpts, np.float64)[present]
  return pts.min(axis=0), pts.max(axis=0)


def photo_window(image_hw, kpts, out_hw, margin: float = 0.1, aspect_hw=None) -> Window:
  """The crop of an (H0, W0) photo: full height, model aspect (or `aspect_hw`'s), centred on the person."""
  h0, w0 = image_hw
  aspect = (aspect_hw or out_hw)[1] / (aspect_hw or out_hw)[0]
  (x_min, y_min), (x_max, y_max) = _person_box(kpts)
  h, cy = float(h0), h0 / 2
  if y_max - y_min < 0.5 * h0:  # a small person in a large photo: zoom to them, keypoints filling 70 %
    h, cy = (y_max - y_min + 1) / 0.7, (y_min + y_max + 1) / 2
  w = h * aspect
  need = (x_max - x_min) * (1 + 2 * margin)
  if need > w:  # the person is wider than a full-height window: widen it, grow the height with it
    w = need
    h = w / aspect
  cx = (x_min + x_max + 1) / 2
  x0 = cx - w / 2
  return Window(x0, cy - h / 2, w, h)


def fit_window(kpts, out_hw, fill: float = 0.85, aspect_hw=None) -> Window:
  """A window around keypoints with no image: the person's height (or width) fills `fill` of the frame."""
  (x_min, y_min), (x_max, y_max) = _person_box(kpts)
  aspect = (aspect_hw or out_hw)[1] / (aspect_hw or out_hw)[0]
  h = max((y_max - y_min + 1) / fill, (x_max - x_min + 1) / fill / aspect, 1.0)
  w = h * aspect
  return Window((x_min + x_max + 1) / 2 - w / 2, (y_min + y_max + 1) / 2 - h / 2, w, h)


def border_colour(image: np.ndarray) -> np.ndarray:
  """Median colour of the image's outermost pixels: the padding that continues its background."""
  edge = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
  return np.median(edge, axis=0).astype(np.uint8)


def crop_image(image: np.ndarray, window: Window, out_hw, resample=Image.BICUBIC, fill=None) -> np.ndarray:
  """uint8 [H0, W0, 3] -> uint8 [H, W, 3]: the window's pixels resized, padded outside the photo with `fill`
  (default: its border colour). Nearest `resample` (masks) skips the anti-aliasing reduction."""
  h, w = out_hw
  sx, sy = window.scale(out_hw)
  # Affine map output pixel -> source pixel (PIL's transform takes the inverse map, in corner coordinates).
  coeffs = (1 / sx, 0.0, window.x0, 0.0, 1 / sy, window.y0)
  fill = tuple(int(c) for c in (border_colour(image) if fill is None else fill))
  pil = Image.fromarray(image)
  # Downscaling by a large factor with one bicubic pass aliases: reduce by an integer factor first.
  factor = int(max(1, np.floor(1 / max(sx, sy) / 2))) if resample != Image.NEAREST else 1
  if factor > 1:
    pil = pil.reduce(factor)
    coeffs = (coeffs[0] / factor, 0.0, coeffs[2] / factor, 0.0, coeffs[4] / factor, coeffs[5] / factor)
  out = pil.transform((w, h), Image.AFFINE, coeffs, resample=resample, fillcolor=fill)
  return np.asarray(out)
