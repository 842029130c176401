"""The synthetic benchmark generator: on-disk layout, pairs, determinism and what the pictures hold."""

import hashlib
import io
import itertools
import json
import os
import re

import cv2
import numpy as np
import pytest

from reposedm_jax.data import keypoints as kpl
from reposedm_jax.data import synthetic, synthetic_draw
from reposedm_jax.data import names

H, W = 64, 44
SEED, N_IDS, K = 11, 8, 5
ARGS = dict(seed=SEED, identities=N_IDS, views_per_identity=K, height=H, width=W, test_fraction=0.25)

IMG_RE = re.compile(r'^img/(MEN|WOMEN)/[A-Z][A-Za-z_]+/id_\d{8}/\d{2}_(1_front|2_side|3_back|4_full|7_additional)'
                    r'\.png$')


def walk(root):
  """Sorted relative paths of all files under root."""
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, f), root).replace(os.sep, '/') for f in files]
  return sorted(out)


def read_lines(path):
  with open(path) as f:
    return [ln.rstrip('\n') for ln in f]


def identity_of(rel):
  return rel.split('/')[3]


def view_of(rel):
  return rel.rsplit('/', 1)[1].split('.')[0][3:]  # '01_2_side.png' -> '2_side'


def pose_of(root, rel):
  """Pose file of an image path -> keypoints in image pixels (-1 kept)."""
  kp = np.loadtxt(os.path.join(root, 'pose', rel[len('img/'):].rsplit('.', 1)[0] + '.txt'))
  px = np.stack([(kp[:, 0] - 40) * W / 176, kp[:, 1] * H / 256], 1)
  px[kpl.is_missing(kp)] = -1
  return px


