"""`study build` (reposedm_jax/study/build.py, page.py, stimuli.py): files, leaks, determinism, input errors."""

import collections
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from reposedm_jax.data import deepfashion, names
from reposedm_jax.study import __main__ as cli
from reposedm_jax.study import stimuli
from tests import study_helpers as sh


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  return sh.make_folders(str(tmp_path_factory.mktemp('study_data')))


@pytest.fixture(scope='module')
def study(folders, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('study'))
  return out, sh.build_study(folders, out)


def _page_data(out: str) -> dict:
  with open(os.path.join(out, 'page', 'index.html')) as f:
    text = f.read()
  m = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', text, re.S)
  return json.loads(m.group(1))


def _shown(trial: dict) -> list[str]:
  if trial['block'] == 'rg':
    return [trial['image']]
  return [trial['source_image'], trial['pose_image']] + [c['image'] for c in trial['candidates']]


def test_files_and_hash_names(study):
  out, plan = study
  with open(os.path.join(out, 'trials.json')) as f:
    assert json.load(f) == json.loads(json.dumps(plan))
  files = sorted(os.listdir(os.path.join(out, 'page', 'img')))
  assert files == sorted(f'{h}.png' for h in plan['images'])
  assert all(re.fullmatch(r'[0-9a-f]{16}\.png', f) for f in files)
  for f in files[:5]:
    with Image.open(os.path.join(out, 'page', 'img', f)) as im:
      assert im.size == (44, 64) and im.format == 'PNG' and not im.info.get('text')
  assert plan['size'] == [64, 44]
  assert len(plan['trials']) == 6 + 9 + 2 + 2 + 6 + 2 + 2
  shown = {h for t in plan['trials'] for h in _shown(t)}
  assert shown == set(plan['images'])


def test_no_image_twice_in_a_block(study):
  _, plan = study
  for block in ('rg', 'cmp'):
    hashes = [h for t in plan['trials'] if t['block'] == block for h in _shown(t)]
    assert len(hashes) == len(set(hashes)), block
  counts = collections.Counter((v['role'], v['method']) for v in plan['images'].values())
  # 6 real + 1 real practice + 2 scrambled checks; 3 generated + the practice one for 'ours'.
  assert counts[('real', None)] == 7 + 2  # + the intact targets of the 2 comparison checks
  assert counts[('generated', 'ours')] == 3 + 1 + 6 + 2
  assert counts[('generated', 'PIDM')] == 3 + 6 + 2
  assert counts[('pose', None)] == counts[('source', None)] == 6 + 2 + 2


def test_page_knows_nothing_about_methods_truth_or_checks(study, folders):
  out, plan = study
  data = _page_data(out)
  assert data['study_id'] == plan['study_id'] and data['candidates'] == 3
  assert [t['id'] for t in data['trials']] == [t['id'] for t in plan['trials']]
  text = json.dumps(data)
  for word in ('ours', 'PIDM', 'CFLD', 'truth', 'method', 'catch', 'correct', 'scrambled', '_vis', 'img/', '.jpg'):
    assert word not in text, word
  for t in data['trials']:
    assert set(t) <= {'id', 'block', 'practice', 'image', 'source', 'pose', 'candidates'}
  with open(os.path.join(out, 'page', 'index.html')) as f:
    html = f.read()
  assert 'http://' not in html and 'https://' not in html  # Self-contained: nothing fetched from a network.
  for path in list(folders['generated'].values()) + [folders['data']]:
    assert path not in html


def test_catch_images_are_scrambles_and_poses_are_drawn(study, folders):
  out, plan = study

  def load(h):
    return np.asarray(Image.open(os.path.join(out, 'page', 'img', f'{h}.png')))
  for t in plan['trials']:
    target = stimuli.read_rgb(os.path.join(folders['data'], t['target'][:-4] + '.png'))
    if t['block'] == 'rg' and t['catch']:
      img = load(t['image'])
      assert not np.array_equal(img, target)
      assert sorted(img.reshape(-1, 3).tolist()) == sorted(target.reshape(-1, 3).tolist())  # Same pixels, moved.
    if t['block'] == 'cmp':
      pose = load(t['pose_image'])
      assert (pose.sum(-1) == 0).mean() > 0.5  # A skeleton on black, not a photo.
      if t['catch']:
        assert np.array_equal(load(t['correct']), target)


def test_same_seed_same_study(study, folders, tmp_path):
  out, plan = study
  again = sh.build_study(folders, str(tmp_path / 'again'))
  assert again['study_id'] == plan['study_id']
  assert again['trials'] == plan['trials'] and again['images'] == plan['images']
  with open(os.path.join(out, 'page', 'index.html')) as a, open(tmp_path / 'again' / 'page' / 'index.html') as b:
    assert a.read() == b.read()
  other = sh.build_study(folders, str(tmp_path / 'other'), dataclasses.replace(sh.DESIGN, seed=1))
  assert other['study_id'] != plan['study_id']


