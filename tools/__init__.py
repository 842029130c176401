"""Benchmarks and one-off scripts, run from the repository root (`python -m tools.bench_train ...`).

Nothing in reposedm_jax/ imports them; tests may (e.g. tools.bench_attention's jaxpr helper).
"""
