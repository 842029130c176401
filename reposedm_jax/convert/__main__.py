"""`python -m reposedm_jax.convert {pidm,hrnet,vae,resnet,sd,sd_text} [flags]`: one entry point for the weight converters.

  python -m reposedm_jax.convert pidm --src pidm_deepfashion.pt --dst weights/pidm [--config configs/X.py]
  python -m reposedm_jax.convert hrnet --src pose_higher_hrnet_w32_512.pth --dst weights/hrnet_w32 \
      [--arch w32|w48] [--naming official|timm]
  python -m reposedm_jax.convert vae --src vae.safetensors --dst weights/sd_vae [--preset sd|tiny]
  python -m reposedm_jax.convert resnet --src resnet50-11ad3fa6.pth --dst weights/resnet50
  python -m reposedm_jax.convert sd --src unet/diffusion_pytorch_model.safetensors --dst weights/sd21_unet
  python -m reposedm_jax.convert sd_text --src text_encoder/model.safetensors --dst weights/sd21_text

Each subcommand takes exactly the flags of its module (`python -m reposedm_jax.convert.pidm` and
`python -m reposedm_jax.convert.hrnet` keep working); `--help` after a subcommand lists them.
"""

import importlib
import sys

from absl import app

from reposedm_jax.convert import torch_checkpoint

CONVERTERS = ('pidm', 'hrnet', 'vae', 'resnet', 'sd', 'sd_text')


def run(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in CONVERTERS:
    sys.exit(f'usage: python -m reposedm_jax.convert {{{",".join(CONVERTERS)}}} [flags]  '
             f'(got {argv[1:2] or "nothing"})')
  module = importlib.import_module(f'reposedm_jax.convert.{argv[1]}')
  module._define_flags()  # pylint: disable=protected-access

  def main(args):
    try:
      return module._main(args)  # pylint: disable=protected-access
    except (torch_checkpoint.UnsafePickleError, ValueError, OSError) as e:
      # A refused or unreadable file is the user's (or an attacker's), not a bug: one line naming it.
      sys.exit(f'Cannot convert: {str(e).splitlines()[0] if str(e) else type(e).__name__}')

  app.run(main, argv=[f'{argv[0]} {argv[1]}'] + argv[2:])


if __name__ == '__main__':
  run(sys.argv)
