"""Person re-ID on Market-1501 with generated training images (paper §4.5, Table 4).

  # 1. the pose-transfer model on Market-1501 (PATN files under the same root), e.g. RePoseDM:
  python -m reposedm_jax.main --config=configs/market1501.py:variant=full --workdir=runs/market \
      --config.data.root=/data/market1501
  # 2. ImageNet ResNet-50 (the user's torchvision file), once:
  python -m reposedm_jax.convert resnet --src resnet50-11ad3fa6.pth --dst weights/resnet50
  # 3. the table (p = 20/40/60/80 %, real only and real + generated): resumable, every stage skips what exists
  python -m reposedm_jax.main --config=configs/market1501_reid.py --workdir=runs/reid \
      --config.data.root=/data/market1501 --config.reid.backbone_dir=weights/resnet50 \
      --config.reid.generator=runs/market --config.mode=reid_augment
  # a single re-ID model on all real training images: --config.mode=reid_train (reid_eval re-evaluates it)
`runlocal`: a CPU smoke setting (small images, a shallow ResNet, a few steps).
"""

from configs import common, market1501


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False)
  config = market1501.get_config('runlocal' if args['runlocal'] else None)
  config.mode = 'reid_augment'
  if args['runlocal']:
    r = config.reid
    r.height, r.width, r.blocks = 64, 32, (1, 1, 1, 1)
    r.ids_per_batch, r.images_per_id = 4, 2
    r.num_steps, r.warmup_steps, r.decay_steps = 6, 2, (4,)
    r.log_every, r.ckpt_every, r.eval_batch_size, r.generate_batch = 2, 3, 16, 8
    r.generate_steps = 2
  return config
