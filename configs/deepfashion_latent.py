"""DeepFashion 256x176 in the paper's latent space (§3.1): SD's kl-f8 VAE, 32x22x4 latents.

The VAE is the user's file (no VAE weights ship with any installable package), converted once:
  python -m reposedm_jax.convert vae --src vae-ft-mse-840000-ema-pruned.safetensors --dst weights/sd_vae
  python -m reposedm_jax.main --config=configs/deepfashion_latent.py:variant=full --workdir=runs/df_latent \
      --config.data.root=/data/deepfashion --config.latent.vae_dir=weights/sd_vae
  # sample / eval exactly as configs/deepfashion.py: ... --config.mode=sample ; ... --config.mode=eval
`runlocal` is a tiny CPU smoke run with a randomly initialised tiny VAE (nothing to download).
"""

from configs import common, deepfashion


def apply_latent(config, preset: str = '') -> None:
  """Latent-mode settings over a pixel config: the U-Net and RPA at the latents' resolution."""
  config.model.space = 'latent'
  config.latent.random_preset = preset
  config.model.image_channels = 4  # SD's latent channels
  # The U-Net reads 32x22 latents: four levels (32, 16, 8, 4) with cross-attention at 32, 16 and 8, the
  # resolutions PIDM attends at in pixel space (its levels 256 ... 8 at 1/8, 1/16, 1/32).
  m = config.model
  m.channel_mult = (1, 2, 4, 4)
  m.attention_ds = (1, 2, 4)
  # RPA ran at 1/8 of the image in pixel mode (32x22): the latents are that grid already.
  config.rpa.ds = 1


def get_config(arg=None):
  args = common.parse_arg(arg, variant='b1', runlocal=False)
  config = deepfashion.get_config(f"variant={args['variant']}")
  apply_latent(config)
  if args['runlocal']:
    config.latent.random_preset = 'tiny'
    config.data.worker_count = 0
    m = config.model
    m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups, m.attention_ds = 16, (1, 2), 1, 8, (2,)
    config.rpa.ds = 2  # the tiny VAE downsamples by 2: 128x88 latents for 256x176
    config.train.batch_size, config.train.num_steps = 2, 2
    config.sample.num_steps, config.sample.num, config.sample.batch_size = 2, 2, 2
  return config
