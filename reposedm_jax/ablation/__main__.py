"""python -m reposedm_jax.ablation [--out runs/ablation] [--docs docs/ablation] [--train-seeds 0,1] ...

Runs (or resumes) the ablation B1 / B2 / RePoseDM and writes its report; `make ablation` runs the defaults.
"""

import argparse
import dataclasses
import json
import os
import platform

from reposedm_jax.ablation import plan, report, runner


def _ints(text: str):
  return tuple(int(v) for v in text.split(',') if v.strip())


def tiny_settings(out: str) -> plan.Settings:
  """Minutes-scale setting for the test suite: the tiny runlocal model and a one-cell RPA on 32x22 images, no RPA
  pre-training (its phase switch is tested in tests/test_rpa_training.py; here it would double the compiles),
  rows B1 and RePoseDM only and one sampling seed. The full row runs every part B2 has (RPA, the pre-warp) plus
  PIF, so B2's row would add only compiles; the plan's B2 row and the seed statistics are tested without
  running (tests/test_ablation.py). FID and LPIPS are off: compiling their networks for 4 images was most of
  the run (tests/test_fid.py and test_lpips.py cover them). On CI's 2 cores the three-row, two-seed run took
  over 15 minutes."""
  return plan.Settings(out=out, identities=6, views=3, height=32, width=22, difficulty='hard', test_fraction=0.34,
                       base_steps=2, ft_steps=2, pretrain_steps=0, pose_steps=2, pairs=4, sample_steps=2,
                       train_seeds=(0,), sample_seeds=(1,), models=('b1', 'full'), config_arg='runlocal=True',
                       overrides=(('train.batch_size', 4), ('sample.batch_size', 4), ('pose.batch_size', 8),
                                  ('eval.batch_size', 4), ('pose.eval_images', 4), ('rpa.dim', 16),
                                  # FID's Inception and LPIPS's AlexNet have their own tests; compiling them
                                  # for 4 images is most of this run's time.
                                  ('eval.fid_reference', ''), ('eval.lpips_net', ''),
                                  ('rpa.iterations', 1), ('rpa.windows', (3,)), ('rpa.radius', 1)))


def build_parser() -> argparse.ArgumentParser:
  d = plan.Settings()
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.ablation', description=__doc__.split('\n\n')[0])
  p.add_argument('--out', default=d.out, help='work directory (every stage skips what exists in it)')
  p.add_argument('--docs', default='docs/ablation', help='where the table, chart and grids go')
  for f in dataclasses.fields(plan.Settings):
    if f.name in ('out', 'config_arg', 'overrides'):
      continue
    flag = '--' + f.name.replace('_', '-')
    if f.type in (int, 'int'):
      p.add_argument(flag, type=int, default=f.default)
    elif f.type in (float, 'float'):
      p.add_argument(flag, type=float, default=f.default)
    elif f.name in ('train_seeds', 'sample_seeds'):
      p.add_argument(flag, type=_ints, default=f.default, help='comma-separated')
    elif f.name == 'models':
      p.add_argument(flag, type=lambda t: tuple(t.split(',')), default=f.default, help='comma-separated')
    else:
      p.add_argument(flag, default=f.default)
  p.add_argument('--tiny', action='store_true', help='the test suite\'s seconds-scale setting')
  p.add_argument('--in-process', action='store_true', help='run the stages in this process (tests)')
  p.add_argument('--report-only', action='store_true', help='only (re)write the report from what is evaluated')
  return p


def main(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  if args.tiny:
    s = tiny_settings(args.out)
  else:
    names = {f.name for f in dataclasses.fields(plan.Settings)} - {'config_arg', 'overrides'}
    s = plan.Settings(**{n: getattr(args, n) for n in names})
  if not args.report_only:
    runner.run(plan.stages(s), s.out, in_process=args.in_process)
  times = os.path.join(s.out, 'stage_times.jsonl')
  wall = sum(json.loads(line)['seconds'] for line in open(times)) if os.path.exists(times) else None
  machine = f'{os.cpu_count()} CPU cores, {platform.machine()}'
  results = report.write(s, args.docs, wall, machine)
  print(report.table(results, s))
  return results


if __name__ == '__main__':
  main()
