"""predict: a trained model on the user's own photos and poses (`python -m reposedm_jax.predict --help`)."""
