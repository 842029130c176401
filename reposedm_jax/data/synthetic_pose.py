"""Kinematic pose model of the synthetic benchmark's people: views, joint angles, skeleton, keypoints.

The body is a pseudo-3D stick figure in head units (u): joints are placed in a body frame
(x = the person's left, y = down, z = the way the person faces), the upper body leans about the
hip centre, the head turns about the neck, and the whole figure is turned by a view yaw (0 front,
90 profile facing image right, 180 back) before `synthetic_draw` projects it orthographically. The
face normals give which face keypoints a detector could see, and the drawn torso/head outlines give
which elbows, wrists, knees and ankles are hidden behind the body.
"""

import dataclasses
import math
import typing

import cv2
import numpy as np

from reposedm_jax.data import keypoints as kpl

if typing.TYPE_CHECKING:
  from reposedm_jax.data.synthetic_appearance import Appearance

# DeepFashion view suffixes, in the order an identity's images are generated.
VIEWS = ((1, 'front'), (2, 'side'), (3, 'back'), (4, 'full'), (7, 'additional'))

# Proportions in head units; a standing person measures about 8.1 u from hair to soles.
_STANDING_HEIGHT = 8.1
_HEAD_RX, _HEAD_RY, _HEAD_RZ = 0.40, 0.52, 0.45
_HEAD_ABOVE_NECK = 0.85
_TORSO_LEN = 2.75
_TORSO_DEPTH = 0.95
_UPPER_ARM, _FOREARM, _HAND = 1.45, 1.30, 0.30
_THIGH, _SHIN, _FOOT = 1.95, 1.85, 0.55


# ----------------------------------------------------------------------------- pose families

