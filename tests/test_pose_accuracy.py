"""Pose accuracy scoring on hand-made cases, the judge registry, and the BlazePose judge's plumbing.

The real-BlazePose test needs the pose venv of requirements-pose.txt (.venv-pose, or REPOSEDM_POSE_PYTHON);
it is skipped without it, so `make test` never needs mediapipe.
"""

import io
import os
import sys

import numpy as np
import pytest

from reposedm_jax.metrics import mediapipe_judge as mpj
from reposedm_jax.metrics import pose_accuracy as pa


def _person():
  """One target: 4 visible joints spanning a 100 x 50 box (reference length 100), one missing."""
  tgt = np.full((1, 5, 2), -1.0)
  tgt[0, :4] = [[0, 0], [50, 0], [0, 100], [50, 100]]
  return tgt


def test_pck_and_mean_error_by_hand():
  tgt = _person()
  pred = tgt.copy()
  pred[0, 0] += [3, 4]     # 5 px: inside 0.05 * 100 (boundary counts as a hit)
  pred[0, 1] += [0, 8]     # 8 px: inside 0.1 * 100 only
  pred[0, 2] += [15, 0]    # 15 px: inside 0.2 * 100 only
  pred[0, 3] = -1          # not detected: wrong for PCK, out of the mean error
  pred[0, 4] = [7, 7]      # target joint missing: never scored
  out = pa.pose_accuracy(pred, tgt, alphas=(0.05, 0.1, 0.2))
  assert out['joints'] == 4 and out['people'] == 1
  assert out['pck@0.05'] == pytest.approx(1 / 4)
  assert out['pck@0.1'] == pytest.approx(2 / 4)
  assert out['pck@0.2'] == pytest.approx(3 / 4)
  assert out['miss_rate'] == pytest.approx(1 / 4)
  assert out['mean_error_px'] == pytest.approx((5 + 8 + 15) / 3)


def test_per_person_reference_length_and_confidence_gate():
  # Person 2 is twice as large: the same 8 px error is a 0.05 hit for it but not for person 1.
  tgt = np.concatenate([_person(), 2 * _person().clip(0) - (_person() < 0)])
  pred = tgt.copy()
  pred[:, 0] += [8, 0]
  out = pa.pose_accuracy(pred, tgt, alphas=(0.05,))
  assert out['pck@0.05'] == pytest.approx(7 / 8)  # only person 1's joint 0 misses
  gate = np.ones((2, 5), bool)
  gate[1, 1] = False  # the judge's own confidence says "not found"
  gated = pa.pose_accuracy(pred, tgt, alphas=(0.05,), pred_valid=gate)
  assert gated['pck@0.05'] == pytest.approx(6 / 8) and gated['miss_rate'] == pytest.approx(1 / 8)


def test_people_with_too_few_joints_are_left_out_and_errors():
  tgt = np.concatenate([_person(), np.full((1, 5, 2), -1.0)])
  tgt[1, 2] = [10, 10]  # one visible joint: no reference length
  out = pa.pose_accuracy(tgt.copy(), tgt)
  assert out['people'] == 1 and out['joints'] == 4 and out['pck@0.1'] == 1.0
  assert out['mean_error_px'] == 0.0
  with pytest.raises(ValueError, match='no visible target joints'):
    pa.pose_accuracy(np.zeros((1, 5, 2)), np.full((1, 5, 2), -1.0))
  with pytest.raises(ValueError, match=r'\[B, K, 2\]'):
    pa.pose_accuracy(np.zeros((1, 4, 2)), np.zeros((1, 5, 2)))


def test_images_to_uint8_inverts_the_project_scaling():
  u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  assert np.array_equal(pa.images_to_uint8(u8.astype(np.float32) / 127.5 - 1.0), u8)
  assert pa.images_to_uint8(u8) is u8
  with pytest.raises(ValueError, match='uint8 or float'):
    pa.images_to_uint8(u8.astype(np.int32))


class _ConstJudge:
  name, description = 'const', 'always the same keypoints'

  def __call__(self, images):
    return np.tile(np.arange(34, dtype=np.float32).reshape(1, 17, 2), (len(images), 1, 1))


def test_registry_builds_skips_and_rejects(monkeypatch):
  def unavailable(config, workdir):
    raise pa.JudgeUnavailable('weights for the test judge are absent')
  monkeypatch.setitem(pa.JUDGE_FACTORIES, 'const', lambda config, workdir: _ConstJudge())
  monkeypatch.setitem(pa.JUDGE_FACTORIES, 'absent', unavailable)
  judges, skipped = pa.make_judges(('const', 'absent'), None, '')
  assert list(judges) == ['const'] and skipped == {'absent': 'weights for the test judge are absent'}
  assert judges['const'](np.zeros((3, 8, 8, 3), np.uint8)).shape == (3, 17, 2)
  with pytest.raises(ValueError, match="unknown judge 'hrnett'.*registered"):
    pa.make_judges(('hrnett',), None, '')


# BlazePose landmark names (mediapipe's PoseLandmark enum order) and COCO-17 names, written out here so the
# mapping is checked against names rather than against itself.
_BLAZEPOSE = ('nose', 'left_eye_inner', 'left_eye', 'left_eye_outer', 'right_eye_inner', 'right_eye',
              'right_eye_outer', 'left_ear', 'right_ear', 'mouth_left', 'mouth_right', 'left_shoulder',
              'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_pinky',
              'right_pinky', 'left_index', 'right_index', 'left_thumb', 'right_thumb', 'left_hip', 'right_hip',
              'left_knee', 'right_knee', 'left_ankle', 'right_ankle', 'left_heel', 'right_heel',
              'left_foot_index', 'right_foot_index')
