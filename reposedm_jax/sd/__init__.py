"""RePoseSD (paper §4.4, Table 3): Stable Diffusion 2.x with PIF guidance. Built so far: the U-Net (unet.py),
the text encoder (text.py) and its tokenizer (tokenizer.py)."""
