"""Evaluation of generated images: every metric next to the copy-source baseline, one engine for two front ends.

  engine.py  the pass (`evaluate_pairs`), eval mode (`run_eval`: --config.mode=eval), settings
  fid.py     Inception features of generated and real images, FID reference sets and their cache
  pose.py    pose judges (the hrnet judge's factory) and the per-image detection bookkeeping
  report.py  metrics.json run description, the Markdown report
  cli.py     `python -m reposedm_jax.evaluation --generated DIR --reference DIR --pairs FILE ...`
"""
