"""The ablation B1 (PIDM) / B2 (+RPA) / RePoseDM (+PIF) with seeds: `make ablation`, `python -m reposedm_jax.ablation`.

plan.py lists the stages (data, the two pose estimators, the trainings, sampling and evaluation per sampling
seed), runner.py runs them, skipping every stage whose output exists (so the whole study survives a restart),
report.py aggregates the evaluations into docs/ablation/ (a Markdown table with mean ± sd, a bar chart with
error bars, a sample grid per model).
"""
