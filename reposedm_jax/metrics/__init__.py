"""reposedm_jax.metrics."""
