"""Reading a study's plan and its answer files, with one-line errors that name the file at fault."""

import json
import os

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.study.plan import PLAN_FORMAT

RESPONSE_FORMAT = 'reposedm-study-response'  # Written by page.html's finish().


def _read_json(path: str, what: str):
  if not os.path.isfile(path):
    raise BadExampleError(path, f'{what} not found')
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadExampleError(path, f'not a JSON file ({e})') from None


def load_plan(study_dir: str) -> dict:
  """STUDY/trials.json, checked to be a study plan."""
  if not os.path.isdir(study_dir):
    raise BadExampleError(study_dir, 'study folder not found')
  path = os.path.join(study_dir, 'trials.json')
  plan = _read_json(path, 'study plan (written by `study build`)')
  if not isinstance(plan, dict) or plan.get('format') != PLAN_FORMAT:
    raise BadExampleError(path, f'not a study plan (no "format": "{PLAN_FORMAT}")')
  return plan


def trial_options(trial: dict) -> set:
  """The answers a trial accepts: 'real'/'generated', or the hash of one candidate."""
  return {'real', 'generated'} if trial['block'] == 'rg' else {c['image'] for c in trial['candidates']}


def load_response(path: str, plan: dict) -> dict:
  """One participant's answer file, checked against the plan.

  Raises:
    BadExampleError: naming `path`, when it is not JSON, not a response file, answers another study, or holds
      answers the plan's trials cannot have (unknown trial, an option the trial did not show, a trial twice).
  """
  resp = _read_json(path, 'response file')
  if not isinstance(resp, dict) or resp.get('format') != RESPONSE_FORMAT:
    raise BadExampleError(path, f'not a study response file (no "format": "{RESPONSE_FORMAT}")')
  if resp.get('study_id') != plan['study_id']:
    raise BadExampleError(path, f'answers study {resp.get("study_id")!r}, not this study '
                                f'{plan["study_id"]!r}: it belongs to another build')
  answers = resp.get('answers')
  if not isinstance(answers, list) or not isinstance(resp.get('participant'), str):
    raise BadExampleError(path, 'lacks "participant" or the "answers" list')
  trials = {t['id']: t for t in plan['trials']}
  seen = set()
  for n, a in enumerate(answers):
    where = f'answer {n + 1}'
    if not isinstance(a, dict) or a.get('trial') not in trials:
      raise BadExampleError(path, f'{where}: unknown trial {a.get("trial") if isinstance(a, dict) else a!r}')
    trial = trials[a['trial']]
    if a.get('answer') not in trial_options(trial):
      raise BadExampleError(path, f'{where}: {a.get("answer")!r} is not an option of trial {trial["id"]}')
    if a['trial'] in seen:
      raise BadExampleError(path, f'{where}: trial {trial["id"]} answered twice')
    seen.add(a['trial'])
  return resp


def load_responses(paths: list[str], plan: dict) -> list[tuple[str, dict]]:
  """(path, response) for every file; two files from one participant ID are an error naming both."""
  if not paths:
    raise ValueError('no response files given')
  out, by_name = [], {}
  for path in paths:
    resp = load_response(path, plan)
    name = resp['participant']
    if name in by_name:
      raise BadExampleError(path, f'participant {name!r} already answered in {by_name[name]}; keep one file')
    by_name[name] = path
    out.append((path, resp))
  return out
