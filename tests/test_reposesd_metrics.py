"""HumanSD's metrics (issue 21): AP / AP(m) against closed forms on hand-made detections (the evaluator is
pycocotools' own), CAP's weighted cosine against a float64 formula and a hand case, PCE; the AE grouping and the
associative-embedding loss; RePoseSD's schedule and ε / v algebra; the multi-person reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax import pif
from reposedm_jax.models import hrnet
from reposedm_jax.sd import detect, detector_train, metrics, model


def _person(x0=20.0, y0=10.0, scale=1.0):
  rng = np.random.default_rng(int(x0 * 10 + y0))
  k = np.zeros((17, 3))
  k[:, 0] = x0 + scale * rng.uniform(0, 30, 17)
  k[:, 1] = y0 + scale * rng.uniform(0, 60, 17)
  k[:, 2] = 1.0
  return k


def _oks(gt, dt):
  """COCO OKS from its definition (float64): area = the GT bbox area here."""
  vis = gt[:, 2] > 0
  area = np.ptp(gt[vis, 0]) * np.ptp(gt[vis, 1])
  var = (2 * metrics.COCO_SIGMAS) ** 2
  e = np.sum(np.square(gt[:, :2] - dt[:, :2]), -1) / var / (area + np.spacing(1)) / 2
  return float(np.mean(np.exp(-e[vis])))


@pytest.mark.parametrize('shift', [0.0, 1.5, 3.0, 6.0])
def test_ap_of_one_detection_is_the_fraction_of_oks_thresholds_it_passes(shift):
  gt = _person()
  dt = gt.copy()
  dt[:, 0] += shift
  oks = _oks(gt, dt)
  want = np.mean([oks >= t for t in np.linspace(0.5, 0.95, 10)])
  got = metrics.pose_metrics([gt[None]], [[(dt, 0.9)]], (100, 100))
  assert got['AP'] == pytest.approx(want, abs=1e-9)
  assert got['PCE'] == 0.0


def test_ap_with_a_false_positive_ranked_first_and_a_missed_person():
  """Two GT people; detections: a stray (score 0.9), a perfect match of person A (0.8). Precision at recall 0.5 is
  1/2 (the stray ranks first); recall 1 is never reached: AP = 51 recall points x 0.5 / 101."""
  a, b = _person(10, 10), _person(60, 20)
  stray = _person(10, 10)
  stray[:, :2] += 40.0
  got = metrics.pose_metrics([np.stack([a, b])], [[(stray, 0.9), (a, 0.8)]], (120, 120))
  assert got['AP'] == pytest.approx(51 * 0.5 / 101, abs=1e-9)
  assert got['PCE'] == 0.0 and got['gt_people'] == 2 and got['detected_people'] == 2
  none = metrics.pose_metrics([np.stack([a, b]), a[None]], [[], [(a, 1.0)]], (120, 120))
  assert none['PCE'] == pytest.approx((2 + 0) / 2)
  # a GT with one visible joint has no OKS scale: ignored by AP (not a miss), still counted by PCE
  lone = np.zeros((17, 3))
  lone[0] = (50, 50, 1)
  got = metrics.pose_metrics([np.stack([a, lone])], [[(a, 0.9)]], (120, 120))
  assert got['AP'] == pytest.approx(1.0) and got['PCE'] == 1.0


def test_detection_area_counts_only_present_joints():
  """A medium-size person detected with its far joints missing: pycocotools' loadRes would span (0, 0) and make
  the detection 'large', so an unmatched one would not be ignored at area=medium; AP(m) sees its real size."""
  gt = _person(60, 60, 1.2)  # spans ~36 x 72 px: 'medium' (32^2 .. 96^2)
  stray = gt.copy()
  stray[:, :2] += 80
  stray[10:, 2] = 0
  stray[10:, :2] = 0
  gt_set = metrics.coco_ground_truth([gt[None]], (300, 300))
  assert 32 ** 2 < gt_set['annotations'][0]['area'] < 96 ** 2
  got = metrics.pose_metrics([gt[None]], [[(stray, 0.9), (gt, 0.8)]], (300, 300))
  # ranked FP then TP: precision 1/2 at every recall point; ignored as 'large' (loadRes' span) it would be 1.0
  assert got['AP_m'] == pytest.approx(0.5, abs=1e-9)


def _cosine_reference(gt, dt, bug=False):
  vis = gt[:, 2] > 0
  v = [k[vis, a] / metrics.COCO_SIGMAS[vis] for k in (gt, dt) for a in (0, 1)]
  v = [(x - x.min()) / (x.max() - x.min()) for x in v]
  n = [x / np.linalg.norm(x) for x in v]
  yd = n[2] / np.linalg.norm(v[3]) if bug else n[3]
  g, d = np.concatenate([n[0], n[1]]), np.concatenate([n[2], yd])
  return g @ d / np.linalg.norm(g) / np.linalg.norm(d)


def test_weighted_cosine_similarity_and_the_humansd_y_bug_switch():
  gt = _person()
  rng = np.random.default_rng(0)
  dt = gt + np.concatenate([rng.normal(0, 3, (17, 2)), np.zeros((17, 1))], -1)
  for bug in (False, True):
    assert metrics.weighted_cosine(gt, dt, bug) == pytest.approx(_cosine_reference(gt, dt, bug), rel=1e-12)
  # invariant to the detection's scale (min-max after the per-joint sigma weights, so not to a shift): 2x scores 1
  moved = gt.copy()
  moved[:, :2] = 2.0 * gt[:, :2]
  assert metrics.weighted_cosine(gt, moved) == pytest.approx(1.0, abs=1e-12)
  assert metrics.weighted_cosine(gt, moved, replicate_y_bug=True) < 0.999
  flat = gt.copy()
  flat[:, 1] = 5.0 * metrics.COCO_SIGMAS  # constant after the sigma weights
  assert metrics.weighted_cosine(flat, dt) == 0.0  # a degenerate axis scores 0, not NaN
  one = gt.copy()
  one[1:, 2] = 0
  assert metrics.weighted_cosine(one, dt) == 0.0
  got = metrics.pose_metrics([gt[None]], [[(moved, 0.5)]], (200, 200))
  assert got['CAP'] == pytest.approx(1.0) and got['AP'] == 0.0  # CAP ignores where; AP does not


def _maps_for(people, hw, tag_values):
  """Ideal stride-2 heatmaps and stride-4 tags for people [P, 17, 3] in an image of hw."""
  kp = jnp.asarray(np.asarray(people)[None], jnp.float32)
  heat = np.asarray(model.person_targets(kp, hw, 2, 2.0))[0]
  tags = np.zeros((-(-hw[0] // 4), -(-hw[1] // 4), 17), np.float32)
  for p, person in enumerate(people):
    for j, (x, y, v) in enumerate(person):
      if v > 0:
        tags[int(round((y + 0.5) / 4 - 0.5)), int(round((x + 0.5) / 4 - 0.5)), j] = tag_values[p]
  return heat, tags


def test_grouping_recovers_people_from_ideal_heatmaps_and_tags():
  hw = (96, 96)
  a, b = _person(8, 8, 0.6), _person(55, 30, 0.6)
  heat, tags = _maps_for([a, b], hw, [-2.0, 3.0])
  found = detect.group(heat, tags, hw)
  assert len(found) == 2
  for det, _ in found:
    truth = a if abs(det[0, 0] - a[0, 0]) < abs(det[0, 0] - b[0, 0]) else b
    np.testing.assert_allclose(det[:, :2], truth[:, :2], atol=1.0)  # the 2-px grid, centre convention
  # same tags for both: the Hungarian step can give each joint to one person only, so joints split
  same = detect.group(*_maps_for([a, b], hw, [1.0, 1.0]), hw)
  assert len(same) >= 2
  assert detect.pose_nms(found + [found[0]], 0.9) == found  # an exact duplicate is suppressed
  assert len(detect.pose_nms(found + [found[0]], 1.0)) == 3  # HumanSD's 1.0: none


def test_associative_embedding_loss_closed_form():
  kp = np.full((1, 3, 17, 3), [-1, -1, 0], np.float32)
  kp[0, 0, :2] = [(4, 4, 1), (8, 4, 1)]
  kp[0, 1, :1] = [(20, 20, 1)]
  tags = np.zeros((1, 8, 8, 17), np.float32)
  tags[0, 1, 1, 0], tags[0, 1, 2, 1], tags[0, 5, 5, 0] = 1.0, 3.0, -1.0
  # person 0: tags 1, 3 (mean 2, pull ((1-2)^2 + (3-2)^2) over 3 visible joints); person 1: -1 (mean -1)
  pull = 2.0 / 3.0
  push = np.exp(-9.0)  # the two ordered pairs (0,1), (1,0), averaged
  got = float(detector_train.ae_loss(jnp.asarray(tags), jnp.asarray(kp)))
  assert got == pytest.approx(pull + push, rel=1e-5)


def test_v_and_eps_parameterisations_and_the_sd_schedule():
  s = model.sd_schedule()
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
  np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(2, 4, 4, 4)), rng.normal(size=(2, 4, 4, 4))
  acp = np.asarray([0.9, 0.05])[:, None, None, None]
  x_t = np.sqrt(acp) * x0 + np.sqrt(1 - acp) * eps
  v = np.asarray(model.target('v_prediction', x0, eps, acp))
  np.testing.assert_allclose(v, np.sqrt(acp) * eps - np.sqrt(1 - acp) * x0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(model.to_eps('v_prediction', v, x_t, acp)), eps, atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.from_eps('v_prediction', eps, x_t, acp)), v, atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.x0_from_eps(x_t, eps, acp)), x0, atol=1e-4)  # float32, 1/sqrt(0.05)
  np.testing.assert_array_equal(model.target('epsilon', x0, eps, acp), eps)
  np.testing.assert_array_equal(model.to_eps('epsilon', v, x_t, acp), v)


def test_multi_person_reference_is_the_max_of_single_person_targets_through_the_aggregation():
  a, b = _person(8, 8, 0.6), _person(40, 30, 0.6)
  b[3:6, 2] = 0.0  # missing joints
  heads = ((4, 2.0), (2, 2.0))
  kp = jnp.asarray(np.stack([a, b])[None], jnp.float32)
  got = np.asarray(model.reference_multi(kp, (64, 64), heads))[0]
  per_head = []
  for stride, sigma in heads:
    n = 64 // stride
    maps = [np.asarray(pif.render_heatmaps(jnp.asarray(np.where(p[:, 2:] > 0, p[:, :2], -1.0)[None], jnp.float32),
                                           (64, 64), (n, n), sigma))[0] for p in (a, b)]
    per_head.append(np.maximum(*maps))
  want = np.asarray(hrnet.aggregate_heatmaps({'heatmaps_s4': jnp.asarray(per_head[0][None]),
                                              'heatmaps_s2': jnp.asarray(per_head[1][None])}))[0]
  np.testing.assert_allclose(got, want, atol=1e-6)
