"""The scored study as results.md (Markdown tables) and results.json."""

import dataclasses
import json
import os

LABELS = {'R2G': 'R2G (real judged generated)', 'G2R': 'G2R (generated judged real)',
          'JAB': 'JAB (judged best)'}


def _pct(v) -> str:
  return '-' if v is None else f'{100 * v:.1f}'


def _rule_text(result: dict) -> str:
  rule = result['rule']
  checks = (f'fewer than {rule["min_catch"]:.0%} of its {rule["catch_trials"]} attention checks correct'
            if rule['catch_trials'] else 'no attention checks in this study')
  return (f'Exclusion rule: a participant is excluded when the file misses a trial, or has {checks}. '
          f'Intervals: 95 % percentile bootstrap over included participants ({rule["bootstrap_resamples"]} '
          f'resamples, seed {rule["bootstrap_seed"]}).')


def markdown(result: dict, plan: dict) -> str:
  people = result['participants']
  lines = [f'# Perception study {result["study_id"]}', '',
           f'{result["included"]} participants included, {result["excluded"]} excluded. {_rule_text(result)}', '',
           '| metric | method | mean (%) | 95 % CI (%) |', '| --- | --- | ---: | --- |']
  for r in result['metrics']:
    lines.append(f'| {LABELS[r["metric"]]} | {r["method"] or "real images"} | {_pct(r["mean"])} | '
                 f'{_pct(r["low"])} – {_pct(r["high"])} |')
  if result['position_shares']:
    n = len(result['position_shares'])
    shares = ', '.join(_pct(s) for s in result['position_shares'])
    lines += ['', f'Comparison choices by position, left to right (%): {shares} (chance {100 / n:.1f}).']
  keys = [f'{r["metric"]}/{r["method"]}' if r['method'] else r['metric'] for r in result['metrics']]
  lines += ['', '## Per participant', '',
            '| participant | file | ' + ' | '.join(k.replace('/', ' ') + ' (%)' for k in keys)
            + ' | checks | median time (s) | status |',
            '| --- | --- | ' + ' | '.join('---:' for _ in keys) + ' | ---: | ---: | --- |']
  for p in people:
    rt = '-' if p.median_rt_ms is None else f'{p.median_rt_ms / 1000:.1f}'
    cells = ' | '.join(_pct(p.metrics.get(k)) for k in keys)
    lines.append(f'| {p.participant} | {os.path.basename(p.file)} | {cells} | {p.catch_correct}/{p.catch_total} | '
                 f'{rt} | {"excluded: " + p.excluded if p.excluded else "included"} |')
  design = plan['design']
  lines += ['', f'Design: {design["real"]} real and {design["generated"]} generated images per method of '
                f'{", ".join(design["rg_methods"])} (real vs generated), {design["sets"]} comparison sets of '
                f'{", ".join(plan["methods"])}, {design["catch"]} attention checks and {design["practice"]} '
                f'practice trials per block; seed {design["seed"]}; target pose: {plan["pose"]}.', '']
  return '\n'.join(lines)


def to_json(result: dict) -> dict:
  return {**result, 'participants': [dataclasses.asdict(p) for p in result['participants']]}


def write(result: dict, plan: dict, out_dir: str) -> dict[str, str]:
  """Writes results.md and results.json into out_dir; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {'md': os.path.join(out_dir, 'results.md'), 'json': os.path.join(out_dir, 'results.json')}
  with open(paths['md'], 'w') as f:
    f.write(markdown(result, plan))
  with open(paths['json'], 'w') as f:
    json.dump(to_json(result), f, indent=1)
    f.write('\n')
  return paths
