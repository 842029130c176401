"""python -m reposedm_jax.export --workdir RUN --dst DIR [--step N] [--raw] [--format orbax|safetensors]

Writes a training run's weights (EMA by default, the latest step by default) with its config, as a directory
that `--config.init_from=DIR`, `python -m reposedm_jax.predict --weights DIR` and sample mode read (layout:
run_weights.py).
"""

import argparse
import sys

from reposedm_jax import run_weights


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.export', description=__doc__.split('\n\n')[1])
  p.add_argument('--workdir', required=True, help='training workdir (holds config.json and checkpoints/)')
  p.add_argument('--dst', required=True, help='export directory (replaced if it exists)')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  group = p.add_mutually_exclusive_group()
  group.add_argument('--ema', dest='ema', action='store_true', default=True, help='EMA weights (default)')
  group.add_argument('--raw', dest='ema', action='store_false', help='the raw (non-EMA) weights')
  p.add_argument('--format', default='orbax', choices=run_weights.FORMATS)
  args = p.parse_args(argv)
  try:
    record = run_weights.export(args.workdir, args.dst, step=args.step, ema=args.ema, fmt=args.format)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'export: {e}')
  print(f"Exported {record['variant']} step {record['step']} ({record['weights']}, {record['parameters']:,} "
        f"parameters, {record['format']}) to {args.dst}")
  return record


if __name__ == '__main__':
  main()
