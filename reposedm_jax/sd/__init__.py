"""RePoseSD (paper §4.4, Table 3): Stable Diffusion 2.x with PIF guidance. In progress: the U-Net."""
