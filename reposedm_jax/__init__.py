"""RePoseDM-JAX: pose-guided person image synthesis with Recurrent Pose Alignment and Pose Interaction Fields."""
