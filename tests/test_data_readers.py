"""Readers of the real on-disk conventions, on data the synthetic generator writes."""

import glob
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import base
from reposedm_jax.data import deepfashion, images, names, patn, synthetic
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.data.dataset import load_split

H, W = 64, 44


@pytest.fixture(scope='module')
def pidm_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pidm'))
  synthetic.generate(root, seed=3, identities=6, views_per_identity=4, height=H, width=W, fmt='pidm')
  return root


@pytest.fixture(scope='module')
def patn_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('patn'))
  synthetic.generate(root, seed=3, identities=6, views_per_identity=4, height=H, width=W, fmt='patn')
  return root


def data_cfg(root, **kw) -> ml_collections.ConfigDict:
  cfg = base.get_config().data
  cfg.root, cfg.height, cfg.width = root, H, W
  cfg.ann_height, cfg.ann_width = H, W
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def copy_tree(src, tmp_path):
  dst = str(tmp_path / 'ds')
  shutil.copytree(src, dst)
  return dst


def test_pidm_reader_round_trips_generator(pidm_root):
  for split_name in ('train', 'test'):
    split = load_split(data_cfg(pidm_root), split_name)
    with open(os.path.join(pidm_root, f'{split_name}_pairs.txt')) as f:
      lines = [ln.strip().split(',') for ln in f if ln.strip()]
    assert [(p.target, *p.sources) for p in split.pairs] == [tuple(ln) for ln in lines]
    for key in split.image_keys()[:10]:
      txt = os.path.join(pidm_root, 'pose', key[len('img/'):].replace('.jpg', '.txt'))
      np.testing.assert_array_equal(split.keypoints[key], np.loadtxt(txt).astype(np.float32))
      png = os.path.join(pidm_root, key.replace('.jpg', '.png'))
      np.testing.assert_array_equal(split.images.read(key), np.asarray(Image.open(png).convert('RGB')))


def test_pidm_and_patn_agree(pidm_root, patn_root):
  """The same seed in both formats gives the same pairs' keypoints at model resolution (PATN rounds to ints)."""
  from reposedm_jax.data import pipeline
  a = load_split(data_cfg(pidm_root), 'test')
  b = load_split(data_cfg(patn_root, format='patn', csv_prefix='fasion-resize'), 'test')
  by_name = {(names.fashion_name(p.sources[0]), names.fashion_name(p.target)): p for p in a.pairs}
  assert len(by_name) == len(b.pairs)
  for pb in b.pairs[:8]:
    key = (pb.sources[0].split('/', 1)[1], pb.target.split('/', 1)[1])
    pa = by_name[key]
    ia, ka = pipeline.load_view(a, pa.target, (H, W), None, 0.0)
    ib, kb = pipeline.load_view(b, pb.target, (H, W), None, 0.0)
    missing = ka[:, 0] == -1
    np.testing.assert_array_equal(missing, kb[:, 0] == -1)
    np.testing.assert_allclose(ka[~missing], kb[~missing], atol=0.51)
    assert np.abs(ia.astype(float) - ib.astype(float)).mean() < 6.0  # PATN images are JPEG.


def test_lmdb_store_matches_folder(pidm_root, tmp_path):
  split = load_split(data_cfg(pidm_root), 'test')
  keys = split.image_keys()
  lmdb_dir = str(tmp_path / '256-256')
  images.write_lmdb(lmdb_dir, pidm_root, keys)
  store = images.LmdbImages(lmdb_dir)
  assert len(store) == len(keys)
  for key in keys[:5]:
    np.testing.assert_array_equal(store.read(key), split.images.read(key))
  lsplit = load_split(data_cfg(pidm_root, image_source='lmdb', lmdb_path=lmdb_dir), 'test')
  assert len(lsplit) == len(split)
  with pytest.raises(BadExampleError, match='LMDB key missing'):
    store.read('img/MEN/Denim/id_99999999/01_1_front.jpg')


def test_fashion_name_rule_on_real_names():
  here = os.path.dirname(__file__)
  with open(os.path.join(here, 'data', 'deepfashion_lst_excerpt.txt')) as f:
    real = [ln.strip() for ln in f if ln.strip()]
  for n in real:
    assert names.fashion_name(names.parse_fashion_name(n)) == n
  assert names.fashion_name('img/MEN/Shirts_Polos/id_00001802/02_4_full.jpg') == \
      'fashionMENShirts_Polosid0000180202_4full.jpg'


# ----------------------------------------------------------------------------- bad input

def _first_pose_file(root):
  with open(os.path.join(root, 'train_pairs.txt')) as f:
    key = f.readline().split(',')[0]
  return key, deepfashion.pose_path(root, key)


