"""The study page in a real browser: headless Chromium, a scripted participant, the downloaded answers scored.

Skips when no Chromium is installed (Debian: `apt-get install chromium`; or set STUDY_CHROMIUM=/path/to/chrome).
"""

import json
import os
import time

import pytest

from reposedm_jax.study import responses, score
from tests import study_browser
from tests import study_helpers as sh

CHROMIUM = study_browser.find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='no chromium binary found (apt-get install chromium, '
                                                         'or set STUDY_CHROMIUM)')
PROFILE = dict(r2g=2, g2r={'ours': 3, 'PIDM': 1, 'CFLD': 0}, jab={'ours': 3, 'PIDM': 2, 'CFLD': 1})
DISPLAY_MS = 400


def _options(page, block: str) -> list[str]:
  """What each answer position means on screen now: 'real'/'generated', or a candidate's image hash."""
  if block == 'rg':
    return page.js("Array.from(document.querySelectorAll('#trial button.answer'), "
                   "b => b.textContent.trim().split(/\\s/)[0].toLowerCase())")
  srcs = page.js("Array.from(document.querySelectorAll('#trial button.answer img'), i => i.getAttribute('src'))")
  return [os.path.basename(s)[:-len('.png')] for s in srcs]


def _take_study(page, wanted: dict, plan: dict) -> dict:
  """Clicks through every screen, answering each trial with `wanted[trial id]`; returns facts seen on the way."""
  trials = {t['id']: t for t in plan['trials']}
  seen = {'hidden_trial': None, 'keyboard': 0}
  first_scored_rg = True
  for _ in range(200):
    index = page.js('window.study.index')
    screen = page.wait("document.body.dataset.screen !== 'gap' && document.body.dataset.screen")
    if screen == 'done':
      return seen
    if screen.startswith(('intro-', 'ready-')):
      page.click('#continue')
    else:
      tid = page.wait('document.body.dataset.ready === document.body.dataset.trial && document.body.dataset.trial')
      t = trials[tid]
      if t['block'] == 'rg' and not t['practice'] and first_scored_rg:
        # The display limit: the image goes, the answer buttons stay.
        first_scored_rg = False
        page.wait(f"document.body.dataset.hidden === '{tid}'", timeout=5)
        assert page.js("getComputedStyle(document.querySelector('#trial img')).visibility") == 'hidden'
        seen['hidden_trial'] = tid
      pos = _options(page, t['block']).index(wanted[tid])
      if index % 3 == 0:
        page.key(str(pos + 1))
        seen['keyboard'] += 1
      else:
        page.click(f'#trial button.answer[data-pos="{pos}"]')
    page.wait(f'window.study.index !== {index}')
  raise AssertionError('the page never reached its last screen')


def test_scripted_participant_downloads_answers_that_score_exactly(tmp_path):
  start = time.monotonic()
  folders = sh.make_folders(str(tmp_path / 'in'))
  out = str(tmp_path / 'study')
  plan = sh.build_study(folders, out, display_ms=DISPLAY_MS, gap_ms=0)
  wanted = sh.answers_for(plan, **PROFILE)
  downloads = tmp_path / 'downloads'
  downloads.mkdir()
  with study_browser.Chromium(CHROMIUM, str(downloads)) as page:
    page.call('Page.navigate', {'url': f'file://{out}/page/index.html?pid=alice'})
    page.wait("document.body.dataset.screen === 'welcome'")
    assert page.js("document.getElementById('pid').value") == 'alice'  # ?pid= fills the ID in.
    page.click('#start')
    seen = _take_study(page, wanted, plan)
    path = downloads / f'response_{plan["study_id"]}_alice.json'
    end = time.monotonic() + 10
    while not path.exists() and time.monotonic() < end:
      time.sleep(0.05)
    assert path.exists(), f'no download in {downloads}: {os.listdir(downloads)}'
    in_page = page.js('window.study.response')
    order = page.js('window.study.steps.filter(s => s.trial).map(s => s.trial.id)')
    # The order follows from the study and participant IDs: the same ID gives it again, another ID does not.
    again, other = (page.js(f"participantPlan('{p}').steps.filter(s => s.trial).map(s => s.trial.id)")
                    for p in ('alice', 'bob'))
  resp = json.loads(path.read_text())
  assert resp == in_page
  assert resp['participant'] == 'alice' and resp['study_id'] == plan['study_id']
  assert [a['trial'] for a in resp['answers']] == order and len(order) == len(plan['trials'])
  assert again == order and other != order
  plan_order = [t['id'] for t in plan['trials']]
  assert order != plan_order and sorted(order) == sorted(plan_order)  # Shuffled per participant, all there.
  assert any(a['options'] != [c['image'] for c in trials_by_id(plan)[a['trial']]['candidates']]
             for a in resp['answers'] if a['block'] == 'cmp')  # Left/right positions randomised.
  assert next(a for a in resp['answers'] if a['trial'] == seen['hidden_trial'])['hidden'] is True
  assert seen['keyboard'] > 0 and all(a['rt_ms'] >= 0 for a in resp['answers'])

  result = score.score_study(plan, responses.load_responses([str(path)], plan), resamples=100)
  (alice,) = result['participants']
  assert alice.excluded == '' and (alice.catch_correct, alice.catch_total) == (4, 4)
  expected = {'R2G': 2 / 6, 'G2R/ours': 3 / 3, 'G2R/PIDM': 1 / 3, 'G2R/CFLD': 0 / 3,
              'JAB/ours': 3 / 6, 'JAB/PIDM': 2 / 6, 'JAB/CFLD': 1 / 6}
  assert alice.metrics == expected
  assert time.monotonic() - start < 30


def trials_by_id(plan: dict) -> dict:
  return {t['id']: t for t in plan['trials']}
