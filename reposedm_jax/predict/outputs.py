"""predict's outputs (side-by-side PNGs, sequence GIF / MP4) and garment-editing masks."""

import logging
import os

import numpy as np
from PIL import Image

from reposedm_jax import visualize
from reposedm_jax.data import person_frame, pose
from reposedm_jax.data.errors import BadExampleError

# Keypoint-derived editing regions (OpenPose-18 limb pairs): upper body = neck, shoulders, arms and the torso
# to the hips; lower body = hips, legs. Radius in units of the image height.
REGIONS = {
    'upper': ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (1, 11), (2, 8), (5, 11), (8, 11)),
    'lower': ((8, 11), (8, 9), (9, 10), (11, 12), (12, 13)),
}
REGION_RADIUS = 0.07


def side_by_side(source_u8, tgt_kpts, result_u8, titles=('source', 'target pose', 'generated')) -> np.ndarray:
  """One row: source | target pose | result, upscaled to a legible size (visualize's rules)."""
  h, w = source_u8.shape[:2]
  f = visualize.upscale_factor(h)
  cols = [visualize.upscale(source_u8[None], f), visualize.skeletons_uint8(np.asarray(tgt_kpts)[None], h, w, f),
          visualize.upscale(result_u8[None], f)]
  return visualize.tile_columns(cols, titles=list(titles))


def write_gif(path: str, frames_u8, fps: float) -> str:
  images = [Image.fromarray(f) for f in frames_u8]
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
  return path


def write_mp4(path: str, frames_u8, fps: float) -> str | None:
  """H.264 MP4 through imageio's ffmpeg (imageio-ffmpeg ships the binary); None when it is not installed."""
  try:
    import imageio.v2 as imageio
  except ImportError:
    return None
  frames = [np.asarray(f) for f in frames_u8]
  h, w = frames[0].shape[:2]
  # yuv420p needs even sides: pad with the last row / column rather than rescale.
  frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge') for f in frames]
  try:
    with imageio.get_writer(path, fps=fps, codec='libx264', pixelformat='yuv420p', macro_block_size=1) as writer:
      for f in frames:
        writer.append_data(f)
  except Exception as e:  # noqa: BLE001 -- a missing or broken ffmpeg: the GIF and PNGs are still there
    logging.warning('MP4 not written (%s: %s); the GIF and the frames are', type(e).__name__, e)
    return None
  return path


def region_mask(kpts, hw, region: str) -> np.ndarray:
  """[H, W, 1] float {0, 1} mask of an upper- / lower-body region drawn from model-frame keypoints."""
  if region not in REGIONS:
    raise ValueError(f'mask region must be a PNG file or one of {sorted(REGIONS)}, got {region!r}')
  h, w = hw
  radius = max(1, int(round(REGION_RADIUS * h)))
  mask = pose.limb_mask(kpts, h, w, limbs=REGIONS[region], radius=radius)
  if not mask.any():
    raise ValueError(f'the reference person has none of the joints of the {region} body region')
  return mask


def mask_from_png(path: str, photo_hw, window: 'person_frame.Window | None', out_hw) -> np.ndarray:
  """A user mask (PIDM's binary RGB PNG; white = the region to regenerate) -> [H, W, 1] in the model frame.

  The mask is taken to cover the reference photo (resized to it if its size differs) and goes through the same
  crop as the photo, nearest-neighbour."""
  if not os.path.isfile(path):
    raise BadExampleError(path, 'mask file not found')
  try:
    with Image.open(path) as im:
      m = im.convert('L')
  except OSError as e:
    raise BadExampleError(path, f'unreadable mask ({e})') from None
  if m.size != (photo_hw[1], photo_hw[0]):
    m = m.resize((photo_hw[1], photo_hw[0]), Image.NEAREST)
  arr = np.asarray(m)
  if window is None:
    arr = np.asarray(Image.fromarray(arr).resize((out_hw[1], out_hw[0]), Image.NEAREST))
  else:
    arr = person_frame.crop_image(np.repeat(arr[..., None], 3, -1), window, out_hw, resample=Image.NEAREST,
                                  fill=(0, 0, 0))[..., 0]
  mask = (arr > 127).astype(np.float32)[..., None]
  if not mask.any():
    raise BadExampleError(path, 'the mask selects no pixel of the reference person (white = edit)', field='mask')
  return mask