@pytest.fixture(scope='module')
def pidm(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pidm'))
  counts = synthetic.generate(root, **ARGS)
  return root, counts


@pytest.fixture(scope='module')
def patn(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('patn'))
  counts = synthetic.generate(root, fmt='patn', **ARGS)
  return root, counts


def images_of(root):
  return [p for p in walk(root) if p.startswith('img/')]


# ----------------------------------------------------------------------------- layout

def test_layout_and_pose_files(pidm):
  root, counts = pidm
  imgs = images_of(root)
  assert len(imgs) == N_IDS * K == counts['images']
  for rel in imgs:
    assert IMG_RE.match(rel), rel
  assert len({identity_of(r) for r in imgs}) == N_IDS
  assert sorted(view_of(r) for r in imgs if identity_of(r) == identity_of(imgs[0])) == \
      ['1_front', '2_side', '3_back', '4_full', '7_additional']
  poses = [p for p in walk(root) if p.startswith('pose/')]
  assert sorted(p[len('pose/'):-4] for p in poses) == sorted(r[len('img/'):-4] for r in imgs)
  n_missing = 0
  for rel in imgs:
    im = cv2.imread(os.path.join(root, rel), cv2.IMREAD_UNCHANGED)
    assert im.shape == (H, W, 3) and im.dtype == np.uint8
    path = os.path.join(root, 'pose', rel[len('img/'):-4] + '.txt')
    kp = np.loadtxt(path)
    assert kp.shape == (18, 2)
    with open(path) as f:  # np.savetxt's default bytes, as in the real pose.rar
      text = f.read()
    buf = io.BytesIO()
    np.savetxt(buf, kp)
    assert text == buf.getvalue().decode()
    miss = (kp == -1).any(1)
    assert (kp[miss] == -1).all(), rel  # a missing row is exactly "-1 -1"
    n_missing += miss.sum()
    present = kp[~miss]
    assert ((present[:, 0] >= 40) & (present[:, 0] <= 216)).all(), rel
    assert ((present[:, 1] >= 0) & (present[:, 1] <= 256)).all(), rel
    assert not miss[[1, 2, 5, 8, 11]].any(), rel  # neck, shoulders and hips are always seen
  assert n_missing > 0
  with open(os.path.join(root, 'synthetic_meta.json')) as f:
    meta = json.load(f)
  assert meta['counts'] == counts and meta['args']['identities'] == N_IDS and meta['args']['format'] == 'pidm'


def test_person_fills_the_frame(pidm):
  """Full-body figures like DeepFashion: neck in the upper part, feet near the bottom, light backdrop."""
  root, _ = pidm
  for rel in images_of(root):
    kp = pose_of(root, rel)
    im = cv2.imread(os.path.join(root, rel))
    assert kp[1, 1] < 0.42 * H, rel
    assert kp[~kpl.is_missing(kp), 1].max() > 0.7 * H, rel
    assert im[0, 0].min() > 190 and im[0, -1].min() > 190, rel  # corners show the backdrop


# ----------------------------------------------------------------------------- pairs and lists

def test_pairs_and_lists(pidm):
  root, counts = pidm
  imgs = images_of(root)
  by_id = {}
  for r in imgs:
    by_id.setdefault(identity_of(r), []).append(r[:-4] + '.jpg')
  train = [ln.split(',') for ln in read_lines(os.path.join(root, 'train_pairs.txt'))]
  test = [ln.split(',') for ln in read_lines(os.path.join(root, 'test_pairs.txt'))]
  assert len(train) == counts['train_pairs'] and len(test) == counts['test_pairs']
  for line in train + test:
    for p in line:
      assert p.endswith('.jpg') and os.path.isfile(os.path.join(root, p[:-4] + '.png')), p
      assert identity_of(p) == identity_of(line[0])  # pairs never mix people
    assert line[0] not in line[1:]
  train_ids = {identity_of(ln[0]) for ln in train}
  test_ids = {identity_of(ln[0]) for ln in test}
  assert train_ids.isdisjoint(test_ids)
  assert train_ids | test_ids == set(by_id)
  assert len(test_ids) == round(N_IDS * 0.25)
  # Train: each image once as the target (field 0), followed by every other view of that person.
  targets = [ln[0] for ln in train]
  assert sorted(targets) == sorted(p for i in train_ids for p in by_id[i])
  for ln in train:
    assert sorted(ln[1:]) == sorted(p for p in by_id[identity_of(ln[0])] if p != ln[0])
  # Test: "target,source" for all ordered pairs within a test identity.
  assert all(len(ln) == 2 for ln in test)
  assert sorted(map(tuple, test)) == sorted((t, s) for i in test_ids for t in by_id[i] for s in by_id[i] if t != s)
  for split, ids in (('train', train_ids), ('test', test_ids)):
    lst = read_lines(os.path.join(root, f'{split}.lst'))
    assert sorted(lst) == sorted(names.fashion_name(p) for i in ids for p in by_id[i])
    assert counts[f'{split}_images'] == len(lst)


def test_fashion_name():
  assert names.fashion_name('img/MEN/Shirts_Polos/id_00001802/02_4_full.jpg') == \
      'fashionMENShirts_Polosid0000180202_4full.jpg'
  # A line of the real train.lst, and an absolute path (only the last four parts count).
  assert names.fashion_name('img/WOMEN/Tees_Tanks/id_00007838/05_7_additional.jpg') == \
      'fashionWOMENTees_Tanksid0000783805_7additional.jpg'
  assert names.fashion_name('/data/df/img/MEN/Denim/id_00000080/01_1_front.png') == \
      'fashionMENDenimid0000008001_1front.png'


def test_split_identities():
  for n, frac, want in ((2, 0.0, 1), (2, 0.9, 1), (10, 0.2, 2), (1, 0.5, 0), (7, 0.5, 4)):
    is_test = synthetic.split_identities(0, n, frac)
    assert is_test.sum() == want, (n, frac)
  assert not np.array_equal(synthetic.split_identities(0, 20, 0.2), synthetic.split_identities(1, 20, 0.2))


# ----------------------------------------------------------------------------- determinism

def digests(root):
  out = {}
  for rel in walk(root):
    with open(os.path.join(root, rel), 'rb') as f:
      out[rel] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_determinism(pidm, tmp_path):
  root, _ = pidm
  again = str(tmp_path / 'again')
  synthetic.generate(again, **ARGS)
  assert digests(again) == digests(root)
  other = str(tmp_path / 'other')
  synthetic.generate(other, **{**ARGS, 'seed': SEED + 1})
  a = {h for p, h in digests(root).items() if p.endswith('.png')}
  b = {h for p, h in digests(other).items() if p.endswith('.png')}
  assert len(a) == len(b) == N_IDS * K and not a & b


def test_order_independent(pidm):
  """One view rendered alone equals the file written among all others."""
  root, _ = pidm
  rel = next(r for r in images_of(root) if '/id_00000004/' in r and r.endswith('/01_3_back.png'))
  ident = int(identity_of(rel)[3:]) - 1
  view = [synthetic.view_file_stem(v) for v in range(K)].index(rel.rsplit('/', 1)[1][:-4])
  app = synthetic_draw.make_appearance(SEED, ident, H)
  image, kp = synthetic_draw.render_view(app, SEED, ident, view, H, W)
  np.testing.assert_array_equal(cv2.imread(os.path.join(root, rel))[..., ::-1], image)
  np.testing.assert_allclose(pose_of(root, rel), kp, atol=1e-9)


# ----------------------------------------------------------------------------- content

def test_same_clothes_across_views(pidm):
  """Torso colour (mid-way between neck and hips) agrees within a person far better than across people."""
  root, _ = pidm
  colours = {}
  for rel in images_of(root):
    kp = pose_of(root, rel)
    if kpl.is_missing(kp[[1, 8, 11]]).any():
      continue
    x, y = np.round((kp[1] + (kp[8] + kp[11]) / 2) / 2).astype(int)
    patch = cv2.imread(os.path.join(root, rel))[y - 1:y + 2, x - 1:x + 2, ::-1]
    colours[rel] = np.median(patch.reshape(-1, 3).astype(float), 0)  # median: robust to a stripe edge
  same, diff = [], []
  for a, b in itertools.combinations(colours, 2):
    (same if identity_of(a) == identity_of(b) else diff).append(np.linalg.norm(colours[a] - colours[b]))
  assert len(colours) == N_IDS * K
  assert np.mean(same) < 0.5 * np.mean(diff), (np.mean(same), np.mean(diff))


def test_face_keypoints_follow_the_view(pidm):
  root, _ = pidm
  for rel in images_of(root):
    miss = kpl.is_missing(pose_of(root, rel))
    view = view_of(rel)
    if view == '3_back':
      assert miss[[0, 14, 15]].all(), rel  # no face from behind
      assert not miss[[16, 17]].all(), rel  # but the ears show
    elif view == '2_side':
      assert miss[16] or miss[17], rel  # the far ear is hidden
      assert not (miss[14] and miss[15]), rel  # the near eye is seen
    elif view in ('1_front', '4_full'):
      assert not miss[[0, 14, 15]].any(), rel  # facing the camera


def test_occlusion_rules():
  """Over many renders: a hidden elbow/wrist/knee/ankle lies over the body's core (torso or head), the far
  arm of profiles is often hidden, front views rarely hide limbs, and arms in front keep their joints."""
  hidden = {'side': 0, 'front': 0, 'crossed_front_wrists': 0, 'crossed_front': 0}
  for ident in range(30):
    app = synthetic_draw.make_appearance(3, ident, H)
    for v in range(5):
      image, kp, info = synthetic_draw.render_view(app, 3, ident, v, H, W, return_info=True)
      full = info['keypoints_all']
      miss = kpl.is_missing(kp)
      present = ~miss
      np.testing.assert_array_equal(kp[present], full[present])
      assert not miss[[1, 2, 5, 8, 11]].any()
      # The core: a box around shoulders, hips and head, widened by a head's width.
      core = full[[1, 2, 5, 8, 11, 0, 16, 17]]
      pad = 0.12 * H
      lo, hi = core.min(0) - pad, core.max(0) + pad
      for j in (3, 4, 6, 7, 9, 10, 12, 13):
        if miss[j]:
          assert (lo <= full[j]).all() and (full[j] <= hi).all(), (ident, v, j)
      arm_hidden = bool(miss[[3, 4, 6, 7]].any())
      if v == 1:
        hidden['side'] += arm_hidden
      if v in (0, 3):
        hidden['front'] += arm_hidden
        if info['family'] == 'crossed':
          hidden['crossed_front'] += 1
          hidden['crossed_front_wrists'] += int(present[[4, 7]].all())
  assert hidden['side'] >= 8, hidden
  assert hidden['front'] < hidden['side'], hidden
  assert hidden['crossed_front'] > 0 and hidden['crossed_front_wrists'] == hidden['crossed_front'], hidden


# ----------------------------------------------------------------------------- PATN format

def test_patn_format(patn, pidm):
  root, counts = patn
  proot, _ = pidm
  row_re = re.compile(r'^(fashion(?:MEN|WOMEN)\S+\.jpg): (\[[-0-9, ]+\]): (\[[-0-9, ]+\])$')
  pidm_by_name = {names.fashion_name(r[:-4] + '.jpg'): r for r in images_of(proot)}
  for split in ('train', 'test'):
    files = sorted(os.listdir(os.path.join(root, split)))
    assert files == sorted(read_lines(os.path.join(root, f'{split}.lst')))
    assert len(files) == counts[f'{split}_images']
    for f in files[:3]:
      with open(os.path.join(root, split, f), 'rb') as fh:
        assert fh.read(3) == b'\xff\xd8\xff'  # real JPEG bytes under the .jpg name
    ann = read_lines(os.path.join(root, f'fasion-resize-annotation-{split}.csv'))
    assert ann[0] == 'name:keypoints_y:keypoints_x'
    assert len(ann) - 1 == len(files)
    for row in ann[1:]:
      m = row_re.match(row)
      assert m, row
      name, ys, xs = m.group(1), json.loads(m.group(2)), json.loads(m.group(3))
      assert name in files and len(ys) == len(xs) == 18
      assert all(isinstance(v, int) for v in ys + xs)
      for y, x in zip(ys, xs):
        assert (y == -1) == (x == -1)
        assert y == -1 or (0 <= y < H and 0 <= x < W)
      # Same seed, same people: PATN's integer keypoints are the PIDM ones rounded.
      ref = pose_of(proot, pidm_by_name[name])
      got = np.array([xs, ys], float).T
      np.testing.assert_array_equal(got == -1, ref == -1)
      np.testing.assert_allclose(got[got != -1], ref[ref != -1], atol=0.5 + 1e-6)
    pairs = read_lines(os.path.join(root, f'fasion-resize-pairs-{split}.csv'))
    assert pairs[0] == 'from,to'
    assert len(pairs) - 1 == counts[f'{split}_pairs'] > 0
    for row in pairs[1:]:
      src, tgt = row.split(',')
      assert src != tgt and src in files and tgt in files
      assert src[:src.index('id') + 10] == tgt[:tgt.index('id') + 10]  # same gender/category/id
  with open(os.path.join(root, 'synthetic_meta.json')) as f:
    assert json.load(f)['args']['format'] == 'patn'


# ----------------------------------------------------------------------------- CLI and grid

def test_cli_and_grid(tmp_path, capsys):
  out, grid = str(tmp_path / 'cli'), str(tmp_path / 'grid.png')
  synthetic.main(['--out', out, '--seed', '2', '--identities', '3', '--views-per-identity', '2',
                  '--height', str(H), '--width', str(W), '--grid', grid, '--grid-identities', '2'])
  text = capsys.readouterr().out
  assert 'wrote 6 images' in text and 'images/s' in text
  assert len(images_of(out)) == 6
  g = cv2.imread(grid)
  assert g.shape == (4 * H + 3 * 2, 5 * W + 4 * 2, 3)  # two identities, image row + keypoint row each
  with pytest.raises(ValueError, match='fmt'):
    synthetic.generate(out, **{**ARGS, 'fmt': 'lmdb'})


# ----------------------------------------------------------------------------- difficulty='hard'

def test_standard_difficulty_is_the_original_benchmark_byte_for_byte():
  # Digest of 2 identities x 5 views at 64x44 (seed 0) as rendered before `difficulty` existed: the demo
  # data and every measurement made on it stay reproducible.
  h = hashlib.sha256()
  for i in range(2):
    app = synthetic_draw.make_appearance(0, i, 64)
    for v in range(5):
      im, kp = synthetic_draw.render_view(app, 0, i, v, 64, 44)
      h.update(im.tobytes())
      h.update(kp.tobytes())
  assert h.hexdigest() == 'b1cb393391861b13a7ac2a644ccce0159d7994d484e0b9ec91ce12702c4091ed'


def test_hard_pairs_move_the_joints_by_a_quarter_of_the_height(tmp_path):
  args = dict(seed=3, identities=30, views_per_identity=5, height=64, width=44, test_fraction=1.0)
  std = synthetic.generate(str(tmp_path / 'std'), **args)
  hard = synthetic.generate(str(tmp_path / 'hard'), difficulty='hard', **args)
  assert std['test_pair_displacement'] < 0.2 <= 0.24 <= hard['test_pair_displacement']
  with open(tmp_path / 'hard' / 'synthetic_meta.json') as f:
    assert json.load(f)['args']['difficulty'] == 'hard'


def test_hard_close_ups_cut_the_legs_and_keep_the_head():
  ankles, heads = [], []
  for i in range(12):
    app = synthetic_draw.make_appearance(0, i, 64)
    im, kp = synthetic_draw.render_view(app, 0, i, 4, 64, 44, difficulty='hard')  # 01_7_additional
    ankles.append(kpl.is_missing(kp[[10, 13]]).all())
    heads.append(not kpl.is_missing(kp[[0, 1]]).any() or not kpl.is_missing(kp[[1, 16, 17]]).all())
    assert im.shape == (64, 44, 3)
  assert np.mean(ankles) >= 0.9 and all(heads)


def test_a_bad_difficulty_names_the_choices():
  app = synthetic_draw.make_appearance(0, 0, 64)
  with pytest.raises(ValueError, match="difficulty must be one of \\('standard', 'hard'\\)"):
    synthetic_draw.render_view(app, 0, 0, 0, 64, 44, difficulty='extreme')
