"""File-naming rules of the DeepFashion benchmark tooling (PATN/GFLA/PIDM)."""

import os
import re


def fashion_name(rel_path: str) -> str:
  """'img/MEN/Shirts_Polos/id_00001802/02_4_full.jpg' -> 'fashionMENShirts_Polosid0000180202_4full.jpg'.

  The flat name used by train.lst/test.lst and the PATN CSVs: 'fashion' + gender + category
  (underscores kept) + id folder without its underscore + file name with only its first
  underscore kept. Paths that are already flat (PATN '<split>/<name>') return the name.
  """
  parts = rel_path.replace('\\', '/').split('/')
  if len(parts) < 4 or parts[-4] not in ('MEN', 'WOMEN'):
    return parts[-1]
  gender, category, ident, fname = parts[-4:]
  head, _, rest = fname.partition('_')
  return f"fashion{gender}{category}{ident.replace('_', '')}{head}_{rest.replace('_', '')}"


def output_name(source_key: str, target_key: str) -> str:
  """PIDM's generated-image name: '<src fashion name>_2_<tgt fashion name>_vis.png' (stems only)."""
  src = os.path.splitext(fashion_name(source_key))[0]
  tgt = os.path.splitext(fashion_name(target_key))[0]
  return f'{src}_2_{tgt}_vis.png'


_FASHION_RE = re.compile(r'^fashion(WOMEN|MEN)(.+?)id(\d{8})(\d{2})_(\d)([A-Za-z]+)\.(jpg|png)$')


def parse_fashion_name(name: str) -> str:
  """Inverse of `fashion_name`: 'fashionMENDenimid0000008001_1front.jpg' -> 'img/MEN/Denim/id_00000080/01_1_front.jpg'."""
  m = _FASHION_RE.match(name)
  if m is None:
    raise ValueError(f'not a DeepFashion fashion name: {name!r}')
  gender, category, ident, outfit, view_idx, view, ext = m.groups()
  return f'img/{gender}/{category}/id_{ident}/{outfit}_{view_idx}_{view}.{ext}'