def _u(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def _sign(rng):
  return 1.0 if rng.random() < 0.5 else -1.0


def _arm_rest(rng):
  return (_u(rng, 4, 18), _u(rng, -8, 12), _u(rng, 0, 25), (0.0, 0.0, 1.0))


def _leg_rest(rng):
  return (_u(rng, 2, 8), _u(rng, -6, 6), _u(rng, 0, 8))


def _one_or_both(rng, special, rest):
  """Applies `special` to both arms or to one at random, the other at rest."""
  which = rng.integers(3)
  return tuple(special(rng) if which in (0, k + 1) else rest(rng) for k in range(2))


def _pose_family(rng, family):
  """Returns (arms, legs) for a named family; an arm is (abduction, flexion, elbow, bend direction)
  and a leg (abduction, flexion, knee), angles in degrees. Bend x is measured outward."""
  arms = (_arm_rest(rng), _arm_rest(rng))
  legs = (_leg_rest(rng), _leg_rest(rng))
  if family == 'walk':
    ph, amp, step = _sign(rng), _u(rng, 15, 35), _u(rng, 12, 28)
    arms = tuple((_u(rng, 4, 12), s * ph * amp, _u(rng, 10, 40), (0.0, 0.0, 1.0)) for s in (1, -1))
    legs = tuple((_u(rng, 2, 6), -s * ph * step, _u(rng, 15, 35) if -s * ph < 0 else _u(rng, 0, 10))
                 for s in (1, -1))
  elif family == 'raised':
    arms = _one_or_both(rng, lambda r: (_u(r, 115, 170), _u(r, -15, 25), _u(r, 0, 70), (-1.0, -0.3, 0.3)),
                        _arm_rest)
  elif family == 'crossed':
    arms = ((_u(rng, 8, 22), _u(rng, 15, 35), _u(rng, 95, 125), (-1.0, 0.0, 0.5)),
            (_u(rng, 8, 22), _u(rng, 20, 40), _u(rng, 95, 125), (-1.0, -0.1, 0.5)))
  elif family == 'hips':
    arms = _one_or_both(rng, lambda r: (_u(r, 35, 55), _u(r, -20, -5), _u(r, 80, 110), (-1.0, 0.4, -0.3)),
                        _arm_rest)
  elif family == 'sit':
    legs = tuple((_u(rng, 5, 18), _u(rng, 55, 90), _u(rng, 60, 100)) for _ in range(2))
    arms = tuple((_u(rng, 5, 15), _u(rng, 20, 50), _u(rng, 20, 60), (0.0, 0.0, 1.0)) for _ in range(2))
  elif family == 'out':
    arms = tuple((_u(rng, 65, 100), _u(rng, -10, 30), _u(rng, 0, 80), (0.0, -1.0, 0.2)) for _ in range(2))
  elif family == 'point':
    arms = _one_or_both(rng, lambda r: (_u(r, 0, 25), _u(r, 60, 95), _u(r, 0, 20), (0.0, -1.0, 0.0)),
                        _arm_rest)
  elif family == 'behind':
    arms = tuple((_u(rng, 5, 15), _u(rng, -35, -15), _u(rng, 70, 110), (-1.0, 0.0, -0.6)) for _ in range(2))
  elif family == 'head':
    arms = _one_or_both(rng, lambda r: (_u(r, 110, 150), _u(r, 0, 20), _u(r, 110, 150), (-1.0, -0.5, 0.0)),
                        _arm_rest)
  elif family == 'lunge':
    front = (_u(rng, 3, 10), _u(rng, 45, 75), _u(rng, 50, 90))
    back = (_u(rng, 3, 10), _u(rng, -25, -10), _u(rng, 20, 60))
    legs = (front, back) if rng.random() < 0.5 else (back, front)
  elif family == 'wide':
    legs = tuple((_u(rng, 15, 28), _u(rng, -5, 5), _u(rng, 0, 10)) for _ in range(2))
  return arms, legs


_FAMILIES = ('stand', 'walk', 'raised', 'crossed', 'hips', 'sit', 'out', 'point', 'behind', 'head', 'lunge',
             'wide')
_FAMILY_WEIGHTS = {
    'front': (0.16, 0.14, 0.1, 0.12, 0.1, 0.06, 0.06, 0.04, 0.06, 0.06, 0.04, 0.06),
    'side': (0.16, 0.24, 0.08, 0.1, 0.04, 0.1, 0.0, 0.1, 0.06, 0.04, 0.08, 0.0),
    'back': (0.2, 0.16, 0.12, 0.0, 0.14, 0.0, 0.08, 0.0, 0.14, 0.1, 0.0, 0.06),
    'full': (0.04, 0.14, 0.14, 0.1, 0.08, 0.1, 0.1, 0.08, 0.04, 0.08, 0.06, 0.04),
}

# difficulty='hard': every view draws its articulation independently among the articulated families
# (no plain standing), so two views of one person rarely share a limb configuration.
_HARD_WEIGHTS = {
    'front': (0.0, 0.1, 0.14, 0.1, 0.1, 0.08, 0.1, 0.08, 0.06, 0.08, 0.08, 0.08),
    'side': (0.0, 0.2, 0.14, 0.1, 0.04, 0.12, 0.0, 0.14, 0.06, 0.06, 0.14, 0.0),
    'back': (0.0, 0.14, 0.18, 0.0, 0.14, 0.0, 0.14, 0.0, 0.14, 0.14, 0.0, 0.12),
    'full': (0.0, 0.12, 0.14, 0.1, 0.08, 0.1, 0.12, 0.08, 0.06, 0.08, 0.06, 0.06),
}
DIFFICULTIES = ('standard', 'hard')

# Cumulative weights: one uniform draw picks the family (rng.choice is slow on the hot path).
_FAMILY_CDF = {'standard': {k: np.cumsum(v) / np.sum(v) for k, v in _FAMILY_WEIGHTS.items()},
               'hard': {k: np.cumsum(v) / np.sum(v) for k, v in _HARD_WEIGHTS.items()}}


def _view_yaw(rng, view):
  """Body yaw in degrees for a named view, and which way it roughly faces ('front'|'side'|'back')."""
  if view in ('front', 'full'):
    return _u(rng, -12, 12), 'front'
  if view == 'back':
    return 180 + _u(rng, -12, 12), 'back'
  if view == 'side':
    return _sign(rng) * _u(rng, 80, 100), 'side'
  # 'additional': a three-quarter view from the front or the back, or a profile.
  r = rng.random()
  if r < 0.5:
    return _sign(rng) * _u(rng, 30, 55), 'front'
  if r < 0.7:
    return _sign(rng) * _u(rng, 125, 150), 'back'
  return _sign(rng) * _u(rng, 80, 100), 'side'


# ----------------------------------------------------------------------------- geometry

def _rot_roll(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _rot_pitch(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[1.0, 0, 0], [0, c, s], [0, -s, c]])


def _rot_yaw(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _limb_dir(abd, flex, side):
  a, f = math.radians(abd), math.radians(flex)
  return np.array([side * math.sin(a) * math.cos(f), math.cos(a) * math.cos(f), math.sin(f)])


def _bend(d, pref, angle):
  """Rotates unit vector d by `angle` degrees towards the preferred direction pref."""
  p = pref - np.dot(pref, d) * d
  n = np.linalg.norm(p)
  if n < 1e-6:  # pref parallel to d: bend forward, or up if d itself points forward
    p = np.array([0.0, 0.0, 1.0]) - d[2] * d
    n = np.linalg.norm(p)
    if n < 1e-6:
      p, n = np.array([0.0, -1.0, 0.0]), 1.0
  a = math.radians(angle)
  return math.cos(a) * d + math.sin(a) * (p / n)


# ----------------------------------------------------------------------------- the posed figure

# Points on the head (u, head frame: x = person's left, y = down, z = facing): face keypoints, the
# mouth, a hair cap, the back of the head, a bun and the top and bottom of a long-hair panel.
_HEAD_POINTS = {
    'hc': (0, 0, 0), 'nose': (0, 0.16, _HEAD_RZ), 'reye': (-0.17, 0.0, 0.38), 'leye': (0.17, 0.0, 0.38),
    'rear': (-0.41, 0.02, 0.0), 'lear': (0.41, 0.02, 0.0), 'mouth': (0, 0.3, 0.36), 'cap': (0, -0.34, -0.08),
    'back': (0, -0.06, -0.3), 'bun': (0, -0.42, -0.32), 'panel0': (0, 0.0, -0.3), 'panel1': (0, 1.25, -0.38)}
# (point, OpenPose index, outward normal, visible when the normal's z towards the camera exceeds this).
# Ears are seen from further round than eyes: OpenPose finds them in back views.
_FACE_KEYPOINTS = (('nose', 0, (0, 0, 1), -0.2), ('reye', 14, (-0.38, 0, 0.92), -0.2),
                   ('leye', 15, (0.38, 0, 0.92), -0.2), ('rear', 16, (-1, 0, 0), -0.3),
                   ('lear', 17, (1, 0, 0), -0.3))
_BODY_KEYPOINTS = {2: 'rsho', 3: 'relb', 4: 'rwri', 5: 'lsho', 6: 'lelb', 7: 'lwri', 8: 'rhip', 9: 'rkne',
                   10: 'rank', 11: 'lhip', 12: 'lkne', 13: 'lank'}
# Limb joints that the body's core (torso, pelvis, head) can hide; shoulders, hips and the neck are
# always reported, as OpenPose places them even when the far one is covered.
_OCCLUDABLE = (3, 4, 6, 7, 9, 10, 12, 13)


@dataclasses.dataclass(frozen=True)
class _Pose:
  family: str
  arms: tuple  # (right, left), each (abduction, flexion, elbow, bend direction), degrees
  legs: tuple  # (right, left), each (abduction, flexion, knee), degrees
  lean: np.ndarray  # 3x3 rotation of the upper body about the hip centre
  head: np.ndarray  # 3x3 rotation of the head about the neck
  yaw: float  # view yaw of the body, degrees
  head_yaw: float  # head turn relative to the body, degrees
  head_world: np.ndarray  # 3x3: head frame -> camera frame (yaw @ lean @ head)


def _sample_pose(rng, view, difficulty: str = 'standard') -> _Pose:
  yaw, face_kind = _view_yaw(rng, view)
  cdf = _FAMILY_CDF[difficulty]['full' if view == 'full' else face_kind]
  family = _FAMILIES[min(int(np.searchsorted(cdf, rng.random(), side='right')), len(_FAMILIES) - 1)]
  arms, legs = _pose_family(rng, family)
  lean = _rot_roll(math.radians(_u(rng, -7, 7))) @ _rot_pitch(math.radians(_u(rng, -4, 8)))
  head_yaw = _u(rng, -15, 15) if face_kind == 'back' else _u(rng, -25, 25)
  head = (_rot_yaw(math.radians(head_yaw)) @ _rot_pitch(math.radians(_u(rng, -10, 10)))
          @ _rot_roll(math.radians(_u(rng, -12, 12))))
  return _Pose(family, arms, legs, lean, head, yaw, head_yaw, _rot_yaw(math.radians(yaw)) @ lean @ head)


def _corners(half_x, y, half_z):
  """The four corners of a horizontal slab cross-section at height y."""
  return [(sx * half_x, y, sz * half_z) for sx in (-1, 1) for sz in (-1, 1)]


def _skeleton(app: 'Appearance', pose: _Pose) -> dict:
  """Named 3D points of the posed figure (body frame, u units), before the view yaw.

  Besides the joints: hand and toe tips, the head points, the corners of the torso slab ('t0'..'t11':
  chest, waist, hem), of the pelvis ('p0'..'p11', waistband first) and of the skirt hem ('s0'..'s7'),
  and where shorts or a skirt end on each thigh ('rthc', 'lthc').
  """
  sw, hw = app.build
  td = _TORSO_DEPTH / 2
  up = {'neck': np.zeros(3)}  # the upper body is built upright, then leaned about the hip centre
  for side, tag, (abd, flex, elb, bend) in zip((-1, 1), 'rl', pose.arms):
    sho = np.array([side * sw, 0.0, 0.0])
    d1 = _limb_dir(abd, flex, side)
    d2 = _bend(d1, np.array([side * bend[0], bend[1], bend[2]]), elb)
    up[tag + 'sho'], up[tag + 'elb'] = sho, sho + _UPPER_ARM * d1
    up[tag + 'wri'] = up[tag + 'elb'] + _FOREARM * d2
    up[tag + 'hand'] = up[tag + 'wri'] + _HAND * d2
  hc = pose.head @ np.array([0.0, -_HEAD_ABOVE_NECK, 0.0])
  for k, off in _HEAD_POINTS.items():
    up[k] = hc + pose.head @ np.asarray(off, float)
  slab = _corners(sw + 0.1, -0.1, td) + _corners(hw + 0.14, 2.0, td * 0.9) + _corners(hw + 0.26, app.hem, td)
  for i, c in enumerate(slab):
    up[f't{i}'] = np.asarray(c, float)
  pelvis = _corners(hw + 0.14, 2.0, td * 0.9) + _corners(hw + 0.3, _TORSO_LEN + 0.2, td) + \
      _corners(0.3, _TORSO_LEN + 0.55, td * 0.9)
  for i, c in enumerate(pelvis[:4]):  # the waistband leans with the upper body
    up[f'p{i}'] = np.asarray(c, float)
  pivot = np.array([0.0, _TORSO_LEN, 0.0])
  pts = {k: pose.lean @ (v - pivot) + pivot for k, v in up.items()}
  for i, c in enumerate(pelvis[4:], 4):
    pts[f'p{i}'] = np.asarray(c, float)
  for side, tag, (abd, flex, knee) in zip((-1, 1), 'rl', pose.legs):
    hip = np.array([side * hw, _TORSO_LEN, 0.0])
    d1 = _limb_dir(abd, flex, side)
    d2 = _bend(d1, np.array([0.0, 0.3, -1.0]), knee)  # shins fold backwards
    pts[tag + 'hip'], pts[tag + 'kne'] = hip, hip + _THIGH * d1
    pts[tag + 'ank'] = pts[tag + 'kne'] + _SHIN * d2
    toe = np.array([side * 0.12, 0.15, 1.0])  # forwards, slightly down and turned out
    pts[tag + 'toe'] = pts[tag + 'ank'] + _FOOT * toe / np.linalg.norm(toe)
    pts[tag + 'thc'] = hip + app.leg_cover * _THIGH * d1
  if app.bottom_kind == 'skirt':
    flare = 0.35 + 0.25 * app.leg_cover
    hem = [pts[tag + 'thc'] + np.array([dx * flare, 0.0, dz * flare * 0.8])
           for tag in 'rl' for dx in (-1, 1) for dz in (-1, 1)]
    for i, c in enumerate(hem):
      pts[f's{i}'] = c
  return pts


def _facing_z(pose, normal):
  """z (towards the camera) of a head-frame direction after head turn, lean and view yaw."""
  return float(pose.head_world[2] @ np.asarray(normal, float))


# ----------------------------------------------------------------------------- keypoints

def _keypoints(pose, P, parts, order, s, height, width):
  """OpenPose-18 keypoints in image pixels (-1 missing) and the same with nothing hidden."""
  kp = np.full((kpl.NUM_OPENPOSE, 2), kpl.MISSING)
  for j, k in _BODY_KEYPOINTS.items():
    kp[j] = P[k]
  kp[1] = (P['rsho'] + P['lsho']) / 2  # OpenPose's neck sits between the shoulders
  for name, j, _, _ in _FACE_KEYPOINTS:
    kp[j] = P[name]
  kp_all = kp.copy()
  for name, j, normal, threshold in _FACE_KEYPOINTS:
    if _facing_z(pose, normal) <= threshold:
      kp[j] = kpl.MISSING
  # A limb joint is hidden when a core part painted after every part that carries it covers it.
  rank = {i: r for r, i in enumerate(order)}
  margin = max(0.5, 0.08 * s)
  for j in _OCCLUDABLE:
    own = max(rank[i] for i, p in enumerate(parts) if j in p.joints)
    pt = (float(kp[j, 0]), float(kp[j, 1]))
    for i, p in enumerate(parts):
      if p.occluder and rank[i] > own and any(
          cv2.pointPolygonTest(poly.astype(np.float32), pt, True) > margin for poly in p.ops[0][0]):
        kp[j] = kpl.MISSING
        break
  out = (kp[:, 0] < 0) | (kp[:, 0] > width - 1) | (kp[:, 1] < 0) | (kp[:, 1] > height - 1)
  kp[out] = kpl.MISSING
  return kp, kp_all
