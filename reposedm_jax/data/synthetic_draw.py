"""Procedural articulated people for the synthetic benchmark: rasterisation and compositing.

A posed skeleton (`synthetic_pose`) is turned by its view yaw, projected orthographically and fitted
into the frame; depth after the yaw gives the painter's order. Each part is filled through an
anti-aliased OpenCV mask; garments sample the identity's pattern texture (`synthetic_appearance`)
through a similarity map that follows the part, so stripes turn with the limb. `render_view` draws
one view; `VIEWS` and `make_appearance` are re-exported here for callers of this module.
"""

import dataclasses
import math

import cv2
import numpy as np

from reposedm_jax.data.synthetic_appearance import (  # make_appearance: re-exported
    Appearance, _TEX_ARM_X, _TEX_HIP_Y, _TEX_LEG_X, _TEX_TORSO, make_appearance)
from reposedm_jax.data.synthetic_pose import (  # VIEWS: re-exported
    VIEWS, _FACE_KEYPOINTS, _HEAD_RX, _HEAD_RY, _HEAD_RZ, _STANDING_HEIGHT, _THIGH, _UPPER_ARM,
    DIFFICULTIES, _facing_z, _keypoints, _rot_yaw, _sample_pose, _skeleton, _u)

# A limb is painted over the torso unless it is well behind it: the torso is a slab, not a plane.
# Arms get the larger margin so hands hanging beside a skirt stay in front of it.
_ARM_BIAS, _LEG_BIAS = 0.40, 0.30
_HEAD_BIAS = 0.60

_SEMI = np.linspace(-np.pi / 2, np.pi / 2, 9)
_SEMI_XY = np.stack([np.cos(_SEMI), np.sin(_SEMI)], 1)
_RING = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_ERODE = np.ones((3, 3), np.uint8)


# ----------------------------------------------------------------------------- geometry

def _capsule(a, b, ra, rb):
  """Convex polygon of a tapered capsule from a (radius ra) to b (radius rb), pixel coordinates."""
  dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
  length = math.hypot(dx, dy)
  c, sn = (dx / length, dy / length) if length > 1e-6 else (0.0, 1.0)
  if length < abs(ra - rb):  # foreshortened: keep it convex
    ra = rb = max(ra, rb)
  rim = _SEMI_XY @ np.array([[c, sn], [-sn, c]])  # the half circle facing from a towards b
  return np.concatenate([b + rb * rim, a - ra * rim])


def _ellipse(c, rx, ry, up):
  """Polygon of an ellipse centred at c whose ry axis lies along the 2D unit vector `up`."""
  side = np.array([-up[1], up[0]])
  return c + np.outer(np.cos(_RING) * rx, side) + np.outer(np.sin(_RING) * ry, up)


def _hull(pts):
  return cv2.convexHull(np.asarray(pts, np.float32)).reshape(-1, 2).astype(np.float64)


@dataclasses.dataclass
class _Part:
  depth: float
  # [(polygons, fill, shade[, rim])]: fill = RGB array or (texture, 2x3 image->texture map); rim=False
  # for pieces laid over the same colour (hair on hair), where a darkened outline would show a seam.
  ops: list
  joints: tuple = ()  # OpenPose joints this part carries (its own pixels never hide them)
  occluder: bool = False  # whether it hides limb joints behind it


# ----------------------------------------------------------------------------- compositing

def _tex_map(app, tex, anchor_px, axis, mirror, tex_anchor_u, u_img):
  """Image->texture similarity: the part's axis maps to texture +v, its anchor to tex_anchor_u."""
  ax, ay = float(axis[0]), float(axis[1])
  n = math.hypot(ax, ay)
  vx, vy = (ax / n, ay / n) if n > 1e-6 else (0.0, 1.0)
  ux, uy = mirror * vy, -mirror * vx
  k = app.u_tex / u_img
  x0, y0 = float(anchor_px[0]), float(anchor_px[1])
  tu, tv = tex_anchor_u[0] * app.u_tex, tex_anchor_u[1] * app.u_tex
  return tex, np.array([[k * ux, k * uy, tu - k * (ux * x0 + uy * y0)],
                        [k * vx, k * vy, tv - k * (vx * x0 + vy * y0)]])