def test_pairs_line_naming_missing_image(pidm_root, tmp_path):
  root = copy_tree(pidm_root, tmp_path)
  with open(os.path.join(root, 'train_pairs.txt'), 'a') as f:
    f.write('img/MEN/Denim/id_09999991/01_1_front.jpg,img/MEN/Denim/id_09999992/01_1_front.jpg\n')
  n_lines = sum(1 for _ in open(os.path.join(root, 'train_pairs.txt')))
  with pytest.raises(BadExampleError, match=rf'train_pairs.txt:{n_lines}:.*image.*not found'):
    load_split(data_cfg(root), 'train')
  split = load_split(data_cfg(root, on_bad_example='skip'), 'train')
  assert split.skipped.total == 1  # The pair goes with its missing target.
  assert all(p.target != 'img/MEN/Denim/id_09999991/01_1_front.jpg' for p in split.pairs)


@pytest.mark.parametrize('content,pattern', [
    ('1 2\n' * 17, 'expected 18 keypoint rows, found 17'),
    ('1 2\n' * 5 + '1 abc\n' + '1 2\n' * 12, r":6: field 'y': non-numeric value 'abc'"),
    ('1 2 3\n' + '1 2\n' * 17, r":1: field 'columns'"),
    ('1 2\n' * 3 + '300 20\n' + '1 2\n' * 14, r":4: field 'keypoints': keypoint 3 .*outside"),
    ('1 2\n' * 6 + 'nan 3\n' + '1 2\n' * 11, r":7: field 'x': non-finite value 'nan'"),
    ('-1 -1\n' * 18, r"field 'keypoints': 0 visible joints, fewer than data.min_visible_joints=1"),
])
def test_bad_pose_file(pidm_root, tmp_path, content, pattern):
  root = copy_tree(pidm_root, tmp_path)
  _, path = _first_pose_file(root)
  with open(path, 'w') as f:
    f.write(content)
  with pytest.raises(BadExampleError, match=pattern):
    load_split(data_cfg(root), 'train')
  split = load_split(data_cfg(root, on_bad_example='skip'), 'train')
  assert split.skipped.total >= 1
  key, _ = _first_pose_file(root)
  assert all(key != p.target and key not in p.sources for p in split.pairs)


