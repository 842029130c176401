"""predict's inputs: every pose format gives the same keypoints, and the person crop moves keypoints exactly."""

import json

import numpy as np
import pytest
from PIL import Image

from reposedm_jax.data import person_frame, pose, pose_files
from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.predict import inputs

# A person in a 256x176 image (PATN's frame), integer pixels so the integer CSV holds them exactly; joint 17
# (left ear) missing.
KPTS = np.array([[88, 30], [88, 52], [66, 54], [58, 90], [52, 124], [110, 54], [120, 88], [126, 120],
                 [74, 130], [72, 180], [70, 228], [102, 130], [106, 180], [110, 228], [82, 26], [94, 26],
                 [76, 30], [-1, -1]], np.float32)


def test_coco17_to_openpose18_puts_the_neck_between_the_shoulders():
  coco = KPTS[list(pose_files.OPENPOSE_TO_COCO)]
  out = pose_files.coco17_to_openpose18(coco)
  np.testing.assert_array_equal(np.delete(out, 1, 0), np.delete(KPTS, 1, 0))
  np.testing.assert_allclose(out[1], (KPTS[2] + KPTS[5]) / 2)
  coco[5] = -1  # a shoulder missing: no neck
  assert (pose_files.coco17_to_openpose18(coco)[1] == -1).all()


def _openpose_json(path, kpts, body25: bool, extra_people=()):
  def flat(k):
    xyc = np.concatenate([k, np.where((k == -1).any(1, keepdims=True), 0.0, 0.9)], axis=1)
    xyc[(k == -1).any(1)] = 0.0  # OpenPose writes 0 0 0 for a joint it did not find
    if body25:
      mid = np.r_[(k[8] + k[11]) / 2, 0.8]
      feet = np.tile([k[13, 0], k[13, 1] + 4, 0.5], (6, 1))
      xyc = np.concatenate([xyc[:8], mid[None], xyc[8:], feet])
    return [float(v) for v in xyc.ravel()]
  people = [{'person_id': [-1], 'pose_keypoints_2d': flat(k), 'face_keypoints_2d': []} for k in (kpts, *extra_people)]
  path.write_text(json.dumps({'version': 1.3, 'people': people}))
  return str(path)


@pytest.mark.parametrize('body25', [True, False])
def test_openpose_json_round_trips(tmp_path, body25):
  few = np.full_like(KPTS, -1)
  few[:3] = KPTS[:3]  # a second, mostly hidden person: the one with more joints is taken
  path = _openpose_json(tmp_path / 'p_keypoints.json', KPTS, body25, extra_people=(few,))
  kpts, frame = pose_files.read_pose_file(path)
  assert frame is None
  np.testing.assert_array_equal(kpts, KPTS)
  np.testing.assert_array_equal(pose_files.read_openpose_json(path, person=1)[:3], KPTS[:3])


def test_pidm_txt_csv_and_npy_give_the_same_keypoints(tmp_path):
  legacy = pose.image_to_legacy(KPTS, (256, 176))
  np.savetxt(tmp_path / 'p.txt', legacy)
  ys = [int(v) for v in KPTS[:, 1]]
  xs = [int(v) for v in KPTS[:, 0]]
  (tmp_path / 'a.csv').write_text(f'name:keypoints_y:keypoints_x\nx.jpg: {json.dumps(ys)}: {json.dumps(xs)}\n'
                                  f'y.jpg: {json.dumps(ys[::-1])}: {json.dumps(xs[::-1])}\n')
  # PIDM's pose bank: drawn after trans_keypoins into the 256x176 image stretched to 256x256.
  np.save(tmp_path / 'p.npy', pose.render_pidm_pose(pose.legacy_to_image(legacy, (256, 256)), 256, 256))
  for spec, tol in ((str(tmp_path / 'p.txt'), 1e-4), (str(tmp_path / 'a.csv') + ':x.jpg', 0),
                    (str(tmp_path / 'a.csv'), 0), (str(tmp_path / 'p.npy'), 1.6)):
    kpts, frame = pose_files.read_pose_file(spec)
    px, hw = inputs._frame_pixels(kpts, frame)  # pylint: disable=protected-access
    assert hw == (256, 176), spec
    present = KPTS[:, 0] != -1
    # The .npy recovery: joints at the ends of the rasterised limb ellipses, ~1 px; ear 16 (no drawn limb
    # reaches 17, the left ear, which is missing anyway) comes from the limb 14-16.
    np.testing.assert_allclose(px[present], KPTS[present], atol=tol + 1e-4, err_msg=spec)
    assert (px[~present] == -1).all(), spec


def test_pose_file_errors_are_one_line_and_name_the_file(tmp_path):
  (tmp_path / 'empty.json').write_text('{"version": 1.3, "people": []}')
  (tmp_path / 'bad.json').write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
  (tmp_path / 'x.bvh').write_text('')
  for name, match in (('empty.json', 'no person'), ('bad.json', 'pose_keypoints_2d'), ('x.bvh', 'unknown pose'),
                      ('missing.json', 'not found')):
    with pytest.raises(BadExampleError, match=match) as e:
      pose_files.read_pose_file(str(tmp_path / name))
    assert name in str(e.value) and '\n' not in str(e.value)
  (tmp_path / 'no.png').write_bytes(b'not an image')
  with pytest.raises(BadExampleError, match='unreadable image'):
    inputs.read_photo(str(tmp_path / 'no.png'))


