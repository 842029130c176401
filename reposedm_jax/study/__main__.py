"""Perception study CLI (paper §4.2, Fig. 7).

  python -m reposedm_jax.study build --real DIR --generated NAME=DIR [NAME=DIR ...] --pairs FILE --out STUDY
      [--keypoints CSV_OR_ROOT [--keypoint-frame HxW] | --pose-from-target] [--source DIR] [--seed 0]
      [--real-count 30] [--generated-count 20] [--sets 30] [--catch 2] [--practice 2] [--rg-methods A,B|all]
      [--size HxW] [--display-ms 0] [--gap-ms 300] [--title TEXT] [--skip-missing] [--overwrite]
  python -m reposedm_jax.study score STUDY RESPONSE.json|DIR [...] [--out STUDY/results]
      [--min-catch 0.75] [--resamples 10000] [--seed 0]

Share STUDY/page/ with participants (index.html opens from a file share or any static host); each one's
answers download as one JSON file. `score` writes results.md, results.json and results.png.
"""

import argparse
import glob
import logging
import os
import sys

from reposedm_jax.study import build, chart, inputs, plan, report, responses, score


def _hw(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected HxW, e.g. 256x176, got {text!r}') from None
  return h, w


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.study', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = p.add_subparsers(dest='command', required=True)
  b = sub.add_parser('build', help='build a study page from image folders')
  b.add_argument('--real', required=True, help='folder of real images (the targets of the pairs)')
  b.add_argument('--generated', required=True, nargs='+', metavar='NAME=DIR', help='each method\'s images')
  b.add_argument('--pairs', required=True, help='PIDM pairs txt, PATN from,to CSV, or a sample manifest .jsonl')
  b.add_argument('--out', required=True, help='study folder to create')
  b.add_argument('--source', default='', help='folder of source images (default: --real)')
  b.add_argument('--keypoints', default='', help='PATN annotation CSV or PIDM root with pose/: draws target poses')
  b.add_argument('--keypoint-frame', type=_hw, default=(256, 176), help='pixel frame of a keypoint CSV')
  b.add_argument('--pose-from-target', action='store_true', help='show the real target image as the pose')
  b.add_argument('--seed', type=int, default=0)
  b.add_argument('--real-count', type=int, default=30, help='real images (block 1)')
  b.add_argument('--generated-count', type=int, default=20, help='generated images per method (block 1)')
  b.add_argument('--sets', type=int, default=30, help='comparison sets (block 2; 0 = no block 2)')
  b.add_argument('--catch', type=int, default=2, help='attention checks per block')
  b.add_argument('--practice', type=int, default=2, help='practice trials per block')
  b.add_argument('--rg-methods', default='', help='methods shown in block 1, comma-separated, or "all" '
                 '(default: the first --generated method, as in the paper)')
  b.add_argument('--size', type=_hw, default=None, help='display size (default: the generated images\')')
  b.add_argument('--display-ms', type=int, default=0, help='hide the images after this long (0 = never)')
  b.add_argument('--gap-ms', type=int, default=300, help='blank screen between trials')
  b.add_argument('--title', default='Person image study')
  b.add_argument('--skip-missing', action='store_true', help='drop pairs lacking an image instead of failing')
  b.add_argument('--overwrite', action='store_true', help='replace an existing study in --out')
  s = sub.add_parser('score', help='score downloaded answer files')
  s.add_argument('study', help='study folder (holds trials.json)')
  s.add_argument('responses', nargs='+', help='response .json files, or folders of them')
  s.add_argument('--out', default='', help='output folder (default: STUDY/results)')
  s.add_argument('--min-catch', type=float, default=0.75, help='share of attention checks to pass')
  s.add_argument('--resamples', type=int, default=10_000, help='bootstrap resamples')
  s.add_argument('--seed', type=int, default=0, help='bootstrap seed')
  return p


def run_build(args) -> dict:
  inp = inputs.StudyInputs(real=args.real, generated=inputs.parse_methods(args.generated), pairs=args.pairs,
                           source=args.source, keypoints=args.keypoints, keypoint_frame=args.keypoint_frame,
                           pose_from_target=args.pose_from_target, skip_missing=args.skip_missing)
  rg = tuple(inp.generated) if args.rg_methods == 'all' else \
      tuple(m.strip() for m in args.rg_methods.split(',') if m.strip())
  design = plan.Design(real=args.real_count, generated=args.generated_count, sets=args.sets, catch=args.catch,
                       practice=args.practice, seed=args.seed, rg_methods=rg)
  result = build.build(inp, design, args.out, size=args.size, title=args.title, display_ms=args.display_ms,
                       gap_ms=args.gap_ms, overwrite=args.overwrite)
  print(f'study {result["study_id"]}: {len(result["trials"])} trials; open {args.out}/page/index.html')
  return result


def response_files(items: list[str]) -> list[str]:
  out = []
  for item in items:
    if os.path.isdir(item):
      out += sorted(glob.glob(os.path.join(item, '*.json')))
    else:
      out.append(item)
  return out


def run_score(args) -> dict:
  plan = responses.load_plan(args.study)
  files = response_files(args.responses)
  result = score.score_study(plan, responses.load_responses(files, plan), min_catch=args.min_catch,
                             resamples=args.resamples, seed=args.seed)
  out = args.out or os.path.join(args.study, 'results')
  paths = report.write(result, plan, out)
  paths['png'] = chart.write(result, plan['methods'], os.path.join(out, 'results.png'))
  sys.stdout.write(report.markdown(result, plan).split('\n## ')[0])
  print(f'\nwrote {paths["md"]}, {paths["json"]}, {paths["png"]}')
  return result


def main(argv=None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  args = build_parser().parse_args(argv)
  try:
    run_build(args) if args.command == 'build' else run_score(args)
  except (ValueError, OSError) as e:  # BadExampleError is a ValueError.
    # One line naming the file at fault, no traceback: these are the user's inputs, not bugs.
    sys.stderr.write(f'study {args.command}: error: {e}\n')
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