def test_csv_and_manifest_pairs_give_the_same_study(study, folders, tmp_path):
  _, plan = study
  pairs = deepfashion.read_pairs_txt(folders['pairs'])
  csv = tmp_path / 'pairs.csv'
  csv.write_text('from,to\n' + ''.join(f'{p.sources[0]},{p.target}\n' for p in pairs))
  a = sh.build_study(folders, str(tmp_path / 'csv'), inputs_kw={'pairs': str(csv)})
  manifest = tmp_path / 'manifest_p0.jsonl'
  manifest.write_text(''.join(json.dumps({'name': names.output_name(p.sources[0], p.target),
                                          'source': p.sources[0], 'target': p.target}) + '\n' for p in pairs))
  b = sh.build_study(folders, str(tmp_path / 'jsonl'), inputs_kw={'pairs': str(manifest)})
  assert a['study_id'] == b['study_id'] == plan['study_id']


def test_pose_from_target(folders, tmp_path):
  plan = sh.build_study(folders, str(tmp_path / 's'), inputs_kw={'keypoints': '', 'pose_from_target': True})
  assert plan['pose'] == 'target image'
  for t in plan['trials']:
    if t['block'] == 'cmp':
      assert plan['images'][t['pose_image']]['role'] == 'pose-target'


def _cli(capsys, *args) -> tuple[int, str]:
  rc = cli.main(list(args))
  return rc, capsys.readouterr().err.strip()


def _build_args(folders, out, *extra):
  gen = [f'{m}={d}' for m, d in folders['generated'].items()]
  return ['build', '--real', folders['data'], '--generated', *gen, '--pairs', folders['pairs'], '--out', out,
          '--keypoints', folders['data'], '--real-count', '6', '--generated-count', '3', '--sets', '6', *extra]


def test_cli_build_and_its_errors(folders, tmp_path, capsys):
  out = str(tmp_path / 'cli')
  assert _cli(capsys, *_build_args(folders, out)) == (0, '')
  rc, err = _cli(capsys, *_build_args(folders, out))
  assert rc == 2 and err.startswith(f'study build: error: {out}/trials.json: a study is already there')
  assert _cli(capsys, *_build_args(folders, out, '--overwrite', '--rg-methods', 'all'))[0] == 0
  with open(os.path.join(out, 'trials.json')) as f:
    assert json.load(f)['design']['rg_methods'] == list(sh.METHODS)
  assert _cli(capsys, *_build_args(folders, out, '--overwrite'))[0] == 0
  with open(os.path.join(out, 'trials.json')) as f:
    assert json.load(f)['design']['rg_methods'] == ['ours']  # The paper's protocol: our images only.

  rc, err = _cli(capsys, *_build_args(folders, out, '--overwrite', '--real', str(tmp_path / 'nope')))
  assert (rc, err) == (2, f'study build: error: {tmp_path}/nope: --real folder not found')

  bad_pairs = tmp_path / 'pairs.txt'
  shutil.copy(folders['pairs'], bad_pairs)
  with open(bad_pairs, 'a') as f:
    f.write('img/MEN/Denim/id_00000999/01_1_front.jpg,img/MEN/Denim/id_00000999/01_2_side.jpg\n')
  args = _build_args(folders, out, '--overwrite')
  args[args.index('--pairs') + 1] = str(bad_pairs)
  rc, err = _cli(capsys, *args)
  assert rc == 2 and '\n' not in err
  person = 'img/MEN/Denim/id_00000999'
  assert err.startswith(f"study build: error: {bad_pairs}: field 'image': pair '{person}/01_2_side.jpg' -> "
                        f"'{person}/01_1_front.jpg': target image not found in --real")
  assert _cli(capsys, *args, '--skip-missing')[0] == 0

  no_pose = _build_args(folders, out, '--overwrite')
  del no_pose[no_pose.index('--keypoints'):no_pose.index('--keypoints') + 2]
  rc, err = _cli(capsys, *no_pose)
  assert rc == 2 and 'pass --keypoints' in err and '--pose-from-target' in err


def test_missing_keypoints_name_the_pose_file(folders, tmp_path, capsys):
  data = tmp_path / 'data'
  shutil.copytree(folders['data'], data)
  target = deepfashion.read_pairs_txt(folders['pairs'])[0].target
  pose_file = deepfashion.pose_path(str(data), target)
  os.remove(pose_file)
  args = _build_args(folders, str(tmp_path / 's'))
  args[args.index('--keypoints') + 1] = str(data)
  rc, err = _cli(capsys, *args)
  assert (rc, err) == (2, f"study build: error: {pose_file}: field 'pose': pose file not found")
  assert _cli(capsys, *args, '--skip-missing')[0] == 0


def test_missing_generated_image_names_the_method_folder(folders, tmp_path, capsys):
  partial = tmp_path / 'partial'
  shutil.copytree(folders['generated']['PIDM'], partial)
  victim = sorted(os.listdir(partial))[0]
  os.remove(partial / victim)
  args = _build_args(folders, str(tmp_path / 's'))
  args[args.index(f'PIDM={folders["generated"]["PIDM"]}')] = f'PIDM={partial}'
  rc, err = _cli(capsys, *args)
  assert rc == 2 and f"generated image of 'PIDM' not found in --generated PIDM={partial} (tried {victim}" in err
