"""reposedm_jax.diffusion."""
