"""Keypoint conventions shared by the generator, the loaders and the pose renderings.

OpenPose COCO-18 joint order (the one in DeepFashion's pose/*.txt and the PATN CSVs):
0 nose, 1 neck, 2 RShoulder, 3 RElbow, 4 RWrist, 5 LShoulder, 6 LElbow, 7 LWrist, 8 RHip,
9 RKnee, 10 RAnkle, 11 LHip, 12 LKnee, 13 LAnkle, 14 REye, 15 LEye, 16 REar, 17 LEar.
Missing keypoints are (-1, -1) everywhere in this project (x == -1 or y == -1 means missing).
"""

import numpy as np

NUM_OPENPOSE = 18
NUM_COCO = 17
MISSING = -1.0

OPENPOSE_NAMES = (
    'nose', 'neck', 'r_shoulder', 'r_elbow', 'r_wrist', 'l_shoulder', 'l_elbow', 'l_wrist',
    'r_hip', 'r_knee', 'r_ankle', 'l_hip', 'l_knee', 'l_ankle', 'r_eye', 'l_eye', 'r_ear', 'l_ear')

# PIDM/OpenPose limbSeq, converted from 1-based to 0-based. PIDM draws only the first 17
# (the two shoulder-ear pairs are never drawn).
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
NUM_DRAWN_LIMBS = 17

# PIDM's colour list; entries are BGR (the canvas is converted BGR->RGB at the end).
OPENPOSE_COLORS_BGR = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))

# coco[k] = openpose[OPENPOSE_TO_COCO[k]]; the neck is dropped.
OPENPOSE_TO_COCO = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)

# Left/right partner of each OpenPose joint, for relabelling after a horizontal flip.
OPENPOSE_FLIP_PERM = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)


def is_missing(kpts: np.ndarray) -> np.ndarray:
  """[..., 2] keypoints -> [...] bool, True where x or y is the -1 sentinel."""
  return (kpts[..., 0] == MISSING) | (kpts[..., 1] == MISSING)


def openpose_to_coco(kpts):
  """[..., 18, 2] OpenPose keypoints -> [..., 17, 2] COCO keypoints (missing stays -1).

  numpy in, numpy out; a jax array (also under jit) stays a jax array.
  """
  arr = kpts if hasattr(kpts, 'ndim') else np.asarray(kpts)
  return arr[..., np.asarray(OPENPOSE_TO_COCO), :]