_COCO = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
         'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee',
         'right_knee', 'left_ankle', 'right_ankle')


def test_blazepose_to_coco_mapping_and_pixel_frame():
  assert tuple(_BLAZEPOSE[i] for i in mpj.BLAZEPOSE_TO_COCO) == _COCO
  lm = np.zeros((2, 33, 3), np.float32)
  lm[0, :, 0] = np.linspace(0.1, 0.9, 33)
  lm[0, :, 1] = 0.5
  lm[0, :, 2] = 0.9
  lm[0, 11, 2] = 0.3          # left shoulder: low visibility -> not detected
  lm[0, 12, 0] = 1.2          # right shoulder: outside the image -> not detected
  lm[1] = [-1, -1, 0]         # nobody found
  out = mpj.landmarks_to_coco(lm, (256, 176), min_visibility=0.5)
  k = _COCO.index('nose')
  np.testing.assert_allclose(out[0, k], [0.1 * 176 - 0.5, 0.5 * 256 - 0.5], rtol=1e-6)
  assert (out[0, _COCO.index('left_shoulder')] == -1).all() and (out[0, _COCO.index('right_shoulder')] == -1).all()
  assert (out[1] == -1).all() and (out[0, 7:] != -1).all()


def test_array_framing_round_trip_and_dtype_allow_list():
  buf = io.BytesIO()
  a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  b = np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)
  mpj.send_array(buf, a)
  mpj.send_array(buf, b)
  buf.seek(0)
  np.testing.assert_array_equal(mpj.recv_array(buf), a)
  np.testing.assert_array_equal(mpj.recv_array(buf), b)
  assert mpj.recv_array(buf) is None
  bad = io.BytesIO()
  mpj.send_array(bad, np.zeros(2, np.float64))
  bad.seek(0)
  with pytest.raises(ValueError, match='float64'):
    mpj.recv_array(bad)


def test_missing_pose_venv_and_broken_worker_give_clear_reasons(tmp_path):
  with pytest.raises(pa.JudgeUnavailable, match='requirements-pose.txt'):
    mpj.MediapipeJudge(python=str(tmp_path / 'no-such-python'))
  # This interpreter has no mediapipe: the worker starts, fails to import it, and its stderr is reported.
  with pytest.raises(pa.JudgeUnavailable, match="(?s)mediapipe worker failed.*No module named 'mediapipe'"):
    mpj.MediapipeJudge(python=sys.executable)


def _pose_python():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.environ.get('REPOSEDM_POSE_PYTHON', os.path.join(repo, mpj.DEFAULT_VENV_PYTHON))
  return path if os.path.isfile(path) else None


@pytest.mark.skipif(_pose_python() is None, reason=f'no pose venv; create it with: {mpj.VENV_HINT}')
def test_blazepose_finds_the_astronaut_where_a_person_would():
  data = pytest.importorskip('skimage.data')
  img = data.astronaut()  # 512x512, head and shoulders facing the camera
  judge = mpj.MediapipeJudge(python=_pose_python())
  try:
    xy = judge(np.stack([img, np.zeros_like(img)]))
  finally:
    judge.close()
  # Hand-labelled on the image (independent of mediapipe): nose, eyes; shoulders of the suit.
  expect = {'nose': ((222, 125), 12), 'left_eye': ((243, 105), 12), 'right_eye': ((205, 103), 12),
            'left_shoulder': ((318, 255), 30), 'right_shoulder': ((110, 242), 30)}
  for name, (pos, tol) in expect.items():
    assert np.linalg.norm(xy[0, _COCO.index(name)] - pos) < tol, (name, xy[0, _COCO.index(name)])
  assert (xy[1] == -1).all()  # a black image has nobody in it


class _TinyPoseNet:
  """Stands in for HigherHRNet (same output dict): per-joint heatmaps from pooled, shifted image channels."""

  def apply(self, variables, images, train=False):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    b, h, w, _ = images.shape
    base = images.mean(-1)
    maps = jnp.stack([jnp.roll(base, (k, 2 * k), axis=(1, 2)) for k in range(17)], -1) * variables['scale']
    s2 = jnp.exp(maps.reshape(b, h // 2, 2, w // 2, 2, 17).mean((2, 4)))
    s4 = jnp.exp(maps.reshape(b, h // 4, 4, w // 4, 4, 17).mean((2, 4)))
    return {'heatmaps_s4': s4, 'tags_s4': s4, 'heatmaps_s2': s2, 'features': s4}


def test_hrnet_judge_chunks_and_thresholds_like_direct_decoding():
  """The HigherHRNet judge's plumbing (fixed-size chunks, padding, score gate) vs decoding directly."""
  hrnet = pytest.importorskip('reposedm_jax.models.hrnet')
  from reposedm_jax.metrics import hrnet_judge  # pylint: disable=import-outside-toplevel
  module, variables = _TinyPoseNet(), {'scale': np.float32(3.0)}
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 24, 3), np.uint8)
  out = module.apply(variables, images.astype(np.float32) / 127.5 - 1.0)
  xy, score = (np.asarray(a) for a in hrnet.decode_keypoints(hrnet.aggregate_heatmaps(out), (32, 24)))
  thr = float(np.median(score))
  judge = hrnet_judge.HrnetJudge(module, variables, thr, 'tiny', batch_size=2)  # 5 images = 2 + 2 + 1 padded
  got = judge(images)
  np.testing.assert_allclose(got, np.where((score >= thr)[..., None], xy, -1.0), atol=1e-4)
  assert 0 < (got == -1).all(-1).sum() < 5 * 17
