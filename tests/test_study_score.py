"""`study score` (reposedm_jax/study/score.py, responses.py, report.py, chart.py) on answers with known scores."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from reposedm_jax.study import __main__ as cli
from reposedm_jax.study import responses, score
from tests import study_helpers as sh

# Known answers (6 real, 3 generated per method, 6 sets, 4 attention checks): see study_helpers.answers_for.
PEOPLE = {
    'alice': dict(r2g=2, g2r={'ours': 2, 'PIDM': 1, 'CFLD': 0}, jab={'ours': 4, 'PIDM': 1, 'CFLD': 1}),
    'bob': dict(r2g=4, g2r={'ours': 3, 'PIDM': 0, 'CFLD': 1}, jab={'ours': 2, 'PIDM': 2, 'CFLD': 2}),
    'dave': dict(r2g=0, g2r={'ours': 1, 'PIDM': 1, 'CFLD': 1}, jab={'ours': 6}, catch_fail=1),  # 3 of 4: kept
    'carol': dict(r2g=6, g2r={'ours': 3}, jab={'CFLD': 6}, catch_fail=2),  # 2 of 4 checks: excluded
}
KEPT = ('alice', 'bob', 'dave')


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('score'))
  folders = sh.make_folders(os.path.join(root, 'in'))
  out = os.path.join(root, 'study')
  plan = sh.build_study(folders, out)
  files = []
  os.makedirs(os.path.join(root, 'responses'))
  for name, profile in PEOPLE.items():
    files.append(_write(os.path.join(root, 'responses', f'{name}.json'),
                        sh.response(plan, name, sh.answers_for(plan, **profile))))
  eve = sh.response(plan, 'eve', sh.answers_for(plan, **PEOPLE['alice']), drop=1)  # One trial missing.
  files.append(_write(os.path.join(root, 'responses', 'eve.json'), eve))
  return out, plan, files


def _write(path, obj) -> str:
  with open(path, 'w') as f:
    json.dump(obj, f)
  return path


def _expected(profile: dict) -> dict:
  out = {'R2G': profile['r2g'] / 6}
  out.update({f'G2R/{m}': profile['g2r'].get(m, 0) / 3 for m in sh.METHODS})
  out.update({f'JAB/{m}': profile['jab'].get(m, 0) / 6 for m in sh.METHODS})
  return out


def test_per_participant_scores_are_exact(study):
  _, plan, files = study
  result = score.score_study(plan, responses.load_responses(files, plan), resamples=200)
  by_name = {p.participant: p for p in result['participants']}
  for name in PEOPLE:
    assert by_name[name].metrics == _expected(PEOPLE[name]), name
  assert (by_name['dave'].catch_correct, by_name['dave'].catch_total, by_name['dave'].excluded) == (3, 4, '')
  assert by_name['carol'].excluded == 'attention checks: 2 of 4 correct (rule: at least 75%)'
  assert by_name['eve'].excluded == 'incomplete: 24 of 25 trials answered'
  assert by_name['alice'].median_rt_ms is not None
  assert (result['included'], result['excluded']) == (3, 2)


def test_overall_is_the_mean_of_included_participants(study):
  _, plan, files = study
  result = score.score_study(plan, responses.load_responses(files, plan), resamples=200)
  expected = {k: np.mean([_expected(PEOPLE[n])[k] for n in KEPT]) for k in _expected(PEOPLE['alice'])}
  got = {f'{r["metric"]}/{r["method"]}' if r['method'] else r['metric']: r['mean'] for r in result['metrics']}
  assert got == pytest.approx(expected, abs=1e-12)
  assert got['R2G'] == pytest.approx(6 / 18) and got['JAB/ours'] == pytest.approx(12 / 18)
  for r in result['metrics']:
    assert r['low'] <= r['mean'] <= r['high']
  # JAB shares of one participant add up to 1 over the methods.
  assert sum(v for k, v in got.items() if k.startswith('JAB/')) == pytest.approx(1.0)
  assert sum(result['position_shares']) == pytest.approx(1.0) and len(result['position_shares']) == 3


def test_bootstrap_two_participants_and_seed():
  low, high = score.bootstrap(np.array([[0.3, 0.0], [0.5, 1.0]]), resamples=4000, seed=0)
  # Each resample is one of {both first, mixed, both second}, each end with probability 1/4 > 2.5 %.
  np.testing.assert_array_equal(low, [0.3, 0.0])
  np.testing.assert_array_equal(high, [0.5, 1.0])
  one = score.bootstrap(np.array([[0.25]]), resamples=50)
  assert (one[0][0], one[1][0]) == (0.25, 0.25)


def test_bootstrap_matches_the_normal_interval_for_many_participants():
  rng = np.random.default_rng(1)
  values = (rng.random((400, 1)) < 0.3).astype(float)
  low, high = score.bootstrap(values, resamples=20_000, seed=3)
  half = 1.96 * values.std() / np.sqrt(len(values))
  assert (high - low)[0] / 2 == pytest.approx(half, rel=0.08)
  assert score.bootstrap(values, resamples=500, seed=3)[0] == score.bootstrap(values, resamples=500, seed=3)[0]
  assert score.bootstrap(values, resamples=500, seed=3)[0] != score.bootstrap(values, resamples=500, seed=4)[0]


def test_everyone_excluded_is_an_error(study):
  _, plan, files = study
  with pytest.raises(ValueError, match='no participant left after the exclusion rule .carol: attention checks'):
    score.score_study(plan, responses.load_responses([f for f in files if 'carol' in f], plan))


def test_bad_response_files_name_the_file(study, tmp_path):
  _, plan, files = study
  good = json.load(open(files[0]))

  def err(obj_or_text) -> str:
    path = tmp_path / 'r.json'
    path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    with pytest.raises(ValueError) as e:
      responses.load_responses([str(path)], plan)
    return str(e.value).replace(str(path), 'FILE')

  assert err('{not json').startswith('FILE: not a JSON file')
  assert err({'a': 1}) == 'FILE: not a study response file (no "format": "reposedm-study-response")'
  assert err({**good, 'study_id': 'abc'}) == (f"FILE: answers study 'abc', not this study {plan['study_id']!r}: "
                                               'it belongs to another build')
  assert err({**good, 'answers': [{'trial': 't999', 'answer': 'real'}]}) == "FILE: answer 1: unknown trial 't999'"
  cmp_id = next(t['id'] for t in plan['trials'] if t['block'] == 'cmp')
  assert err({**good, 'answers': [{'trial': cmp_id, 'answer': 'real'}]}) == \
      f"FILE: answer 1: 'real' is not an option of trial {cmp_id}"
  assert err({**good, 'answers': good['answers'][:1] * 2}) == \
      f"FILE: answer 2: trial {good['answers'][0]['trial']} answered twice"
  copy = tmp_path / 'alice_again.json'
  copy.write_text(open(files[0]).read())
  with pytest.raises(ValueError) as e:
    responses.load_responses([files[0], str(copy)], plan)
  assert str(e.value) == f"{copy}: participant 'alice' already answered in {files[0]}; keep one file"


def test_cli_score_writes_table_json_and_chart(study, capsys, tmp_path):
  out, plan, files = study
  rc = cli.main(['score', out, os.path.dirname(files[0]), '--out', str(tmp_path / 'res'), '--resamples', '500'])
  assert rc == 0
  md = (tmp_path / 'res' / 'results.md').read_text()
  assert '3 participants included, 2 excluded.' in md
  assert '| R2G (real judged generated) | real images | 33.3 |' in md
  assert '| G2R (generated judged real) | ours | 66.7 |' in md  # (2 + 3 + 1) / 9
  assert '| JAB (judged best) | ours | 66.7 |' in md and '| JAB (judged best) | CFLD | 16.7 |' in md
  assert '| carol | carol.json |' in md and 'excluded: attention checks: 2 of 4' in md
  js = json.loads((tmp_path / 'res' / 'results.json').read_text())
  assert js['study_id'] == plan['study_id'] and len(js['participants']) == 5
  with Image.open(tmp_path / 'res' / 'results.png') as im:
    assert im.size == (960, 520)
    assert len(np.unique(np.asarray(im.convert('RGB')).reshape(-1, 3), axis=0)) > 10  # Bars, not a blank canvas.
  assert 'wrote' in capsys.readouterr().out


def test_cli_score_errors_are_one_line(study, capsys, tmp_path):
  out, _, files = study
  assert cli.main(['score', str(tmp_path / 'nope'), files[0]]) == 2
  assert capsys.readouterr().err == f'study score: error: {tmp_path}/nope: study folder not found\n'
  other = tmp_path / 'other.json'
  other.write_text(json.dumps({**json.load(open(files[0])), 'study_id': 'feedbeef0000'}))
  assert cli.main(['score', out, str(other)]) == 2
  assert capsys.readouterr().err.startswith(f"study score: error: {other}: answers study 'feedbeef0000'")
