"""Per-identity appearance of the synthetic benchmark's people: build, colours, garments, textures.

Everything about an identity that stays fixed across its views is drawn from the identity's own
generator: gender and build, skin, hair and shoe colours, the garments (sleeves, bottom kind, hem and
leg cover) and the DeepFashion category that names the featured garment. Garment patterns are
rendered once into anti-aliased textures laid out as if the garment were unrolled in a T-shape;
`synthetic_draw` samples them through a similarity map that follows each part.
"""

import dataclasses
import math

import numpy as np

from reposedm_jax.data.synthetic_pose import _STANDING_HEIGHT, _TORSO_LEN

# Texture layout (u units): garments are unrolled as if worn in a T-shape, person's right on the left.
_TEX_W, _TEX_H = 6.0, 8.0
_TEX_TORSO = (3.0, 0.5)  # neck (top texture) / hip centre (bottom texture) anchor
_TEX_ARM_X = (0.8, 5.2)  # right, left sleeve columns
_TEX_LEG_X = (2.4, 3.6)
_TEX_HIP_Y = 1.2

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
