"""RePoseSD's data (issue 21): HumanSD's mapping + pose .npz layout, the restricted pickle reader, crops, flips and
the pose rendering; the synthetic writer produces exactly that layout."""

import json
import os
import zipfile

import numpy as np
import pytest

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.sd import data, synthetic


def _people(n=2, seed=0):
  rng = np.random.default_rng(seed)
  k = rng.uniform(5, 60, size=(n, 17, 3)).astype(np.float32)
  k[..., 2] = rng.uniform(0.3, 1.0, size=(n, 17))
  return k


def test_pose_npz_in_humansd_format_round_trips_and_plain_arrays_read_too(tmp_path):
  people = _people()
  path = str(tmp_path / 'p.npz')
  data.write_pose_npz(path, people)
  # What HumanSD reads: np.load(..., allow_pickle=True)['arr_0'][i]['keypoints'].
  stored = np.load(path, allow_pickle=True)['arr_0']
  assert stored.dtype == object and stored[1]['keypoints'].shape == (17, 3)
  np.testing.assert_array_equal(data.read_pose_npz(path), people)
  plain = str(tmp_path / 'q.npz')
  np.savez(plain, people.astype(np.float64))
  np.testing.assert_array_equal(data.read_pose_npz(plain), people)
  empty = str(tmp_path / 'e.npz')
  data.write_pose_npz(empty, np.zeros((0, 17, 3)))
  assert data.read_pose_npz(empty).shape == (0, 17, 3)
  nobody = str(tmp_path / 'n.npz')
  np.savez(nobody, [])  # also an image with nobody detected: a float64 array of shape (0,)
  assert data.read_pose_npz(nobody).shape == (0, 17, 3)


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned > /tmp/reposesd_pwned',))


def test_a_pose_file_whose_pickle_names_another_global_is_refused_not_run(tmp_path):
  path = str(tmp_path / 'evil.npz')
  arr = np.empty(1, dtype=object)
  arr[0] = {'keypoints': _Evil()}
  np.savez(path, arr)  # pickling only records os.system; nothing runs until a loader resolves it
  if os.path.exists('/tmp/reposesd_pwned'):
    os.remove('/tmp/reposesd_pwned')
  with pytest.raises(BadExampleError, match=r'evil\.npz.*arr_0.*disallowed global'):
    data.read_pose_npz(path)
  assert not os.path.exists('/tmp/reposesd_pwned')
  bad = str(tmp_path / 'bad.npz')
  with zipfile.ZipFile(bad, 'w') as zf:
    zf.writestr('other.npy', b'x')
  with pytest.raises(BadExampleError, match='no arr_0'):
    data.read_pose_npz(bad)
  shaped = str(tmp_path / 's.npz')
  np.savez(shaped, np.zeros((2, 18, 3)))
  with pytest.raises(BadExampleError, match=r'\[P, 17, 3\]'):
    data.read_pose_npz(shaped)
  pickled_list = str(tmp_path / 'l.npz')
  obj = np.empty(1, dtype=object)
  obj[0] = {'kp': np.zeros((17, 3))}
  np.savez(pickled_list, obj)
  with pytest.raises(BadExampleError, match='person 0.*"keypoints"'):
    data.read_pose_npz(pickled_list)


def test_mapping_errors_name_file_entry_and_field(tmp_path):
  root = str(tmp_path)
  with pytest.raises(BadExampleError, match='no such mapping file'):
    data.read_mapping(root, 'mapping_file_training.json')
  (tmp_path / 'm.json').write_text('{"a": {"img_path": "x.jpg", "prompt": "hi"}}')
  with pytest.raises(BadExampleError, match=r"m\.json: field 'pose_path': entry 'a'"):
    data.read_mapping(root, 'm.json')
  (tmp_path / 'n.json').write_text('{\n "a": oops}')
  with pytest.raises(BadExampleError, match=r'n\.json:2: not JSON'):
    data.read_mapping(root, 'n.json')
  (tmp_path / 'o.json').write_text(json.dumps({'k': {'img_path': 'i.jpg', 'pose_path': 'p.npz', 'prompt': 'a cat'}}))
  rec = data.read_mapping(root, 'o.json')[0]
  assert rec.image == os.path.join(root, 'i.jpg') and rec.prompt == 'a cat'
  with pytest.raises(BadExampleError, match=r"i\.jpg: field 'img_path': unreadable image for entry 'k'"):
    data.load_example(rec, 32, max_persons=2, threshold=0.02)


