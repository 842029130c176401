"""reposedm_jax.convert."""
