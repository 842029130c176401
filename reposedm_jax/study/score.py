"""R2G, G2R and JAB (paper §4.2) per participant and overall, with bootstrap intervals and the exclusion rule.

  R2G       share of the real images (block 'rg') that a participant judged generated.
  G2R[m]    share of method m's images (block 'rg') judged real.
  JAB[m]    share of the comparison sets (block 'cmp') in which m's image was picked as best.
Practice and catch trials never enter these. Every participant sees the same trials, so the overall value is the
mean over included participants, which equals the pooled share.

Exclusion rule: a participant is excluded when (1) the file does not answer every scored and catch trial, or
(2) fewer than `min_catch` (default 75 %) of the attention checks were answered correctly; with the default two
checks per block that is more than one failed check out of four. Intervals: percentile bootstrap over the
included participants (resampled with replacement, `resamples` times, seeded).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class ParticipantScore:
  """One answer file's scores.

  Attributes:
    participant: the ID typed into the page (or the page's random 'anon-...').
    file: the response file.
    metrics: metric key ('R2G', 'G2R/<method>', 'JAB/<method>') -> share in [0, 1].
    catch_correct, catch_total: attention checks answered correctly / shown.
    answered, expected: scored and catch trials answered / in the plan.
    median_rt_ms: median response time over scored trials (None without any).
    excluded: why the participant is excluded, or '' when included.
  """
  participant: str
  file: str
  metrics: dict[str, float]
  catch_correct: int
  catch_total: int
  answered: int
  expected: int
  median_rt_ms: float | None
  excluded: str = ''


def metric_keys(plan: dict) -> list[str]:
  """The study's metrics in report order: R2G, G2R per block-'rg' method, JAB per method."""
  trials = [t for t in plan['trials'] if not t['practice'] and not t['catch']]
  keys = []
  if any(t['block'] == 'rg' and t['truth'] == 'real' for t in trials):
    keys.append('R2G')
  rg = {t['method'] for t in trials if t['block'] == 'rg' and t['truth'] == 'generated'}
  keys += [f'G2R/{m}' for m in plan['methods'] if m in rg]
  if any(t['block'] == 'cmp' for t in trials):
    keys += [f'JAB/{m}' for m in plan['methods']]
  return keys


def score_participant(plan: dict, path: str, resp: dict, *, min_catch: float = 0.75) -> ParticipantScore:
  """Counts one response file's answers against the plan (already checked by responses.load_response)."""
  answers = {a['trial']: a for a in resp['answers']}
  hits, totals = {k: 0 for k in metric_keys(plan)}, {k: 0 for k in metric_keys(plan)}
  catch_ok = catch_n = answered = expected = 0
  rts = []
  for t in plan['trials']:
    if t['practice']:
      continue
    expected += 1
    a = answers.get(t['id'])
    if a is None:
      continue
    answered += 1
    if t['catch']:
      catch_n += 1
      catch_ok += a['answer'] == (t['truth'] if t['block'] == 'rg' else t['correct'])
      continue
    rts.append(a.get('rt_ms', np.nan))
    if t['block'] == 'rg':
      key = 'R2G' if t['truth'] == 'real' else f'G2R/{t["method"]}'
      totals[key] += 1
      hits[key] += a['answer'] == ('generated' if t['truth'] == 'real' else 'real')
    else:
      chosen = next(c['method'] for c in t['candidates'] if c['image'] == a['answer'])
      for m in plan['methods']:
        totals[f'JAB/{m}'] += 1
        hits[f'JAB/{m}'] += chosen == m
  catch_total = sum(1 for t in plan['trials'] if t['catch'])
  excluded = ''
  if answered < expected:
    excluded = f'incomplete: {answered} of {expected} trials answered'
  elif catch_total and catch_ok < min_catch * catch_total:
    excluded = f'attention checks: {catch_ok} of {catch_total} correct (rule: at least {min_catch:.0%})'
  metrics = {k: hits[k] / totals[k] for k in hits if totals[k]}
  rt = float(np.nanmedian(rts)) if rts and not np.all(np.isnan(rts)) else None
  return ParticipantScore(resp['participant'], path, metrics, catch_ok, catch_n, answered, expected, rt, excluded)


def bootstrap(values: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Percentile 95 % intervals of the column means of values [P, K], resampling the P rows.

  Returns:
    (low, high), each [K]; with one row both equal that row.
  """
  p = values.shape[0]
  rng = np.random.default_rng(seed)
  means = np.empty((resamples, values.shape[1]))
  chunk = max(1, 2_000_000 // max(p, 1))  # Bounds memory to ~2M indices a chunk for any P.
  for start in range(0, resamples, chunk):
    idx = rng.integers(0, p, size=(min(chunk, resamples - start), p))
    means[start:start + idx.shape[0]] = values[idx].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5], axis=0)
  return low, high


def position_shares(plan: dict, responses: list[tuple[str, dict]], included: set[str]) -> list[float]:
  """Share of scored comparison choices at each displayed position, left to right (chance 1 / candidates)."""
  cmp = {t['id'] for t in plan['trials'] if t['block'] == 'cmp' and not t['practice'] and not t['catch']}
  counts = None
  for path, resp in responses:
    if path not in included:
      continue
    for a in resp['answers']:
      if a['trial'] in cmp and isinstance(a.get('position'), int):
        counts = counts if counts is not None else np.zeros(len(a['options']), int)
        if 0 <= a['position'] < len(counts):
          counts[a['position']] += 1
  return [] if counts is None or not counts.sum() else [float(c) for c in counts / counts.sum()]


def score_study(plan: dict, responses: list[tuple[str, dict]], *, min_catch: float = 0.75,
                resamples: int = 10_000, seed: int = 0) -> dict:
  """Scores every file and summarises the included participants.

  Returns:
    {'metrics': [{'metric', 'method', 'mean', 'low', 'high'}], 'participants': [ParticipantScore],
     'included', 'excluded', 'position_shares', 'rule': {...}}.

  Raises:
    ValueError: when no participant is left after the exclusion rule.
  """
  people = [score_participant(plan, path, resp, min_catch=min_catch) for path, resp in responses]
  kept = [p for p in people if not p.excluded]
  if not kept:
    reasons = '; '.join(f'{p.participant}: {p.excluded}' for p in people)
    raise ValueError(f'no participant left after the exclusion rule ({reasons})')
  keys = metric_keys(plan)
  values = np.array([[p.metrics[k] for k in keys] for p in kept], np.float64)
  low, high = bootstrap(values, resamples=resamples, seed=seed)
  rows = []
  for k, mean, lo, hi in zip(keys, values.mean(axis=0), low, high):
    name, _, method = k.partition('/')
    rows.append({'metric': name, 'method': method or None, 'mean': float(mean), 'low': float(lo),
                 'high': float(hi)})
  return {'study_id': plan['study_id'], 'metrics': rows, 'participants': people, 'included': len(kept),
          'excluded': len(people) - len(kept),
          'position_shares': position_shares(plan, responses, {p.file for p in kept}),
          'rule': {'min_catch': min_catch, 'catch_trials': sum(1 for t in plan['trials'] if t['catch']),
                   'bootstrap_resamples': resamples, 'bootstrap_seed': seed}}