def test_crop_moves_keypoints_with_the_pixels_and_flip_swaps_sides():
  """A coordinate-coded image: each joint's pixel is marked; after resize + crop the mark sits at the new keypoint."""
  h, w = 90, 120
  image = np.zeros((h, w, 3), np.uint8)
  people = np.zeros((1, 17, 3), np.float32)
  rng = np.random.default_rng(3)
  for j in range(17):
    x, y = int(rng.integers(30, 90)), int(rng.integers(10, 80))
    people[0, j] = (x, y, 1.0)
  people[0, 4, 2] = 0.01  # below the threshold: dropped
  for x, y, _ in people[0]:
    image[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255
  crop, kp = data.crop_example(image, people, 60, max_persons=3, threshold=0.02)
  assert crop.shape == (60, 60, 3) and kp.shape == (3, 17, 3)
  assert np.all(kp[1:] == [-1, -1, 0]) and np.all(kp[0, 4] == [-1, -1, 0])
  vis = kp[0, :, 2] > 0
  for x, y in kp[0, vis, :2]:
    assert crop[int(round(y)), int(round(x))].max() > 100  # the mark moved with the keypoint
  # centred crop: the short side (90 -> 60, x2/3), the long side 120 -> 80, 10 px cut on each side
  np.testing.assert_allclose(kp[0, 0, 0], (people[0, 0, 0] + 0.5) * 80 / 120 - 0.5 - 10, atol=1e-4)
  flipped_crop, fk = data.crop_example(image, people, 60, max_persons=3, threshold=0.02, flip=True)
  np.testing.assert_array_equal(flipped_crop, crop[:, ::-1])
  np.testing.assert_allclose(fk[0, 1, 0], 59 - kp[0, 2, 0])  # left eye <- mirrored right eye
  np.testing.assert_allclose(fk[0, 1, 1], kp[0, 2, 1])
  np.testing.assert_array_equal(fk[0, 3], [-1, -1, 0])  # the dropped right ear (4) is the flipped left ear


def test_pose_rendering_draws_humansd_bones_in_the_hls_palette():
  assert data.PALETTE.shape == (16, 3)
  assert tuple(data.PALETTE[0]) == (219, 94, 86)  # seaborn color_palette('hls', 16)[0] * 255, truncated
  kp = np.full((1, 17, 3), [-1, -1, 0], np.float32)
  kp[0, 5] = (10, 20, 1)
  kp[0, 7] = (40, 20, 1)  # bone 6: shoulder 5 -> elbow 7
  img = data.render_pose(kp, 64)
  assert tuple(img[20, 25]) == tuple(data.PALETTE[6])
  assert img[40, 25].max() == 0 and img[20, 50].max() == 0


def test_synthetic_writer_produces_humansd_layout(tmp_path):
  roots = synthetic.write_dataset(str(tmp_path), train=3, val=2, height=48, width=40)
  recs = data.read_mapping(roots['laion_human'], data.MAPPING_FILES['laion_human'])
  val = data.read_mapping(roots['humanart'], data.MAPPING_FILES['humanart_val'])
  assert len(recs) == 3 and len(val) == 2
  assert '/images/00000/' in recs[0].image and '/pose/00000/' in recs[0].pose
  ex = data.load_example(val[0], 32, max_persons=3, threshold=0.02)
  assert ex['image'].shape == (32, 32, 3) and -1 <= ex['image'].min() and ex['image'].max() <= 1
  assert (ex['keypoints'][..., 2] > 0).sum() >= 10 and 'background' in ex['prompt']
  b1 = data.batch_at(recs, 5, 4, seed=0, size=32, max_persons=3, threshold=0.02, hflip=0.5)
  b2 = data.batch_at(recs, 5, 4, seed=0, size=32, max_persons=3, threshold=0.02, hflip=0.5)
  np.testing.assert_array_equal(b1['image'], b2['image'])  # a function of (seed, step)
  assert b1['keypoints'].shape == (4, 3, 17, 3)
