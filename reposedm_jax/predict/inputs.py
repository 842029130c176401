"""predict's inputs: a source photo with its keypoints, and target poses, all moved into the model's frame.

A pose argument is a pose file (data/pose_files.py: OpenPose JSON, PIDM .txt / pose-bank .npy, PATN CSV row)
or a photo, whose keypoints BlazePose finds (mediapipe in `.venv-pose`, metrics/mediapipe_judge.py; COCO-17 ->
OpenPose-18 with the neck at the shoulders' midpoint). `crop`:
  person  photos (and poses given with a frame of another aspect) are cropped around the person
          (data/person_frame.py); a pose file without a frame (OpenPose JSON) is fitted to the frame.
  resize  the image or frame is resized to the model frame as the dataset loaders do (a dataset image and
          its keypoint file then give exactly the batch sample mode builds).
`aspect_hw` (predict `--crop-aspect`) crops at that aspect and stretches into the model frame (PIDM's weights).
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reposedm_jax.data import person_frame, pose, pose_files
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.keypoints import MISSING, is_missing
from reposedm_jax.metrics import hrnet_judge, mediapipe_judge  # mediapipe only in its worker, on first use

PHOTO_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
CROPS = ('person', 'resize')


def is_photo(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in PHOTO_EXTENSIONS


def read_photo(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB, EXIF orientation applied (phone photos), alpha composited on white."""
  if not os.path.isfile(path):
    raise BadExampleError(path, 'image not found')
  try:
    with Image.open(path) as im:
      im = ImageOps.exif_transpose(im)
      if im.mode in ('RGBA', 'LA', 'P'):
        im = im.convert('RGBA')
        white = Image.new('RGBA', im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
      return np.asarray(im.convert('RGB'))
  except (UnidentifiedImageError, OSError) as e:
    raise BadExampleError(path, f'unreadable image ({e})') from None


class PhotoPoses:
  """Keypoints of the person in a photo: BlazePose (the worker starts on first use and is reused), or with
  `hrnet` = (module, variables, min_score, height) the project's HigherHRNet, run on the photo resized to
  `height` rows (the resolution the estimator was trained at) and mapped back to the photo's pixels."""

  def __init__(self, python: str = '', min_visibility: float = 0.5, hrnet=None):
    self.python, self.min_visibility, self._judge, self.hrnet = python, min_visibility, None, hrnet
    self.name = 'HigherHRNet' if hrnet is not None else 'BlazePose'

  def _coco(self, image: np.ndarray) -> np.ndarray:
    if self.hrnet is None:
      if self._judge is None:
        self._judge = mediapipe_judge.MediapipeJudge(self.python, self.min_visibility, min_height=256)
      return self._judge(image[None])[0]
    module, variables, min_score, height = self.hrnet
    if self._judge is None:
      self._judge = hrnet_judge.HrnetJudge(module, variables, min_score, 'predict', batch_size=1)
    h0, w0 = image.shape[:2]
    w = max(8, int(round(w0 * height / h0)))
    small = np.asarray(Image.fromarray(image).resize((w, height), Image.BICUBIC))
    coco = self._judge(small[None])[0]
    return np.where(coco == -1, -1.0, (coco + 0.5) * np.array([w0 / w, h0 / height]) - 0.5).astype(np.float32)

  def __call__(self, image: np.ndarray, where: str) -> np.ndarray:
    kpts = pose_files.coco17_to_openpose18(self._coco(image))
    if (~is_missing(kpts)).sum() < 4:
      raise BadExampleError(where, f'{self.name} found no person in this photo (fewer than 4 joints)', field='person')
    return kpts

  def close(self):
    if self._judge is not None and hasattr(self._judge, 'close'):  # the BlazePose worker process
      self._judge.close()


@dataclasses.dataclass
class View:
  """An image (or a pose alone) in the model frame."""
  kpts: np.ndarray  # [18, 2] model-frame keypoints, -1 missing
  image: np.ndarray | None = None  # uint8 [H, W, 3]
  origin: str = ''
  keypoints_from: str = ''
  window: object = None  # person_frame.Window of a person crop (None: resized)
  photo_hw: tuple = ()


def _frame_pixels(kpts, frame):
  """Keypoints of a pose file in the pixel frame of its image: (kpts, (H, W)) or (kpts, None)."""
  if frame == 'legacy256':  # PIDM's 256x256 file frame holds a 256x176 image between 40-px bars
    return pose.legacy_to_image(kpts, (256, 176)), (256, 176)
  return kpts, frame


def _to_model(kpts, frame_hw, out_hw, crop: str, keep_aspect_resize: bool = True, aspect_hw=None):
  if frame_hw is None:
    return person_frame.fit_window(kpts, out_hw, aspect_hw=aspect_hw).apply(kpts, out_hw)
  want = aspect_hw or out_hw
  same_aspect = abs(frame_hw[1] / frame_hw[0] - want[1] / want[0]) < 0.01
  if crop == 'resize' or (same_aspect and keep_aspect_resize):
    return pose.image_to_image(kpts, frame_hw, out_hw)
  return person_frame.photo_window(frame_hw, kpts, out_hw, aspect_hw=aspect_hw).apply(kpts, out_hw)


def source_view(photo: str, out_hw, *, crop: str = 'person', pose_spec: str = '', photo_poses=None,
                need_keypoints: bool = True, aspect_hw=None) -> View:
  """The source person in the model frame: the photo cropped (or resized) and its keypoints moved with it."""
  image = read_photo(photo)
  h, w = out_hw
  if pose_spec:
    kpts, frame = pose_files.read_pose_file(pose_spec)
    kpts, frame = _frame_pixels(kpts, frame)
    if frame is not None and frame != image.shape[:2]:  # the file's frame is a resized copy of the photo
      kpts = pose.image_to_image(kpts, frame, image.shape[:2])
    how = pose_spec
  elif photo_poses is not None:
    kpts, how = photo_poses(image, photo), photo_poses.name
  elif not need_keypoints and crop == 'resize':
    kpts, how = np.full((18, 2), MISSING, np.float32), 'none (not needed by this model)'
  else:
    raise BadExampleError(photo, 'its keypoints are needed (person crop or a B2/RePoseDM model): pass '
                          '--source-pose FILE or create the BlazePose venv with `make pose-venv`', field='source')
  if crop == 'resize':
    out = image if image.shape[:2] == (h, w) else np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    return View(pose.image_to_image(kpts, image.shape[:2], out_hw), out, photo, how, None, image.shape[:2])
  window = person_frame.photo_window(image.shape[:2], kpts, out_hw, aspect_hw=aspect_hw)
  return View(window.apply(kpts, out_hw), person_frame.crop_image(image, window, out_hw), photo, how, window,
              image.shape[:2])


def target_view(spec: str, out_hw, *, crop: str = 'person', photo_poses=None, pose_frame=None,
                aspect_hw=None, min_confidence: float = 0.1) -> View:
  """A target pose (file or photo) as model-frame keypoints; `pose_frame` (H, W) for a frameless JSON."""
  if is_photo(spec):
    if photo_poses is None:
      raise BadExampleError(spec, 'a photo as the pose needs BlazePose: run `make pose-venv`, or give a pose file')
    image = read_photo(spec)
    kpts = photo_poses(image, spec)
    return View(_to_model(kpts, image.shape[:2], out_hw, crop, keep_aspect_resize=False, aspect_hw=aspect_hw), None,
                spec, photo_poses.name)
  kpts, frame = pose_files.read_pose_file(spec, min_confidence)
  kpts, frame = _frame_pixels(kpts, frame)
  # --pose-frame: the size of a frameless JSON's image, or of a CSV that is not PATN's 256x176 (Market: 128x64).
  if pose_frame is not None and (frame is None or '.csv' in spec.lower()):
    frame = tuple(pose_frame)
  return View(_to_model(kpts, frame, out_hw, crop, aspect_hw=aspect_hw), None, spec, os.path.splitext(spec.split('.csv:')[0])[1] or spec)


def interpolate(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
  """n keypoint sets from a to b inclusive (linear); a joint missing at either end is missing throughout."""
  if n < 2:
    raise ValueError(f'--interpolate needs at least 2 frames, got {n}')
  gone = is_missing(a) | is_missing(b)
  out = []
  for t in np.linspace(0.0, 1.0, n):
    k = ((1 - t) * a + t * b).astype(np.float32)
    k[gone] = MISSING
    out.append(k)
  return out
