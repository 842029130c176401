"""Procedural articulated people for the synthetic benchmark: body model, poses, clothes and drawing.

The body is a pseudo-3D stick figure in head units (u): joints are placed in a body frame
(x = the person's left, y = down, z = the way the person faces), the upper body leans about the
hip centre, the head turns about the neck, and the whole figure is turned by a view yaw (0 front,
90 profile facing image right, 180 back) and projected orthographically. Depth after the yaw gives
the painter's order, the face normals give which face keypoints a detector could see, and the
projected torso/head outlines give which elbows, wrists, knees and ankles are hidden behind the
body. Each part is filled through an anti-aliased OpenCV mask; garments sample a per-identity
pattern texture through a similarity map that follows the part, so stripes turn with the limb.
"""

import dataclasses
import math

import cv2
import numpy as np

from reposedm_jax.data import keypoints as kpl

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
# A limb is painted over the torso unless it is well behind it: the torso is a slab, not a plane.
# Arms get the larger margin so hands hanging beside a skirt stay in front of it.
_ARM_BIAS, _LEG_BIAS = 0.40, 0.30
_HEAD_BIAS = 0.60

# Texture layout (u units): garments are unrolled as if worn in a T-shape, person's right on the left.
_TEX_W, _TEX_H = 6.0, 8.0
_TEX_TORSO = (3.0, 0.5)  # neck (top texture) / hip centre (bottom texture) anchor
_TEX_ARM_X = (0.8, 5.2)  # right, left sleeve columns
_TEX_LEG_X = (2.4, 3.6)
_TEX_HIP_Y = 1.2

_SEMI = np.linspace(-np.pi / 2, np.pi / 2, 9)
_SEMI_XY = np.stack([np.cos(_SEMI), np.sin(_SEMI)], 1)
_RING = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_ERODE = np.ones((3, 3), np.uint8)

_GARMENT_RGB = np.array([
    (26, 34, 66), (22, 22, 24), (236, 236, 230), (128, 128, 134), (180, 34, 42), (214, 194, 158),
    (94, 106, 54), (62, 94, 150), (234, 150, 172), (216, 168, 40), (112, 28, 46), (30, 132, 130),
    (72, 132, 204), (150, 90, 50), (240, 122, 42), (92, 60, 142), (58, 142, 72), (250, 228, 120),
    (178, 208, 230)], np.float64)
_DENIM_RGB = np.array([(52, 78, 128), (70, 100, 150), (40, 52, 80), (96, 124, 168)], np.float64)
_SKIN_RGB = np.array([(255, 222, 196), (240, 194, 160), (224, 172, 130), (198, 136, 98),
                      (160, 106, 72), (120, 76, 50), (86, 56, 40)], np.float64)
_HAIR_RGB = np.array([(22, 18, 16), (58, 38, 26), (106, 72, 42), (204, 164, 96), (152, 62, 32),
                      (158, 156, 152)], np.float64)
_SHOE_RGB = np.array([(24, 24, 26), (232, 232, 228), (96, 58, 34), (40, 40, 70)], np.float64)

_CATEGORIES = {
    ('MEN', 'long'): ('Jackets_Vests', 'Sweaters', 'Shirts_Polos', 'Sweatshirts_Hoodies', 'Suiting'),
    ('MEN', 'short'): ('Tees_Tanks', 'Shirts_Polos'),
    ('MEN', 'none'): ('Tees_Tanks',),
    ('WOMEN', 'long'): ('Blouses_Shirts', 'Cardigans', 'Jackets_Coats', 'Sweaters', 'Sweatshirts_Hoodies'),
    ('WOMEN', 'short'): ('Tees_Tanks', 'Blouses_Shirts', 'Graphic_Tees'),
    ('WOMEN', 'none'): ('Tees_Tanks', 'Blouses_Shirts'),
}


# ----------------------------------------------------------------------------- appearance

@dataclasses.dataclass(frozen=True)
class Appearance:
  """Everything about an identity that stays fixed across its views (textures at a given u_tex)."""
  gender: str
  category: str
  build: tuple  # (shoulder half-width, hip half-width) in u
  skin: np.ndarray
  hair: np.ndarray
  hair_style: str  # 'short' | 'buzz' | 'long' | 'bun'
  shoes: np.ndarray
  sleeves: str  # 'none' | 'short' | 'long'
  bottom_kind: str  # 'trousers' | 'shorts' | 'skirt' (dresses are a skirt sharing the top's texture)
  hem: float  # top garment's lower edge below the shoulder line, u
  leg_cover: float  # shorts / skirt length as a fraction of the thigh
  top: np.ndarray  # uint8 [th, tw, 3] RGB texture
  bottom: np.ndarray
  u_tex: float  # texture pixels per head unit


