"""The trial plan (reposedm_jax/study/plan.py): seeded, balanced, no image twice."""

import collections
import dataclasses

import pytest

from reposedm_jax.study import plan

METHODS = ['ours', 'PIDM', 'CFLD']
# 30 real, 20 generated per method (all three here), 30 sets, 2 catch, 2 practice.
PAPER = plan.Design(rg_methods=tuple(METHODS))


def _pairs(people: int, views: int = 4) -> list[tuple[str, str]]:
  """Every ordered pair of views within each person, like test_pairs.txt."""
  views = range(views)
  return [(f'p{i}/v{a}', f'p{i}/v{b}') for i in range(people) for a in views for b in views if a != b]


def test_paper_design_counts_per_block_and_method():
  pairs = _pairs(200)
  trials = plan.make_plan(pairs, METHODS, PAPER)
  rg = [t for t in trials if t['block'] == 'rg' and not t['practice'] and not t['catch']]
  assert collections.Counter(t['show'] for t in rg) == {'real': 30, 'generated': 60}
  assert collections.Counter(t['method'] for t in rg if t['show'] == 'generated') == {m: 20 for m in METHODS}
  cmp = [t for t in trials if t['block'] == 'cmp' and not t['practice'] and not t['catch']]
  assert len(cmp) == 30
  for t in cmp:  # One image of every method in every set.
    assert sorted(m for m, _ in t['candidates']) == sorted(METHODS)
    assert {k for _, k in t['candidates']} == {'generated'}
  for block in ('rg', 'cmp'):
    assert sum(t['catch'] for t in trials if t['block'] == block) == 2
    assert sum(t['practice'] for t in trials if t['block'] == block) == 2
  assert len(trials) == 90 + 4 + 30 + 4 == plan.pairs_needed(PAPER, METHODS)
  # Practice comes first in each block, and block 'rg' before 'cmp'.
  blocks = [t['block'] for t in trials]
  assert blocks == ['rg'] * 94 + ['cmp'] * 34
  assert [t['practice'] for t in trials[:3]] == [True, True, False]
  assert [t['id'] for t in trials[:2]] == ['t001', 't002'] and trials[-1]['id'] == 't128'


def test_no_image_used_twice():
  pairs = _pairs(80)
  trials = plan.make_plan(pairs, METHODS, PAPER)
  used = [img for t in trials for img in pairs[t['pair']]]
  assert len(used) == len(set(used)) == 2 * len(trials)


def test_catch_trials_are_recognisable_by_design():
  trials = plan.make_plan(_pairs(80), METHODS, PAPER)
  for t in trials:
    if t['block'] == 'rg':
      assert (t['show'] == 'scrambled') == t['catch']
    elif t['catch']:  # The intact real target plus scrambles: as many candidates as a normal set.
      kinds = collections.Counter(k for _, k in t['candidates'])
      assert kinds == {'real': 1, 'scrambled': len(METHODS) - 1}


def test_same_seed_same_plan_other_seed_other_plan():
  pairs = _pairs(80)
  a = plan.make_plan(pairs, METHODS, PAPER)
  assert a == plan.make_plan(pairs, METHODS, PAPER)
  b = plan.make_plan(pairs, METHODS, dataclasses.replace(PAPER, seed=1))
  assert [t['pair'] for t in a] != [t['pair'] for t in b]


def test_order_is_shuffled_and_candidate_positions_vary():
  trials = plan.make_plan(_pairs(80), METHODS, PAPER)
  rg = [t['show'] for t in trials if t['block'] == 'rg' and not t['practice']]
  assert rg != sorted(rg) and rg != sorted(rg, reverse=True)
  firsts = collections.Counter(t['candidates'][0][0] for t in trials if t['block'] == 'cmp' and not t['catch'])
  assert len(firsts) == len(METHODS)  # Every method is leftmost in some set.


@pytest.mark.parametrize('rg_methods', [(), ('ours',)])
def test_default_is_the_paper_protocol_first_method_only(rg_methods):
  trials = plan.make_plan(_pairs(80), METHODS, plan.Design(rg_methods=rg_methods))
  rg = [t for t in trials if t['block'] == 'rg' and not t['practice'] and not t['catch']]
  counts = collections.Counter((t['show'], t['method']) for t in rg)
  assert counts == {('real', None): 30, ('generated', 'ours'): 20}
  assert {t['method'] for t in trials if t['block'] == 'rg' and t['practice']} == {None, 'ours'}


def test_unknown_rg_method():
  with pytest.raises(ValueError, match='--rg-methods SD: not among'):
    plan.make_plan(_pairs(80), METHODS, dataclasses.replace(PAPER, rg_methods=('SD',)))


def test_comparison_block_needs_two_methods():
  with pytest.raises(ValueError, match='two --generated methods'):
    plan.make_plan(_pairs(80), ['ours'], plan.Design())
  trials = plan.make_plan(_pairs(80), ['ours'], plan.Design(sets=0))
  assert {t['block'] for t in trials} == {'rg'}


def test_too_few_pairs_is_a_clear_error():
  # 3 views a person: any two pairs of one person share an image, so 20 people give 20 usable pairs.
  with pytest.raises(ValueError, match=r'test_pairs.txt: the design needs 128 pairs .* only 20 of its 120'):
    plan.make_plan(_pairs(20, views=3), METHODS, PAPER, pairs_file='test_pairs.txt')


def test_bad_counts():
  with pytest.raises(ValueError, match='sets must be >= 0'):
    plan.make_plan(_pairs(80), METHODS, dataclasses.replace(PAPER, sets=-1))
  with pytest.raises(ValueError, match='no scored trials'):
    plan.make_plan(_pairs(80), METHODS, plan.Design(real=0, generated=0, sets=0))


def test_rng_is_the_documented_stream():
  # Pins the shuffle to random.Random.random(), whose stream Python guarantees; a change here changes plans.
  assert plan.Rng(0).shuffled(range(8)) == [0, 3, 4, 7, 1, 2, 5, 6]
