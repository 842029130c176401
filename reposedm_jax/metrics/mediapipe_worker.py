"""The BlazePose worker of mediapipe_judge.py: detection where mediapipe is, and the array framing of both ends.

Run by the pose venv's interpreter as a script (`python mediapipe_worker.py --worker MIN_HEIGHT`), it must
import nothing but numpy, OpenCV and mediapipe (the pose venv has no jax and no access to the package).
It reads uint8 image batches from stdin and writes float32 [B, 33, 3] landmarks (x_norm, y_norm,
visibility) to stdout, each as a 4-byte header length, a JSON header (shape, dtype) and raw bytes.
"""

import json
import os
import sys

import numpy as np

NUM_LANDMARKS = 33
_DTYPES = {'uint8': np.uint8, 'float32': np.float32}


# ---------------------------------------------------------------- framing (both processes)
def _read_exact(f, n: int) -> bytes:
  buf = bytearray()
  while len(buf) < n:
    chunk = f.read(n - len(buf))
    if not chunk:
      raise EOFError(f'stream closed after {len(buf)} of {n} bytes')
    buf += chunk
  return bytes(buf)


def send_array(f, arr: np.ndarray) -> None:
  """Writes a 4-byte header length, a JSON header (shape, dtype) and the raw C-order bytes."""
  arr = np.ascontiguousarray(arr)
  header = json.dumps({'shape': list(arr.shape), 'dtype': arr.dtype.name}).encode()
  f.write(len(header).to_bytes(4, 'little') + header)
  f.write(arr.tobytes())
  f.flush()


def recv_array(f):
  """Inverse of send_array; None on a clean end of stream. Only uint8 / float32 are accepted."""
  first = f.read(1)
  if not first:
    return None
  header = json.loads(_read_exact(f, int.from_bytes(first + _read_exact(f, 3), 'little')))
  if header.get('dtype') not in _DTYPES:
    raise ValueError(f'unexpected array dtype {header.get("dtype")!r} in the judge stream')
  dtype, shape = np.dtype(_DTYPES[header['dtype']]), tuple(int(s) for s in header['shape'])
  data = _read_exact(f, int(np.prod(shape)) * dtype.itemsize)
  return np.frombuffer(data, dtype).reshape(shape)


# ---------------------------------------------------------------- detection (runs where mediapipe is)
def new_detector():
  import mediapipe as mp  # pylint: disable=import-outside-toplevel
  return mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, min_detection_confidence=0.5)


def detect_landmarks(detector, images: np.ndarray, min_height: int) -> np.ndarray:
  """uint8 [B, H, W, 3] RGB -> float32 [B, 33, 3] (x_norm, y_norm, visibility); -1, -1, 0 if nobody found."""
  import cv2  # pylint: disable=import-outside-toplevel
  out = np.full((len(images), NUM_LANDMARKS, 3), -1.0, np.float32)
  out[..., 2] = 0.0
  h, w = images.shape[1:3]
  factor = max(1, -(-min_height // h))
  for i, img in enumerate(images):
    if factor > 1:
      img = cv2.resize(img, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
    result = detector.process(np.ascontiguousarray(img))
    if result.pose_landmarks is not None:
      out[i] = [(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark]
  return out


def _worker_main(min_height: int) -> None:
  # The protocol owns the original stdout; anything a library prints goes to stderr instead.
  proto_out = os.fdopen(os.dup(1), 'wb')
  os.dup2(2, 1)
  proto_in = os.fdopen(os.dup(0), 'rb')
  detector = new_detector()
  send_array(proto_out, np.zeros((1,), np.uint8))  # ready
  while (images := recv_array(proto_in)) is not None:
    send_array(proto_out, detect_landmarks(detector, images, min_height))


if __name__ == '__main__' and sys.argv[1:2] == ['--worker']:
  _worker_main(int(sys.argv[2]))