def test_truncated_image(pidm_root, tmp_path):
  from reposedm_jax.data import pipeline
  root = copy_tree(pidm_root, tmp_path)
  key, _ = _first_pose_file(root)
  png = os.path.join(root, key.replace('.jpg', '.png'))
  data = open(png, 'rb').read()
  with open(png, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(BadExampleError, match='truncated'):
    load_split(data_cfg(root, validate_images=True), 'train')
  # Without start-up decoding, the loader raises when it meets the file, naming the pair.
  split = load_split(data_cfg(root), 'train')
  idx = next(i for i, p in enumerate(split.pairs) if p.target == key)
  with pytest.raises(BadExampleError, match=r'truncated.*pair at .*train_pairs.txt:\d+'):
    pipeline.make_example(split, idx, (H, W), pipeline.Augment(), None, both_directions=False)


def test_csv_wrong_header_and_empty_split(patn_root, tmp_path):
  root = copy_tree(patn_root, tmp_path)
  path = os.path.join(root, 'fasion-resize-pairs-test.csv')
  lines = open(path).read().splitlines()
  with open(path, 'w') as f:
    f.write('source,target\n' + '\n'.join(lines[1:]) + '\n')
  cfg = data_cfg(root, format='patn')
  with pytest.raises(BadExampleError, match=r"pairs-test.csv:1: field 'header': wrong header"):
    load_split(cfg, 'test')
  with open(path, 'w') as f:
    f.write('from,to\n')
  with pytest.raises(BadExampleError, match='empty split'):
    load_split(cfg, 'test')
  ann = os.path.join(root, 'fasion-resize-annotation-test.csv')
  rows = open(ann).read().splitlines()
  with open(ann, 'w') as f:
    f.write('\n'.join([rows[0], rows[1].rsplit(':', 1)[0] + ': [1, 2]'] + rows[2:]) + '\n')
  with pytest.raises(BadExampleError, match=r"annotation-test.csv:2: field 'keypoints_x': expected a list of 18"):
    load_split(cfg, 'test')


def test_misspelling_accepted(patn_root, tmp_path):
  root = copy_tree(patn_root, tmp_path)
  for f in os.listdir(root):
    if f.startswith('fasion-'):
      os.rename(os.path.join(root, f), os.path.join(root, 'fashion-' + f[len('fasion-'):]))
  assert len(load_split(data_cfg(root, format='patn', csv_prefix='fasion-resize'), 'test')) > 0
  assert patn.csv_path(root, 'fashion-resize', 'pairs', 'test').endswith('fashion-resize-pairs-test.csv')


def test_skip_mode_skips_malformed_pairs_lines_and_keeps_the_rest(pidm_root, tmp_path):
  root = copy_tree(pidm_root, tmp_path)
  path = os.path.join(root, 'train_pairs.txt')
  good = [ln for ln in open(path).read().splitlines() if ln.strip()]
  with open(path, 'w') as f:
    f.write('\n'.join(good[:2] + ['only_one_field.jpg', 'a.jpg,,b.jpg'] + good[2:]) + '\n')
  with pytest.raises(BadExampleError, match=r"train_pairs.txt:3: field 'pair'"):
    load_split(data_cfg(root), 'train')
  split = load_split(data_cfg(root, on_bad_example='skip'), 'train')
  assert split.skipped.total == 2
  assert [(p.target, *p.sources) for p in split.pairs] == [tuple(ln.split(',')) for ln in good]


def test_min_visible_joints_is_configurable(pidm_root, tmp_path):
  root = copy_tree(pidm_root, tmp_path)
  _, path = _first_pose_file(root)
  rows = open(path).read().splitlines()
  with open(path, 'w') as f:  # two visible joints
    f.write('\n'.join(rows[:2] + ['-1 -1'] * 16) + '\n')
  assert len(load_split(data_cfg(root), 'train')) > 0
  with pytest.raises(BadExampleError, match='2 visible joints, fewer than data.min_visible_joints=3'):
    load_split(data_cfg(root, min_visible_joints=3), 'train')


def test_patn_skip_mode_skips_malformed_rows(patn_root, tmp_path):
  root = copy_tree(patn_root, tmp_path)
  cfg = data_cfg(root, format='patn', on_bad_example='skip')
  before = load_split(cfg, 'test')
  pairs_path = os.path.join(root, 'fasion-resize-pairs-test.csv')
  rows = open(pairs_path).read().splitlines()
  with open(pairs_path, 'w') as f:
    f.write('\n'.join(rows[:2] + ['just_one_name.jpg'] + rows[2:]) + '\n')
  ann = os.path.join(root, 'fasion-resize-annotation-test.csv')
  arows = open(ann).read().splitlines()
  victim = arows[1].split(':')[0].strip()
  with open(ann, 'w') as f:
    f.write('\n'.join([arows[0], victim + ': [1, 2] : [3]', victim + '_x: ' + ':'.join(['[-1]' * 1] * 2)]
                       + arows[2:]) + '\n')
  with pytest.raises(BadExampleError, match=r"pairs-test.csv:3: field 'pair'|annotation-test.csv:2"):
    load_split(data_cfg(root, format='patn'), 'test')
  split = load_split(cfg, 'test')
  assert split.skipped.total >= 3  # two annotation rows, one pairs row (+ pairs that lose the victim's pose)
  kept = [p for p in before.pairs if victim not in p.target and all(victim not in s for s in p.sources)]
  assert [(p.target, p.sources) for p in split.pairs] == [(p.target, p.sources) for p in kept]


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped():
  import io
  values = (np.arange(64).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
  buf = io.BytesIO()
  Image.fromarray(values).save(buf, format='PNG')
  rgb = images.decode_image(buf.getvalue(), 'grey16.png')
  assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))
  assert rgb.min() == 0 and 0 < np.median(rgb) < 255  # not the all-white image convert('RGB') gives


def test_decompression_bomb_is_a_bad_example(monkeypatch):
  import io
  buf = io.BytesIO()
  Image.new('RGB', (64, 64)).save(buf, format='PNG')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 4096 px > 2 x 1000: Pillow's hard refusal
  with pytest.raises(BadExampleError, match=r"huge.png: field 'image': image too large to decode"):
    images.decode_image(buf.getvalue(), 'huge.png')


def test_a_decompression_bomb_is_skipped_and_counted_in_skip_mode(tmp_path, monkeypatch, caplog):
  """One oversized test image (Pillow refuses it) in skip mode: its pairs are skipped and counted, the rest load."""
  from configs import demo
  from reposedm_jax.data import dataset, pipeline, synthetic
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=0, identities=6, views_per_identity=2, height=32, width=22, fmt='pidm')
  config = demo.get_config('runlocal')
  config.data.root, config.data.height, config.data.width = root, 32, 22
  config.data.on_bad_example = 'skip'
  split = dataset.load_split(config.data, 'test')
  bad = split.pairs[0].target
  (path,) = [p for p in glob.glob(os.path.join(root, os.path.splitext(bad)[0]) + '.*')]
  Image.new('RGB', (100, 100)).save(path)  # 10000 px > 2 x MAX_IMAGE_PIXELS: DecompressionBombError
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  with caplog.at_level('WARNING'):
    rows = sum(int(b['valid'].sum()) for b in pipeline.iterate_eval(config.data, split, 4))
  involved = sum(bad in (p.target, p.sources[0]) for p in split.pairs)
  assert involved >= 1 and rows == len(split.pairs) - involved
  assert f'skipped {involved}' in caplog.text and 'too large' in caplog.text