def _draw(canvas, polys, fill, shade, edge):
  """Composites one filled region (union of convex polygons) onto the float RGB canvas."""
  h, w = canvas.shape[:2]
  allp = np.concatenate(polys) if len(polys) > 1 else polys[0]
  (lx, ly), (hx, hy) = allp.min(0), allp.max(0)
  x0, y0 = max(int(lx) - 1, 0), max(int(ly) - 1, 0)
  x1, y1 = min(int(hx) + 3, w), min(int(hy) + 3, h)
  if x1 <= x0 or y1 <= y0:
    return
  mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
  off = np.array([x0, y0])
  for p in polys:
    cv2.fillConvexPoly(mask, np.round((p - off) * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
  if isinstance(fill, tuple):
    tex, m = fill
    m = m.copy()
    m[:, 2] += m[:, :2] @ off
    src = cv2.warpAffine(tex, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
  else:
    src = np.asarray(fill, np.float32)  # broadcasts over the region
  alpha = mask.astype(np.float32) * np.float32(1.0 / 255)
  if edge > 0:
    # Darken the part's rim so a sleeve over a same-coloured shirt still shows its outline.
    rim = cv2.subtract(mask, cv2.erode(mask, _ERODE)).astype(np.float32)
    src = src * (np.float32(shade) - np.float32(shade * edge / 255) * rim)[..., None]
  elif shade != 1.0:
    src = src * np.float32(shade)
  roi = canvas[y0:y1, x0:x1]
  roi += (src - roi) * alpha[..., None]


# ----------------------------------------------------------------------------- framing

def _fit(p2, hc, headup, rng, height, width, sit, closeup=None, loose: bool = False):
  """Pixels per u and shift: a nominal standing height, shrunk when the pose needs more room.

  closeup: (lo, hi) for DeepFashion's upper-body / three-quarter shots: lo-hi x the nominal scale with the
  head near the top edge; whatever leaves the frame (legs, raised hands) is cut and its keypoints are missing.
  loose: framing drawn per view (difficulty='hard'): 50-100 % of the nominal height, anywhere in the frame.
  """
  ext = np.concatenate([p2, [hc + headup * 0.62, hc - headup * 0.55, hc + [0.5, 0], hc - [0.5, 0]]])
  lo, hi = ext.min(0) - 0.32, ext.max(0) + 0.32
  span = hi - lo
  s = min(height * _u(rng, 0.86, 0.95) / _STANDING_HEIGHT, 0.97 * height / span[1], 0.95 * width / span[0])
  if closeup:
    s = height * _u(rng, *closeup) / _STANDING_HEIGHT
    top = (hc + headup * 0.62)[1] - 0.2
    return s, np.array([width * _u(rng, 0.42, 0.58) - hc[0] * s, height * _u(rng, 0.03, 0.08) - top * s])
  if loose:
    s *= _u(rng, 0.5, 1.0)
    margin = np.array([width, height]) - s * span
    return s, np.array([margin[0] * _u(rng, 0.0, 1.0), margin[1] * _u(rng, 0.0, 1.0)]) - lo * s
  margin = np.array([width, height]) - s * span
  # Standing figures keep their feet near the bottom edge, like DeepFashion's studio shots.
  fy = _u(rng, 0.2, 0.5) if sit else _u(rng, 0.35, 0.8)
  return s, np.array([margin[0] * _u(rng, 0.3, 0.7), margin[1] * fy]) - lo * s


# ----------------------------------------------------------------------------- parts

def _limb_parts(app, P, Z, s, mirror, tag, k, kind):
  """An arm (kind 'arm') or leg of side `tag` as three depth-sorted parts."""
  if kind == 'arm':
    a, b, c, d = (tag + n for n in ('sho', 'elb', 'wri', 'hand'))
    tex, col, y0, seg, bias = app.top, _TEX_ARM_X[k], _TEX_TORSO[1], _UPPER_ARM, _ARM_BIAS
    joints = (3, 4) if tag == 'r' else (6, 7)
  else:
    a, b, c, d = (tag + n for n in ('hip', 'kne', 'ank', 'toe'))
    tex, col, y0, seg, bias = app.bottom, _TEX_LEG_X[k], _TEX_HIP_Y, _THIGH, _LEG_BIAS
    joints = (9, 10) if tag == 'r' else (12, 13)
  pa, pb, pc, pd = P[a], P[b], P[c], P[d]
  # Limbs well behind the torso (the far side of a profile) are drawn a little darker.
  shade = 0.82 if Z[a] + Z[b] < -0.4 else 1.0
  upper_tex = _tex_map(app, tex, pa, pb - pa, mirror, (col, y0), s)
  lower_tex = _tex_map(app, tex, pb, pc - pb, mirror, (col, y0 + seg), s)
  skin = app.skin
  if kind == 'arm':
    bare_upper = ([_capsule(pa, pb, 0.27 * s, 0.22 * s)], skin, shade)
    upper = {'none': [bare_upper],
             'short': [bare_upper, ([_capsule(pa, pa + 0.6 * (pb - pa), 0.3 * s, 0.27 * s)], upper_tex, shade)],
             'long': [([_capsule(pa, pb, 0.3 * s, 0.25 * s)], upper_tex, shade)]}[app.sleeves]
    lower = [([_capsule(pb, pc, 0.24 * s, 0.2 * s)], lower_tex, shade)] if app.sleeves == 'long' else \
        [([_capsule(pb, pc, 0.21 * s, 0.16 * s)], skin, shade)]
    end = [([_capsule(pc, pd, 0.16 * s, 0.17 * s)], skin, shade)]
  else:
    if app.bottom_kind == 'trousers':
      upper = [([_capsule(pa, pb, 0.44 * s, 0.34 * s)], upper_tex, shade)]
      lower = [([_capsule(pb, pc, 0.33 * s, 0.27 * s)], lower_tex, shade)]
    else:
      upper = [([_capsule(pa, pb, 0.4 * s, 0.29 * s)], skin, shade)]
      if app.bottom_kind == 'shorts':
        upper.append(([_capsule(pa, P[tag + 'thc'], 0.45 * s, 0.4 * s)], upper_tex, shade))
      lower = [([_capsule(pb, pc, 0.28 * s, 0.18 * s)], skin, shade)]
    end = [([_capsule(pc, pd, 0.19 * s, 0.17 * s)], app.shoes, shade)]
  return [_Part((Z[a] + Z[b]) / 2 + bias, upper, joints[:1]),
          _Part((Z[b] + Z[c]) / 2 + bias, lower, joints),
          _Part((Z[c] + Z[d]) / 2 + bias, end, joints[1:])]


def _head_parts(app, pose, P, Z, s, headup, facing):
  """Neck, head with hair and face marks, and a long-hair panel when the style has one."""
  skin, hair = app.skin, app.hair
  total_yaw = math.radians(pose.yaw + pose.head_yaw)
  hrx = math.hypot(_HEAD_RX * math.cos(total_yaw), _HEAD_RZ * math.sin(total_yaw)) * s  # visible half-width
  head_depth = Z['hc'] + _HEAD_BIAS
  parts = [_Part(0.3, [([_capsule(P['neck'], (P['neck'] + P['hc']) / 2, 0.17 * s, 0.17 * s)], skin, 1.0)])]
  if app.hair_style == 'long':
    # Behind the torso seen from the front, over the shoulders in profile, over everything from behind.
    depth = head_depth + 0.01 if facing < -0.5 else (head_depth - 0.01 if facing < 0.3 else -0.5)
    parts.append(_Part(depth, [([_capsule(P['panel0'], P['panel1'], 0.44 * s, 0.4 * s)], hair, 1.0, False)]))
  head_ops = [([_ellipse(P['hc'], hrx, _HEAD_RY * s, -headup)], skin, 1.0)]
  cap_ry = 0.24 if app.hair_style == 'buzz' else 0.31
  hair_ops = [([_ellipse(P['cap'], hrx * 1.07, cap_ry * s, -headup)], hair, 1.0, False)]
  if facing < 0.25:  # the back of the head is towards the camera
    hair_ops.append(([_ellipse(P['back'], hrx * 0.92, 0.5 * s, -headup)], hair, 1.0, False))
  if app.hair_style == 'bun':
    bun = ([_ellipse(P['bun'], 0.2 * s, 0.2 * s, -headup)], hair, 1.0, False)
    if Z['bun'] > Z['hc']:
      hair_ops.append(bun)
    else:
      head_ops.insert(0, bun)
  face_ops = []
  if facing > -0.1:
    for name, _, normal, threshold in _FACE_KEYPOINTS[1:3]:  # the eyes
      if _facing_z(pose, normal) > threshold:
        r = max(0.045 * s, 0.5)
        face_ops.append(([_ellipse(P[name], r, r, -headup)], np.array([40.0, 30, 30]), 1.0, False))
  if facing > 0.3:
    face_ops.append(([_ellipse(P['mouth'], 0.1 * s * facing, max(0.035 * s, 0.4), -headup)],
                     np.array([150.0, 60, 60]), 1.0, False))
  parts.append(_Part(head_depth, head_ops + hair_ops + face_ops, occluder=True))
  return parts


def _build_parts(app, pose, P, Z, s, headup):
  """All parts of the figure from its projected points P (pixels) and depths Z (u, towards the camera)."""
  # Textures are mirrored when the back faces the camera, so the person's right stays their right.
  mirror = 1.0 if math.cos(math.radians(pose.yaw)) >= 0 else -1.0
  mid_hip = (P['rhip'] + P['lhip']) / 2
  axis = mid_hip - P['neck']
  top = _tex_map(app, app.top, P['neck'], axis, mirror, _TEX_TORSO, s)
  bottom = _tex_map(app, app.bottom, mid_hip, axis, mirror, (_TEX_TORSO[0], _TEX_HIP_Y), s)

  def hull(keys):
    return _hull(np.stack([P[k] for k in keys]))

  parts = [_Part(-0.01, [([hull([f'p{i}' for i in range(12)])], bottom, 1.0)], occluder=True),
           _Part(0.0, [([hull([f't{i}' for i in range(8)]), hull([f't{i}' for i in range(4, 12)])], top, 1.0)],
                 occluder=True)]
  for k, tag in enumerate('rl'):
    parts += _limb_parts(app, P, Z, s, mirror, tag, k, 'arm')
  legs = []
  for k, tag in enumerate('rl'):
    legs += _limb_parts(app, P, Z, s, mirror, tag, k, 'leg')
  parts += legs
  if app.bottom_kind == 'skirt':
    skirt = hull([f'p{i}' for i in range(4)] + [f's{i}' for i in range(8)])
    thighs = (legs[0].depth, legs[3].depth)  # the skirt covers both thighs, whatever their depth
    parts.append(_Part(max(thighs) + 0.02, [([skirt], bottom, 1.0)]))
  parts += _head_parts(app, pose, P, Z, s, headup, _facing_z(pose, (0, 0, 1)))
  return parts


def _closeup(rng, difficulty, view):
  """difficulty='hard': 'additional' is an upper-body shot, 'front' a three-quarter shot 40 % of the time."""
  if difficulty != 'hard':
    return None
  if view == 'additional':
    return 2.2, 3.0
  if view == 'front' and rng.random() < 0.4:
    return 1.4, 1.8
  return None


def render_view(app: Appearance, seed: int, identity: int, view_index: int, height: int, width: int,
                return_info: bool = False, difficulty: str = 'standard'):
  """Draws one view of an identity from its own generator (seed, identity, view_index).

  difficulty: 'standard' (the original benchmark, unchanged byte for byte) or 'hard' (every view an
  articulated pose drawn independently, framed anywhere at 50-100 % scale, the 'additional' view an
  upper-body close-up and the 'front' view sometimes a three-quarter shot).

  Returns (image uint8 [H, W, 3] RGB, keypoints float64 [18, 2] (x, y) image pixels, -1 = missing),
  plus, with return_info, a dict: 'keypoints_all' (every keypoint's projected position, hidden or not),
  'family' (the pose family) and 'yaw' (degrees).
  """
  rng = np.random.default_rng([seed, identity, view_index, 0x5EE])
  if difficulty not in DIFFICULTIES:
    raise ValueError(f'difficulty must be one of {DIFFICULTIES}, got {difficulty!r}')
  view = VIEWS[view_index % len(VIEWS)][1]
  pose = _sample_pose(rng, view, difficulty)
  pts = _skeleton(app, pose)
  names = list(pts)
  p3 = np.stack([pts[k] for k in names]) @ _rot_yaw(math.radians(pose.yaw)).T
  head_down = pose.head_world[:2, 1]
  headup = -head_down / max(np.linalg.norm(head_down), 1e-6)
  body = [i for i, k in enumerate(names) if k not in ('panel0', 'panel1', 'bun')]
  s, shift = _fit(p3[body, :2], p3[names.index('hc'), :2], headup, rng, height, width, pose.family == 'sit',
                  closeup=_closeup(rng, difficulty, view), loose=difficulty == 'hard')
  px = p3[:, :2] * s + shift
  P, Z = dict(zip(names, px)), dict(zip(names, p3[:, 2]))
  parts = _build_parts(app, pose, P, Z, s, headup)

  canvas = _background(rng, height, width)
  order = sorted(range(len(parts)), key=lambda i: parts[i].depth)  # stable: ties keep build order
  edge = 0.35 if height >= 96 else 0.2
  for i in order:
    for polys, fill, shade, *rim in parts[i].ops:
      _draw(canvas, polys, fill, shade, edge if not rim or rim[0] else 0.0)
  image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
  kp, kp_all = _keypoints(pose, P, parts, order, s, height, width)
  if return_info:
    return image, kp, {'keypoints_all': kp_all, 'family': pose.family, 'yaw': pose.yaw}
  return image, kp


def _background(rng, height, width):
  """Near-white studio backdrop with a slight tint and a gentle vertical gradient (float RGB)."""
  top = _u(rng, 224, 250) + rng.uniform(-6, 6, 3)
  bottom = top - _u(rng, 0, 16)
  t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  col = top[None, None].astype(np.float32) * (1 - t) + bottom[None, None].astype(np.float32) * t
  return np.ascontiguousarray(np.broadcast_to(col, (height, width, 3)), np.float32)