@pytest.mark.parametrize('photo_hw,out_hw,aspect', [((300, 500), (64, 44), None), ((900, 200), (256, 176), None),
                                                    ((120, 88), (64, 44), None), ((400, 300), (64, 64), (256, 176))])
def test_person_crop_moves_keypoints_with_the_pixels(photo_hw, out_hw, aspect):
  """A photo whose pixels encode their own coordinates: at a moved keypoint the crop shows that keypoint's pixel."""
  h0, w0 = photo_hw
  yy, xx = np.mgrid[:h0, :w0]
  coded = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], -1).astype(np.uint8)
  rng = np.random.default_rng(0)
  kpts = np.stack([rng.uniform(0.3 * w0, 0.7 * w0, 18), rng.uniform(0.05 * h0, 0.95 * h0, 18)], 1).astype(np.float32)
  window = person_frame.photo_window(photo_hw, kpts, out_hw, aspect_hw=aspect)
  assert window.w / window.h == pytest.approx((aspect or out_hw)[1] / (aspect or out_hw)[0])
  crop = person_frame.crop_image(coded, window, out_hw, resample=Image.NEAREST, fill=(0, 0, 0))
  moved = window.apply(kpts, out_hw)
  inside = (moved[:, 0] > 0) & (moved[:, 0] < out_hw[1] - 1) & (moved[:, 1] > 0) & (moved[:, 1] < out_hw[0] - 1)
  assert inside.sum() >= 12
  c = crop[np.round(moved[inside, 1]).astype(int), np.round(moved[inside, 0]).astype(int)].astype(np.int64)
  got = np.stack([c[:, 0] + 256 * (c[:, 2] // 16), c[:, 1] + 256 * (c[:, 2] % 16)], 1)
  # Nearest sampling of the output pixel nearest the keypoint: within half an output pixel, in source pixels.
  tol = 0.5 / min(window.scale(out_hw)) + 0.5 + 1e-6
  assert np.abs(got - kpts[inside]).max() <= tol + 0.5


def test_fit_window_fills_the_frame_with_the_person():
  out_hw = (64, 44)
  moved = person_frame.fit_window(KPTS, out_hw, fill=0.8).apply(KPTS, out_hw)
  present = moved[:, 0] != -1
  height = moved[present, 1].max() - moved[present, 1].min() + 1
  assert height == pytest.approx(0.8 * 64, rel=0.02)
  assert abs((moved[present, 0].max() + moved[present, 0].min()) / 2 - 21.5) < 0.51


def test_interpolation_ends_on_both_poses_and_drops_joints_missing_at_either_end():
  b = KPTS + 10
  b[0] = -1
  frames = inputs.interpolate(KPTS, b, 5)
  assert len(frames) == 5
  np.testing.assert_allclose(frames[0][1:17], KPTS[1:17])
  np.testing.assert_allclose(frames[-1][1:17], b[1:17])
  np.testing.assert_allclose(frames[2][1:17], KPTS[1:17] + 5)
  assert all((f[0] == -1).all() and (f[17] == -1).all() for f in frames)


def test_a_pose_folder_is_in_frame_order_and_a_market_csv_takes_its_frame(tmp_path):
  from reposedm_jax.predict import __main__ as predict_cli
  for n in ('f_10.json', 'f_2.json', 'f_1.json', 'notes.md'):
    (tmp_path / n).write_text('{}')
  assert [p.rsplit('/', 1)[-1] for p in predict_cli.expand_poses([str(tmp_path)])] == ['f_1.json', 'f_2.json',
                                                                                       'f_10.json']
  ys, xs = [int(v) // 2 for v in KPTS[:, 1]], [int(v) // 2 for v in KPTS[:, 0]]
  ys[17] = xs[17] = -1
  (tmp_path / 'market.csv').write_text(f'name:keypoints_y:keypoints_x\na.jpg: {json.dumps(ys)}: {json.dumps(xs)}\n')
  view = inputs.target_view(str(tmp_path / 'market.csv'), (128, 64), crop='resize', pose_frame=(128, 64))
  np.testing.assert_allclose(view.kpts[:17], np.stack([xs, ys], 1)[:17])  # no rescale: its own frame


def test_npy_recovery_with_a_single_limb_at_the_neck():
  """Only the neck-shoulder limb and that arm drawn: the neck is the end the arm does not touch."""
  k = np.full_like(KPTS, -1)
  k[[1, 2, 3, 4]] = KPTS[[1, 2, 3, 4]]
  tensor = pose.render_pidm_pose(k, 256, 176)
  rec = pose_files.keypoints_from_pose_tensor(tensor)
  np.testing.assert_allclose(rec[[1, 2, 3, 4]], k[[1, 2, 3, 4]], atol=2.5)
  assert (rec[[0, 5, 8, 11]] == -1).all()