def _jitter(rng, palette, amount):
  c = palette[rng.integers(len(palette))] + rng.uniform(-amount, amount, 3)
  return np.clip(c, 0, 255)


def _contrasting(rng, c1):
  """A second garment colour far enough from c1 that the pattern reads at 64 px."""
  for _ in range(8):
    c2 = _jitter(rng, _GARMENT_RGB, 12)
    if np.abs(c2 - c1).sum() > 150:
      return c2
  return 255.0 - c1


def _bands(d, period, duty, px):
  """Anti-aliased coverage of stripes along coordinate d (u units); px = size of one pixel in u."""
  t = np.abs((d / period) % 1.0 - 0.5) * period
  return np.clip((duty * period * 0.5 - t) / px + 0.5, 0.0, 1.0)


def _pattern_params(rng, weights):
  kind = rng.choice(('solid', 'stripes', 'checks', 'dots', 'print'), p=weights)
  return dict(kind=str(kind), angle=float(rng.choice((0.0, 90.0, 45.0, -45.0, rng.uniform(0, 180)))),
              period=float(rng.uniform(0.35, 0.9)), duty=float(rng.uniform(0.3, 0.6)),
              print_kind=str(rng.choice(('halves', 'band', 'blobs'))),
              band=(float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.6, 1.2))),
              blobs=rng.uniform((0.0, 0.0, 0.5), (_TEX_W, _TEX_H, 1.1), (5, 3)))


def _texture(p, c1, c2, u_tex):
  """Renders pattern parameters p into a uint8 RGB texture of _TEX_W x _TEX_H head units."""
  h, w = int(math.ceil(_TEX_H * u_tex)), int(math.ceil(_TEX_W * u_tex))
  px = 1.0 / u_tex
  y, x = np.mgrid[0:h, 0:w].astype(np.float32) * px
  th = math.radians(p['angle'])
  a = x * math.cos(th) + y * math.sin(th)
  b = -x * math.sin(th) + y * math.cos(th)
  kind, per = p['kind'], p['period']
  if kind == 'solid':
    cov = np.zeros_like(x)
  elif kind == 'stripes':
    cov = _bands(a, per, p['duty'], px)
  elif kind == 'checks':
    s, t = _bands(a, per * 1.4, 0.5, px), _bands(b, per * 1.4, 0.5, px)
    cov = s + t - 2 * s * t
  elif kind == 'dots':
    # A staggered lattice: every other row shifted half a period.
    row = np.floor(b / per)
    aa = a + 0.5 * per * (row % 2)
    da, db = (aa % per) - per / 2, (b % per) - per / 2
    cov = np.clip((0.28 * per - np.hypot(da, db)) / px + 0.5, 0.0, 1.0)
  elif p['print_kind'] == 'halves':
    cov = np.clip((x - _TEX_TORSO[0]) / px + 0.5, 0.0, 1.0)
  elif p['print_kind'] == 'band':
    y0, hgt = p['band']
    cov = np.clip(np.minimum(y - y0, y0 + hgt - y) / px + 0.5, 0.0, 1.0)
  else:
    d = np.full_like(x, 1e9)
    for cx, cy, r in p['blobs']:
      d = np.minimum(d, np.hypot(x - cx, y - cy) - r)
    cov = np.clip(-d / px + 0.5, 0.0, 1.0)
  tex = c1[None, None] * (1 - cov[..., None]) + c2[None, None] * cov[..., None]
  return np.clip(tex + 0.5, 0, 255).astype(np.uint8)


