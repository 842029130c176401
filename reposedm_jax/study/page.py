"""The participant page: `page.html` (HTML, CSS and JS in one file) with the public half of the plan inlined.

The page gets only what it must show: trial ids, block, whether a trial is practice, and image hashes, in plan
order. Which image is real, which method made which, and which trials are attention checks stay in the private
`trials.json`, outside the folder that is shared with participants.
"""

import html
import json
import os

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'page.html')
PAGE_FORMAT = 'reposedm-study-page'


def public_trial(trial: dict) -> dict:
  """A private plan trial -> what the page may know about it."""
  out = {'id': trial['id'], 'block': trial['block'], 'practice': trial['practice']}
  if trial['block'] == 'rg':
    out['image'] = trial['image']
  else:
    out.update(source=trial['source_image'], pose=trial['pose_image'],
               candidates=[c['image'] for c in trial['candidates']])
  return out


def page_data(plan: dict) -> dict:
  page = plan['page']
  trials = [public_trial(t) for t in plan['trials']]
  cmp = [t for t in trials if t['block'] == 'cmp']
  return {'format': PAGE_FORMAT, 'version': 1, 'study_id': plan['study_id'], 'title': page['title'],
          'display_ms': page['display_ms'], 'gap_ms': page['gap_ms'], 'size': plan['size'],
          'candidates': len(cmp[0]['candidates']) if cmp else 0, 'trials': trials}


def render(plan: dict) -> str:
  """index.html text for `plan` (the private plan written as trials.json)."""
  with open(TEMPLATE) as f:
    template = f.read()
  data = json.dumps(page_data(plan), separators=(',', ':'))
  # Inside <script>, '</' could end the element early; '<\/' is the same string to JSON.parse.
  data = data.replace('</', '<\\/')
  return template.replace('{{TITLE}}', html.escape(plan['page']['title'])).replace('{{DATA}}', data)


def write(plan: dict, page_dir: str) -> str:
  path = os.path.join(page_dir, 'index.html')
  with open(path, 'w') as f:
    f.write(render(plan))
  return path
