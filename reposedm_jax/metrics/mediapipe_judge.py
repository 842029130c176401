"""BlazePose (mediapipe 0.10.14) as the independent pose judge of generated images.

Independent of this project's models (trained on other data by other people), so it is the fair judge of
whether a generated person stands in the target pose. `mp.solutions.pose.Pose(static_image_mode=True,
model_complexity=1)`: the only complexity whose models ship inside the 0.10.14 wheel
(`modules/pose_detection/pose_detection.tflite`, `modules/pose_landmark/pose_landmark_full.tflite`);
0 and 2 try to download and fail offline. Single person per image.

Where it runs. mediapipe 0.10.14 needs protobuf<5 and the core stack protobuf 7 (checked: with protobuf 7
`Pose()` fails on a removed descriptor attribute), so it cannot live in .venv. `requirements-pose.txt`
builds a separate venv (default `.venv-pose/`, or `config.eval.mediapipe_python`), and mediapipe_worker.py, run
by that interpreter as a script (`python mediapipe_worker.py --worker H`), is the worker: it imports only
numpy, OpenCV and mediapipe, reads image batches from stdin and writes landmarks to stdout, so the
numbers cross the process boundary as raw arrays, never as pickles. The worker's code is mediapipe_worker.py. If `mediapipe` imports and works in
the current interpreter, the judge runs in-process instead.

Output convention. BlazePose's 33 landmarks -> COCO-17 by `BLAZEPOSE_TO_COCO` (both use the person's own
left/right). Landmarks are normalised to the image, so a batch upscaled for the detector (bicubic, integer
factor, until H >= min_height: 128x64 Market people are too small for it) maps back exactly. Pixel centres
sit at integers: x_px = x_norm * W - 0.5. A joint is -1 (not detected) when no person is found, when its
visibility is below `min_visibility`, or when it falls outside the image.
"""

import os
import subprocess
import tempfile

import numpy as np

from reposedm_jax.metrics import mediapipe_worker
from reposedm_jax.metrics.mediapipe_worker import detect_landmarks, new_detector, recv_array, send_array
from reposedm_jax.metrics.pose_accuracy import JudgeUnavailable, images_to_uint8

# COCO-17 joint k = BlazePose landmark BLAZEPOSE_TO_COCO[k] (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles; BlazePose 2 / 5 are the eye centres, 1/3/4/6 the inner/outer corners).
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
VENV_HINT = 'python3.11 -m venv .venv-pose && .venv-pose/bin/pip install --no-deps -r requirements-pose.txt'
DEFAULT_VENV_PYTHON = '.venv-pose/bin/python'


# ---------------------------------------------------------------- the judge (main process)
class _Worker:
  """The worker process in the pose venv: `submit` a batch, later `result` (one request in flight)."""

  def __init__(self, python: str, min_height: int):
    self._stderr = tempfile.TemporaryFile()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    self._proc = subprocess.Popen([python, os.path.abspath(mediapipe_worker.__file__), '--worker', str(min_height)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
    self._response('starting')

  def _response(self, what: str) -> np.ndarray:
    try:
      arr = recv_array(self._proc.stdout)
      if arr is None:
        raise EOFError('worker exited')
      return arr
    except (EOFError, ValueError) as e:
      self._stderr.seek(0)
      tail = self._stderr.read().decode(errors='replace').strip().splitlines()[-5:]
      raise RuntimeError(f'mediapipe worker failed while {what} ({e}): ' + ' | '.join(tail)) from None

  def submit(self, images: np.ndarray) -> None:
    send_array(self._proc.stdin, images)  # the worker reads whole requests at once, so this returns soon

  def result(self) -> np.ndarray:
    return self._response('detecting')

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait(timeout=30)


class MediapipeJudge:
  """COCO-17 keypoints of the person in each image, by BlazePose (see the module docstring).

  Args:
    python: interpreter of the pose venv; '' = in-process when mediapipe works here, else
      DEFAULT_VENV_PYTHON (relative to the repository root).
    min_visibility: BlazePose visibility below which a joint counts as not detected.
    min_height: images shorter than this are upscaled by an integer factor first.
  """
  name = 'mediapipe'

  def __init__(self, python: str = '', min_visibility: float = 0.5, min_height: int = 256):
    self.min_visibility, self.min_height = float(min_visibility), int(min_height)
    self.description = (f'mediapipe 0.10.14 BlazePose full (33 -> COCO-17), visibility >= {min_visibility:g}, '
                        f'images upscaled to >= {min_height} px high')
    self._local = self._worker = self._pending = self._local_result = None
    problems = []
    if not python:
      try:
        self._local = new_detector()
      except Exception as e:  # pylint: disable=broad-except  # any failure here means: use the venv
        problems.append(f'in-process mediapipe unusable ({type(e).__name__}: {e})')
      repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      python = os.path.join(repo, DEFAULT_VENV_PYTHON)
    if self._local is None:
      if not os.path.isfile(python):
        problems.append(f'no pose venv interpreter at {python}')
        raise _unavailable('; '.join(problems) + f'. Create it with: {VENV_HINT}')
      try:
        self._worker = _Worker(python, self.min_height)
      except (RuntimeError, OSError) as e:
        raise _unavailable(f'{e}. Re-create the pose venv with: {VENV_HINT}') from None

  def submit(self, images) -> None:
    """Starts detection on [B, H, W, 3] images (uint8 or [-1, 1]); `collect` returns the keypoints.

    With the worker process, detection runs while the caller does other work; one batch at a time.
    """
    if self._pending is not None:
      raise RuntimeError('mediapipe judge: collect() the previous batch before submitting another')
    images = images_to_uint8(images)
    self._pending = images.shape[1:3]
    if self._local is not None:
      self._local_result = detect_landmarks(self._local, images, self.min_height)
    else:
      self._worker.submit(images)

  def collect(self) -> np.ndarray:
    """COCO-17 (x, y) [B, 17, 2] of the submitted batch, -1 where not detected."""
    hw, self._pending = self._pending, None
    landmarks = self._local_result if self._local is not None else self._worker.result()
    return landmarks_to_coco(landmarks, hw, self.min_visibility)

  def __call__(self, images) -> np.ndarray:
    self.submit(images)
    return self.collect()

  def close(self) -> None:
    if self._worker is not None:
      self._worker.close()


def landmarks_to_coco(landmarks: np.ndarray, hw, min_visibility: float) -> np.ndarray:
  """[B, 33, 3] normalised (x, y, visibility) -> COCO-17 pixel (x, y) [B, 17, 2], -1 where not detected."""
  h, w = hw
  lm = np.asarray(landmarks, np.float32)[:, list(BLAZEPOSE_TO_COCO)]
  xy = np.stack([lm[..., 0] * w - 0.5, lm[..., 1] * h - 0.5], axis=-1)
  inside = (xy[..., 0] >= -0.5) & (xy[..., 0] <= w - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] <= h - 0.5)
  found = (lm[..., 2] >= min_visibility) & (lm[..., 0] != -1) & inside
  return np.where(found[..., None], xy, -1.0).astype(np.float32)


def _unavailable(msg: str):
  return JudgeUnavailable(f'mediapipe judge: {msg}')


def make_judge(config, workdir: str) -> MediapipeJudge:  # pylint: disable=unused-argument
  """Registry factory (pose_accuracy.JUDGE_FACTORIES['mediapipe'])."""
  e = config.eval
  return MediapipeJudge(e.mediapipe_python, e.mediapipe_min_visibility, e.mediapipe_min_height)