def make_appearance(seed: int, identity: int, height: int) -> Appearance:
  """Draws an identity's look from its own generator; textures are rendered for images `height` tall."""
  rng = np.random.default_rng([seed, identity, 0xA99])
  gender = 'WOMEN' if rng.random() < 0.5 else 'MEN'
  women = gender == 'WOMEN'
  if women:
    bottom_kind = str(rng.choice(('trousers', 'shorts', 'skirt', 'dress'), p=(0.35, 0.15, 0.3, 0.2)))
    hair_style = str(rng.choice(('long', 'bun', 'short'), p=(0.55, 0.2, 0.25)))
    build = (rng.uniform(0.78, 0.86), rng.uniform(0.55, 0.62))
  else:
    bottom_kind = str(rng.choice(('trousers', 'shorts'), p=(0.75, 0.25)))
    hair_style = str(rng.choice(('short', 'buzz', 'long'), p=(0.6, 0.3, 0.1)))
    build = (rng.uniform(0.9, 1.0), rng.uniform(0.48, 0.54))
  sleeves = str(rng.choice(('none', 'short', 'long'), p=(0.25, 0.4, 0.35) if women else (0.12, 0.5, 0.38)))
  top_c1 = _jitter(rng, _GARMENT_RGB, 14)
  top_c2 = _contrasting(rng, top_c1)
  top_p = _pattern_params(rng, (0.3, 0.25, 0.15, 0.12, 0.18))
  denim = bottom_kind in ('trousers', 'shorts') and rng.random() < 0.35
  bot_c1 = _jitter(rng, _DENIM_RGB if denim else _GARMENT_RGB, 10)
  bot_c2 = _contrasting(rng, bot_c1)
  bot_p = _pattern_params(rng, (1.0, 0, 0, 0, 0) if denim else (0.55, 0.12, 0.13, 0.08, 0.12))
  skin = _jitter(rng, _SKIN_RGB, 8)
  hair = _jitter(rng, _HAIR_RGB, 10)
  shoes = _jitter(rng, _SHOE_RGB, 10)
  hem = _TORSO_LEN + rng.uniform(-0.25, 0.35)
  leg_cover = rng.uniform(0.4, 0.75) if bottom_kind == 'shorts' else rng.uniform(0.55, 1.35)
  # The category folder names the featured garment, so it must agree with what is drawn.
  if bottom_kind == 'dress':
    category = 'Dresses' if rng.random() < 0.85 else 'Rompers_Jumpsuits'
  elif rng.random() < 0.5:
    category = {'trousers': 'Denim' if denim else ('Pants' if not women or rng.random() < 0.7 else 'Leggings'),
                'shorts': 'Denim' if denim and rng.random() < 0.5 else 'Shorts', 'skirt': 'Skirts'}[bottom_kind]
  else:
    options = _CATEGORIES[(gender, sleeves)]
    category = str(options[rng.integers(len(options))])
  u_tex = height * 0.9 / _STANDING_HEIGHT
  top = _texture(top_p, top_c1, top_c2, u_tex)
  bottom = top if bottom_kind == 'dress' else _texture(bot_p, bot_c1, bot_c2, u_tex)
  return Appearance(gender=gender, category=category, build=build, skin=skin, hair=hair,
                    hair_style=hair_style, shoes=shoes, sleeves=sleeves,
                    bottom_kind='skirt' if bottom_kind == 'dress' else bottom_kind, hem=hem,
                    leg_cover=leg_cover, top=top, bottom=bottom, u_tex=u_tex)


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

# Cumulative weights: one uniform draw picks the family (rng.choice is slow on the hot path).
_FAMILY_CDF = {k: np.cumsum(v) / np.sum(v) for k, v in _FAMILY_WEIGHTS.items()}


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


def _sample_pose(rng, view) -> _Pose:
  yaw, face_kind = _view_yaw(rng, view)
  cdf = _FAMILY_CDF['full' if view == 'full' else face_kind]
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


def _skeleton(app: Appearance, pose: _Pose) -> dict:
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


def _fit(p2, hc, headup, rng, height, width, sit):
  """Pixels per u and shift: a nominal standing height, shrunk when the pose needs more room."""
  ext = np.concatenate([p2, [hc + headup * 0.62, hc - headup * 0.55, hc + [0.5, 0], hc - [0.5, 0]]])
  lo, hi = ext.min(0) - 0.32, ext.max(0) + 0.32
  span = hi - lo
  s = min(height * _u(rng, 0.86, 0.95) / _STANDING_HEIGHT, 0.97 * height / span[1], 0.95 * width / span[0])
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


def _facing_z(pose, normal):
  """z (towards the camera) of a head-frame direction after head turn, lean and view yaw."""
  return float(pose.head_world[2] @ np.asarray(normal, float))


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


def render_view(app: Appearance, seed: int, identity: int, view_index: int, height: int, width: int,
                return_info: bool = False):
  """Draws one view of an identity from its own generator (seed, identity, view_index).

  Returns (image uint8 [H, W, 3] RGB, keypoints float64 [18, 2] (x, y) image pixels, -1 = missing),
  plus, with return_info, a dict: 'keypoints_all' (every keypoint's projected position, hidden or not),
  'family' (the pose family) and 'yaw' (degrees).
  """
  rng = np.random.default_rng([seed, identity, view_index, 0x5EE])
  pose = _sample_pose(rng, VIEWS[view_index % len(VIEWS)][1])
  pts = _skeleton(app, pose)
  names = list(pts)
  p3 = np.stack([pts[k] for k in names]) @ _rot_yaw(math.radians(pose.yaw)).T
  head_down = pose.head_world[:2, 1]
  headup = -head_down / max(np.linalg.norm(head_down), 1e-6)
  body = [i for i, k in enumerate(names) if k not in ('panel0', 'panel1', 'bun')]
  s, shift = _fit(p3[body, :2], p3[names.index('hc'), :2], headup, rng, height, width, pose.family == 'sit')
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
