"""reposedm_jax.models."""
