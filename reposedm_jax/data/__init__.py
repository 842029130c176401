"""reposedm_jax.data."""
