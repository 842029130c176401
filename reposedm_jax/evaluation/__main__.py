"""python -m reposedm_jax.evaluation --generated DIR --reference DIR --pairs FILE ... (see cli.py)."""

from reposedm_jax.evaluation import cli

if __name__ == '__main__':
  cli.main()
