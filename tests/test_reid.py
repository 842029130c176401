"""Re-ID (issue 19): Market-1501's protocol against a float64 reference written from its definition, names and
folders, batches, the augmentation writer, and the four-fraction table end to end at a tiny size."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.reid import augment, batches, market, protocol
from tests.test_train import REPO, stage_env


def reference_map(dist, q_pids, q_cams, g_pids, g_cams):
  """Float64 reference from the protocol's text: for each query, walk the ranked gallery (ties in gallery order),
  skip same-id-same-camera and junk, and average precision@rank over the correct matches."""
  aps, rank1 = [], []
  for i in range(len(q_pids)):
    ranked = sorted(range(len(g_pids)), key=lambda j: (dist[i][j], j))
    kept = [j for j in ranked if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]) and g_pids[j] != -1]
    correct = [g_pids[j] == q_pids[i] for j in kept]
    if not any(correct):
      continue
    precisions, hits = [], 0
    for r, c in enumerate(correct, start=1):
      if c:
        hits += 1
        precisions.append(hits / r)
    aps.append(sum(precisions) / len(precisions))
    rank1.append(1.0 if correct[0] else 0.0)
  return sum(aps) / len(aps), sum(rank1) / len(rank1), len(aps)


def test_protocol_hand_made_case():
  # Query 0: person 1, camera 1. Gallery by distance: same id+cam (removed), junk (removed), distractor (wrong),
  # person 1 camera 2 (correct at rank 2), person 2, person 1 camera 3 (correct at rank 4).
  g_pids = [1, -1, 0, 1, 2, 1]
  g_cams = [1, 2, 3, 2, 1, 3]
  dist = np.asarray([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                     [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
  q_pids, q_cams = [1, 3], [1, 1]  # query 1: person 3 has no correct match -> left out
  out = protocol.evaluate(dist, q_pids, q_cams, g_pids, g_cams)
  assert out['queries'] == 1 and out['skipped'] == 1
  assert out['mAP'] == pytest.approx((1 / 2 + 2 / 4) / 2)
  assert out['rank1'] == 0.0 and out['rank5'] == 1.0


def test_protocol_ties_keep_gallery_order():
  out = protocol.evaluate(np.zeros((1, 3)), [5], [1], [7, 5, 5], [2, 2, 3])
  assert out['mAP'] == pytest.approx((1 / 2 + 2 / 3) / 2) and out['rank1'] == 0.0


@pytest.mark.parametrize('seed', range(5))
def test_protocol_matches_the_reference_on_random_cases(seed):
  rng = np.random.default_rng(seed)
  nq, ng = 12, 40
  q_pids, q_cams = rng.integers(1, 6, nq), rng.integers(1, 4, nq)
  g_pids, g_cams = rng.choice([-1, 0, 1, 2, 3, 4, 5], ng), rng.integers(1, 4, ng)
  dist = np.round(rng.uniform(size=(nq, ng)), 1)  # rounded: many ties
  want_map, want_r1, n = reference_map(dist.tolist(), q_pids.tolist(), q_cams.tolist(), g_pids.tolist(),
                                       g_cams.tolist())
  got = protocol.evaluate(dist, q_pids, q_cams, g_pids, g_cams)
  assert got['queries'] == n
  assert got['mAP'] == pytest.approx(want_map, abs=1e-12) and got['rank1'] == pytest.approx(want_r1, abs=1e-12)


def test_distances_closed_form():
  q, g = np.asarray([[3.0, 4.0]]), np.asarray([[0.0, 0.0], [3.0, 4.0], [-3.0, -4.0]])
  np.testing.assert_allclose(protocol.distances(q, g), [[5.0, 0.0, 10.0]], atol=1e-12)
  np.testing.assert_allclose(protocol.distances(q, g[1:], 'cosine'), [[0.0, 2.0]], atol=1e-12)


def test_market_names():
  assert market.parse_name('/x/0002_c1s1_000451_03.jpg') == (2, 1)
  assert market.parse_name('-1_c3s2_012345_00.jpg') == (-1, 3)
  assert market.parse_name('0000_c6s4_002202_07.jpg') == (0, 6)
  with pytest.raises(BadExampleError, match='bad_name.jpg.*PPPP_cCsS_FFFFFF_BB'):
    market.parse_name('/data/query/bad_name.jpg')


def test_folders_skip_other_files_and_name_a_missing_folder(tmp_path):
  d = tmp_path / 'query'
  d.mkdir()
  (d / 'Thumbs.db').write_bytes(b'x')
  (d / '0001_c1s1_000001_01.jpg').write_bytes(b'')
  assert [im.pid for im in market.read_folder(str(tmp_path), 'query')] == [1]
  with pytest.raises(BadExampleError, match='bounding_box_train'):
    market.read_folder(str(tmp_path), 'bounding_box_train')


def test_pk_batches_are_a_function_of_seed_and_step(tmp_path):
  root = str(tmp_path / 'mk')
  market.write_synthetic(root, identities=8, views=3, height=64, width=32, test_fraction=0.25)
  images = market.read_folder(root, 'bounding_box_train')
  labels, table = batches.relabel(images)
  assert sorted(table.values()) == list(range(len(table)))
  from ml_collections import ConfigDict
  rcfg = ConfigDict({'ids_per_batch': 3, 'images_per_id': 2, 'height': 32, 'width': 16, 'flip_prob': 0.5, 'pad': 2,
                     'erase_prob': 0.5})
  a, b = batches.train_batch(images, labels, rcfg, 0, 5), batches.train_batch(images, labels, rcfg, 0, 5)
  np.testing.assert_array_equal(a['images'], b['images'])
  assert a['images'].shape == (6, 32, 16, 3)
  ids = a['labels'].reshape(3, 2)
  assert (ids[:, 0] == ids[:, 1]).all() and len(set(ids[:, 0])) == 3  # P distinct identities, K each
  c = batches.train_batch(images, labels, rcfg, 0, 6)  # another step: other images or other augmentations
  assert not (np.array_equal(c['labels'], a['labels']) and np.array_equal(c['images'], a['images']))
  with pytest.raises(ValueError, match='junk'):
    batches.relabel([market.Image('x', -1, 1)])


def test_augmentation_writer_ids_counts_and_resume(tmp_path, monkeypatch):
  root = str(tmp_path / 'mk')
  market.write_synthetic(root, identities=6, views=3, height=64, width=32, test_fraction=0.5)
  images = market.read_folder(root, 'bounding_box_train')
  from reposedm_jax.data import patn
  poses = patn.read_annotations(os.path.join(root, 'market-annotation-train.csv'), (64, 32))
  calls = []

  def fake_generate(run, rows, *, seed, batch_size):  # the source itself: ids and names are what is tested
    calls.append(len(rows))
    return [r['src'] for r in rows]

  monkeypatch.setattr(augment.engine, 'generate', fake_generate)
  run = type('Run', (), {'hw': (32, 16)})()
  from ml_collections import ConfigDict
  rcfg = ConfigDict({'generated_per_real': 1.5, 'generate_batch': 4, 'generator': 'fake'})
  subset = augment.real_subset(images, 0.5, seed=0)
  assert len(subset) == round(0.5 * len(images))
  out = str(tmp_path / 'gen')
  gen = augment.generate_images(rcfg, run, subset, poses, (64, 32), out, seed=0)
  assert len(gen) == round(1.5 * len(subset)) == sum(calls)
  subset_ids = {im.pid for im in subset}
  for g in gen:
    pid, cam = market.parse_name(g.path)
    assert (pid, cam) == (g.pid, g.cam) and pid in subset_ids and os.path.isfile(g.path)
    assert f's{market.GENERATED_SEQUENCE}_' in os.path.basename(g.path)
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert all(m['target_pose'] in poses for m in manifest['images'])
  calls.clear()
  assert augment.generate_images(rcfg, run, subset, poses, (64, 32), out, seed=0) == gen and not calls  # done


def test_reid_augment_table_end_to_end(tmp_path):
  """A generator trained 2 steps, then the whole table for two fractions from one command (and a rerun skips)."""
  root, gen_dir, work = str(tmp_path / 'data'), str(tmp_path / 'gen'), str(tmp_path / 'reid')
  market.write_synthetic(root, identities=12, views=4, height=64, width=32)
  common = [f'--config.data.root={root}', '--config.data.ann_height=64', '--config.data.ann_width=32',
            '--config.data.height=32', '--config.data.width=16']
  r = subprocess.run([sys.executable, '-m', 'reposedm_jax.main', '--config=configs/market1501.py:runlocal',
                      f'--workdir={gen_dir}'] + common, cwd=REPO, env=stage_env('train'), capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  cmd = [sys.executable, '-m', 'reposedm_jax.main', '--config=configs/market1501_reid.py:runlocal',
         f'--workdir={work}', f'--config.reid.generator={gen_dir}', '--config.reid.fractions=(0.5, 1.0)'] + common
  env = stage_env('reid_augment')  # Many short trainings and generation: faster optimised (stage_env).
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  table = json.load(open(os.path.join(work, 'reid', 'table.json')))
  assert set(table) == {'0.5', '1.0'}
  for p, row in table.items():
    assert row['real']['train_images'] == row['real_images'] == round(float(p) * 24)
    assert row['augmented']['train_images'] == row['real_images'] + row['generated_images']
    assert 0 < row['real']['mAP'] <= 1 and row['real']['queries'] == 6
  assert 'paper, real + RePoseDM: mAP' in open(os.path.join(work, 'reid', 'table.md')).read()
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert again.returncode == 0 and 'Compiling' not in again.stdout + again.stderr  # every stage skipped


def test_a_bad_gallery_name_fails_before_training(tmp_path):
  root = str(tmp_path / 'mk')
  market.write_synthetic(root, identities=4, views=2, height=64, width=32)
  open(os.path.join(root, 'bounding_box_test', 'not_market.jpg'), 'wb').close()
  from configs import market1501_reid
  from reposedm_jax.reid import train
  rcfg = market1501_reid.get_config('runlocal').reid
  with pytest.raises(BadExampleError, match='not_market.jpg'):
    train.train_and_evaluate(rcfg, market.read_folder(root, 'bounding_box_train'), str(tmp_path / 'w'), 0, root)
  assert not os.path.exists(os.path.join(tmp_path, 'w', 'checkpoints'))
