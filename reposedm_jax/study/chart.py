"""The bar chart of a scored study, like paper Fig. 7: R2G, G2R per method, JAB per method, with 95 % intervals.

Drawn with Pillow (already a core dependency) rather than matplotlib, which the core venv does not install.
"""

from PIL import Image, ImageDraw, ImageFont

COLORS = ((47, 95, 208), (222, 120, 40), (60, 160, 90), (190, 60, 70), (130, 90, 180), (140, 110, 80),
          (210, 110, 170), (110, 110, 110), (170, 170, 40), (40, 170, 180))
REAL_COLOR = (150, 150, 150)
W, H = 960, 520
PLOT = (80, 70, 930, 440)  # left, top, right, bottom of the axes


def _font(size: int):
  return ImageFont.load_default(size=size)


def _center_text(draw, xy, text, font, fill=(30, 30, 30)):
  box = draw.textbbox((0, 0), text, font=font)
  draw.text((xy[0] - (box[2] - box[0]) / 2, xy[1]), text, font=font, fill=fill)


def draw(result: dict, methods: list[str], title: str = '') -> Image.Image:
  """The chart as an RGB image; `methods` fixes each method's colour (the first is 'ours')."""
  img = Image.new('RGB', (W, H), 'white')
  d = ImageDraw.Draw(img)
  left, top, right, bottom = PLOT
  small, mid = _font(13), _font(15)
  title = title or f'Perception study {result["study_id"]} ({result["included"]} participants)'
  _center_text(d, (W / 2, 18), title, _font(18))
  for v in range(0, 101, 20):  # Grid and y labels.
    y = bottom - (bottom - top) * v / 100
    d.line((left, y, right, y), fill=(225, 225, 225))
    label = f'{v}%'
    d.text((left - 8 - d.textlength(label, font=small), y - 8), label, font=small, fill=(80, 80, 80))
  d.line((left, top, left, bottom), fill=(80, 80, 80))
  d.line((left, bottom, right, bottom), fill=(80, 80, 80))
  groups = []
  for metric in ('R2G', 'G2R', 'JAB'):
    rows = [r for r in result['metrics'] if r['metric'] == metric]
    if rows:
      groups.append((metric, rows))
  slots = sum(len(rows) for _, rows in groups) + len(groups) + 1  # A bar a slot, a gap a group.
  bar_w = (right - left) / slots
  x = left + bar_w
  for metric, rows in groups:
    start = x
    for r in rows:
      color = REAL_COLOR if r['method'] is None else COLORS[methods.index(r['method']) % len(COLORS)]
      y = bottom - (bottom - top) * r['mean']
      d.rectangle((x + 4, y, x + bar_w - 4, bottom), fill=color)
      cx = x + bar_w / 2
      y_lo, y_hi = (bottom - (bottom - top) * r[k] for k in ('low', 'high'))
      d.line((cx, y_lo, cx, y_hi), fill=(20, 20, 20), width=2)
      for yy in (y_lo, y_hi):
        d.line((cx - 6, yy, cx + 6, yy), fill=(20, 20, 20), width=2)
      _center_text(d, (cx, min(y, y_hi) - 18), f'{100 * r["mean"]:.0f}', small)
      x += bar_w
    _center_text(d, ((start + x) / 2, bottom + 10), metric, mid)
    x += bar_w
  lx, ly = left + 10, H - 50  # Legend below the axes.
  entries = ([('real images', REAL_COLOR)] if any(m == 'R2G' for m, _ in groups) else []) + \
      [(m, COLORS[i % len(COLORS)]) for i, m in enumerate(methods)]
  for name, color in entries:
    d.rectangle((lx, ly + 2, lx + 14, ly + 16), fill=color)
    d.text((lx + 20, ly), name, font=mid, fill=(30, 30, 30))
    lx += 40 + d.textlength(name, font=mid)
  d.text((right - 260, H - 24), 'bars: mean; whiskers: 95 % bootstrap CI', font=small, fill=(100, 100, 100))
  return img


def write(result: dict, methods: list[str], path: str, title: str = '') -> str:
  draw(result, methods, title).save(path)
  return path
