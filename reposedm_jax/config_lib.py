"""Start-up validation of a config, with messages that say which key to change and how.

The one place allowed values are checked: each vocabulary comes from the module that acts on it
(pif.TRAIN_MODES, metrics.ssim.VARIANTS, ...). `validate_eval` (config.eval alone) also serves the
evaluation CLI, whose config is not a run's.
"""

import json
import os

import jax

from reposedm_jax import latent, pif, pose_estimator, rpa_training, sample
from reposedm_jax.data import dataset, deepfashion, errors
from reposedm_jax.diffusion import gaussian, samplers
from reposedm_jax.evaluation import fid as eval_fid
from reposedm_jax.metrics import lpips, pose_accuracy, ssim
from reposedm_jax.models import aligned, b2, factory, hrnet, layers, unet
from reposedm_jax.convert import sd as sd_convert
from reposedm_jax.models.autoencoder import vae_config_for
from reposedm_jax.reid import train as reid_train
from reposedm_jax.sd import model as sd_model

# config.mode: the job main.py runs.
MODES = ('train', 'sample', 'eval', 'prepare', 'train_pose', 'reid_train', 'reid_eval', 'reid_augment',
         'sd_train', 'sd_sample', 'sd_eval', 'sd_train_detector', 'sd_train_vae')


class ConfigError(ValueError):
  pass


def _check(cond: bool, msg: str, problems: list[str]) -> None:
  if not cond:
    problems.append(msg)


def validate(config) -> None:
  """Raises ConfigError listing every problem found (not just the first)."""
  p: list[str] = []
  _check(config.mode in MODES, f'config.mode={config.mode!r} must be one of {MODES}', p)
  _check(config.variant in factory.VARIANTS,
         f'config.variant={config.variant!r}: this build provides {factory.VARIANTS}', p)
  f = config.pif
  _check(f.estimator in pose_estimator.ESTIMATORS,
         f'pif.estimator={f.estimator!r} must be one of {pose_estimator.ESTIMATORS}', p)
  _check(f.reference in pif.REFERENCES, f'pif.reference={f.reference!r} must be one of {pif.REFERENCES}', p)
  _check(f.source in pif.SOURCES, f'pif.source={f.source!r} must be one of {pif.SOURCES}', p)
  _check(0 < f.train_fraction <= 1, f'pif.train_fraction={f.train_fraction} must be in (0, 1]', p)
  _check(f.train_mode in pif.TRAIN_MODES, f'pif.train_mode={f.train_mode!r} must be one of {pif.TRAIN_MODES}', p)
  _check(f.normalize in pif.NORMALIZE, f'pif.normalize={f.normalize!r} must be one of {pif.NORMALIZE}', p)
  _check(f.grad_blur >= 0, f'pif.grad_blur={f.grad_blur} must be >= 0 (pixels; 0 = off)', p)
  _check(f.penalty_weight >= 0, f'pif.penalty_weight={f.penalty_weight} must be >= 0', p)
  dd = config.diffusion
  _check(dd.mse_weighting in gaussian.MSE_WEIGHTINGS,
         f'diffusion.mse_weighting={dd.mse_weighting!r} must be one of {gaussian.MSE_WEIGHTINGS}', p)
  _check(dd.get('prediction', 'eps') in gaussian.PREDICTIONS,
         f'diffusion.prediction={dd.get("prediction")!r} must be one of {gaussian.PREDICTIONS}', p)
  _check(dd.get('prediction', 'eps') != 'v_aligned' or config.variant in ('b2', 'full'),
         f"diffusion.prediction='v_aligned' centres x0 on RPA's aligned source, which variant={config.variant!r} "
         "does not have: use variant b2 or full, or prediction 'eps' / 'v'", p)
  _check(dd.min_snr_gamma > 0, f'diffusion.min_snr_gamma={dd.min_snr_gamma} must be > 0', p)
  r = config.rpa
  _check(r.aligned_path in aligned.ALIGNED_PATHS,
         f'rpa.aligned_path={r.aligned_path!r} must be one of {aligned.ALIGNED_PATHS}', p)
  _check(r.aux_region in rpa_training.AUX_REGIONS,
         f'rpa.aux_region={r.aux_region!r} must be one of {rpa_training.AUX_REGIONS}', p)
  _check(r.init_flow in b2.INIT_FLOWS, f'rpa.init_flow={r.init_flow!r} must be one of {b2.INIT_FLOWS}', p)
  _check(r.init_flow_sigma > 0 and r.init_flow_background > 0,
         f'rpa.init_flow_sigma={r.init_flow_sigma} and rpa.init_flow_background={r.init_flow_background} '
         'must be > 0', p)
  _check(r.pretrain_steps >= 0, f'rpa.pretrain_steps={r.pretrain_steps} must be >= 0', p)
  _check(r.lr_mult_after_pretrain >= 0, f'rpa.lr_mult_after_pretrain={r.lr_mult_after_pretrain} must be >= 0', p)
  # ds = 1: RPA at the input's own resolution (latent mode: the latents are already 1/8 of the image).
  _check(r.ds >= 1 and r.ds & (r.ds - 1) == 0, f'rpa.ds={r.ds} must be a power of two >= 1', p)
  _check(r.dim % r.heads == 0, f'rpa.dim={r.dim} must be divisible by rpa.heads={r.heads}', p)
  d = config.data
  _check(d.format in dataset.FORMATS, f'config.data.format={d.format!r} must be one of {dataset.FORMATS}', p)
  _check(d.image_source in deepfashion.IMAGE_SOURCES,
         f'config.data.image_source={d.image_source!r} must be one of {deepfashion.IMAGE_SOURCES}', p)
  _check(d.on_bad_example in errors.ON_BAD_EXAMPLE,
         f'config.data.on_bad_example={d.on_bad_example!r} must be one of {errors.ON_BAD_EXAMPLE}', p)
  if d.format == 'tfds':
    _check(bool(d.tfds_dir) and os.path.isdir(d.tfds_dir),
           f'config.data.tfds_dir={d.tfds_dir!r} is not a directory (run --config.mode=prepare first)', p)
  elif not config.mode.startswith('sd_'):  # RePoseSD reads config.sd's roots (_validate_sd)
    _check(bool(d.root) and os.path.isdir(d.root),
           f'config.data.root={d.root!r} is not a directory (pass --config.data.root=/path/to/dataset)', p)
  if config.mode == 'prepare':
    _check(d.format in ('pidm', 'patn'), 'mode=prepare reads data.format pidm|patn and writes data.tfds_dir', p)
    _check(bool(d.tfds_dir), 'mode=prepare needs --config.data.tfds_dir=DIR', p)
  _check(d.height > 0 and d.width > 0, 'config.data.height/width must be positive', p)
  _check(0 <= d.scale_param < 1 and 0 <= d.hflip_prob <= 1, 'data.scale_param in [0,1), data.hflip_prob in [0,1]', p)
  m = config.model
  levels = len(m.channel_mult)
  for mult in m.channel_mult:
    _check((m.model_channels * mult) % m.norm_groups == 0,
           f'model.norm_groups={m.norm_groups} must divide every width (model_channels*mult = '
           f'{m.model_channels * mult})', p)
  for ds in m.attention_ds:
    _check(ds & (ds - 1) == 0 and ds <= 2 ** (levels - 1),
           f'model.attention_ds entry {ds} must be a power of two <= {2 ** (levels - 1)} '
           f'(the deepest level of channel_mult={tuple(m.channel_mult)})', p)
  _check(m.dtype in unet.DTYPES, f'model.dtype={m.dtype!r} must be one of {unet.DTYPES}', p)
  _check(m.attention in layers.ATTENTION_IMPLS,
         f'model.attention={m.attention!r} must be one of {layers.ATTENTION_IMPLS}', p)
  _check(m.remat in layers.REMAT_POLICIES, f'model.remat={m.remat!r} must be one of {tuple(layers.REMAT_POLICIES)}', p)
  _check(m.space in latent.SPACES, f'model.space={m.space!r} must be one of {latent.SPACES}', p)
  if m.space == 'latent':
    _validate_latent(config, p)
  t = config.train
  n_dev = jax.device_count()
  per_pair = 2 if d.both_directions else 1
  _check(t.batch_size % n_dev == 0, f'train.batch_size={t.batch_size} must be divisible by the {n_dev} devices', p)
  _check(t.batch_size % (per_pair * jax.process_count()) == 0,
         f'train.batch_size={t.batch_size} must be divisible by {per_pair * jax.process_count()} '
         '(processes x 2 when data.both_directions)', p)
  _check(t.grid_pairs % n_dev == 0, f'train.grid_pairs={t.grid_pairs} must be divisible by {n_dev} devices', p)
  _check(0 <= t.cond_drop_prob < 1, 'train.cond_drop_prob must be in [0, 1)', p)
  for key in ('log_every', 'ckpt_every', 'sample_every', 'num_steps', 'keep_checkpoints', 'batch_size'):
    _check(t[key] > 0, f'train.{key}={t[key]} must be positive', p)
  _check(t.lr > 0, f'train.lr={t.lr} must be positive', p)
  _check(t.warmup_steps >= 0 and 0 <= t.warmup_init_frac <= 1,
         'train.warmup_steps must be >= 0 and train.warmup_init_frac in [0, 1]', p)
  _check(0 <= t.ema_decay < 1 and t.ema_start_step >= 0, 'train.ema_decay must be in [0, 1), ema_start_step >= 0', p)
  _check(t.weight_decay >= 0 and t.grad_clip >= 0, 'train.weight_decay and train.grad_clip must be >= 0', p)
  _check(0 <= t.b1 < 1 and 0 <= t.b2 < 1, 'train.b1 and train.b2 (AdamW betas) must be in [0, 1)', p)
  s = config.sample
  _check(s.sampler in sample.SAMPLERS, f'sample.sampler={s.sampler!r} must be one of {sample.SAMPLERS}', p)
  _check(s.ddpm_variance in samplers.DDPM_VARIANCES,
         f'sample.ddpm_variance={s.ddpm_variance!r} must be one of {samplers.DDPM_VARIANCES}', p)
  _check(s.batch_size % n_dev == 0, f'sample.batch_size={s.batch_size} must be divisible by {n_dev} devices', p)
  _check(0 < s.num_steps <= config.diffusion.timesteps, 'sample.num_steps must be in [1, diffusion.timesteps]', p)
  p += eval_problems(config.eval)
  if config.init_from:
    _check(os.path.exists(config.init_from), f'config.init_from={config.init_from!r} does not exist', p)
  _validate_pose(config, n_dev, p)
  if config.mode.startswith('reid_'):
    _validate_reid(config, p)
  if config.mode.startswith('sd_'):
    _validate_sd(config, p)
  if p:
    raise ConfigError('Invalid config:\n  - ' + '\n  - '.join(p))


def eval_problems(e) -> list[str]:
  """What is wrong with config.eval (`e`), one readable line each."""
  p: list[str] = []
  _check(e.protocol in eval_fid.PROTOCOLS, f'eval.protocol={e.protocol!r} must be one of {eval_fid.PROTOCOLS}', p)
  known = sorted(ssim.VARIANTS)
  _check(e.ssim_variant in ssim.VARIANTS, f'eval.ssim_variant={e.ssim_variant!r} must be one of {known}', p)
  bad = [v for v in e.ssim_variants if v not in ssim.VARIANTS]
  if bad:
    p.append(f'eval.ssim_variants has {bad}: unknown SSIM variant {bad[0]!r}; known: {known}')
  _check(e.fid_reference in eval_fid.FID_REFERENCES,
         f"eval.fid_reference={e.fid_reference!r} must be one of {eval_fid.FID_REFERENCES} ('' = no FID)", p)
  _check(e.lpips_net in ('',) + lpips.NETS, f"eval.lpips_net={e.lpips_net!r} must be one of {lpips.NETS} or ''", p)
  judges = sorted(pose_accuracy.JUDGE_FACTORIES)
  bad = [j for j in e.pose_judges if j not in pose_accuracy.JUDGE_FACTORIES]
  _check(not bad, f'eval.pose_judges has {bad}; each must be one of {judges}', p)
  _check(e.batch_size >= 1, f'eval.batch_size={e.batch_size} must be positive', p)
  return p


def validate_eval(eval_cfg) -> None:
  """Raises ConfigError listing every problem of config.eval (the evaluation CLI's check; validate runs it too)."""
  p = eval_problems(eval_cfg)
  if p:
    raise ConfigError('Invalid eval config:\n  - ' + '\n  - '.join(p))


def _validate_sd(config, p: list[str]) -> None:
  s = config.sd if 'sd' in config else None
  if s is None:
    p.append(f'config.mode={config.mode!r} needs a RePoseSD config (--config=configs/reposesd.py)')
    return
  _check(s.prediction in sd_model.PREDICTIONS, f'sd.prediction={s.prediction!r} must be one of {sd_model.PREDICTIONS}', p)
  _check(s.unet_preset in sd_convert.PRESETS, f'sd.unet_preset={s.unet_preset!r} must be one of {tuple(sd_convert.PRESETS)}', p)
  _check(s.text_preset in sd_model.TEXT_PRESETS,
         f'sd.text_preset={s.text_preset!r} must be one of {tuple(sd_model.TEXT_PRESETS)}', p)
  _check(os.path.isfile(s.vocab), f'sd.vocab={s.vocab!r}: no such file (bpe_simple_vocab_16e6.txt.gz, or an '
         'open_clip_torch wheel that holds it)', p)
  training = config.mode in ('sd_train', 'sd_train_detector', 'sd_train_vae')
  root = s.train_root if training else s.eval_root
  _check(bool(root) and os.path.isdir(root), f'sd.{"train" if training else "eval"}_root={root!r} '
         'is not a directory (HumanSD layout: a mapping JSON beside images/ and pose/)', p)
  try:
    vae_factor = vae_config_for(config.latent).downsample
  except (ValueError, FileNotFoundError) as e:
    p.append(f'RePoseSD needs the VAE: {e}')
    vae_factor = None
  if s.unet_preset in sd_convert.PRESETS and vae_factor:
    f = vae_factor * 2 ** (len(sd_convert.PRESETS[s.unet_preset].block_out_channels) - 1)
    _check(s.image_size % f == 0, f'sd.image_size={s.image_size} must be a multiple of {f} (the VAE factor times '
           "the U-Net's levels)", p)
  _check(s.dtype in unet.DTYPES, f'sd.dtype={s.dtype!r} must be one of {unet.DTYPES}', p)
  _check(0 < s.sample_steps <= s.num_timesteps, f'sd.sample_steps={s.sample_steps} must be in [1, sd.num_timesteps]', p)
  _check(config.pif.source == 'x0' and config.pif.reference == 'heatmaps',
         f"RePoseSD's PIF reads x̂0 against the multi-person heatmaps: pif.source must be 'x0' (got "
         f"{config.pif.source!r}) and pif.reference 'heatmaps' (got {config.pif.reference!r})", p)
  _check(s.nms_kernel % 2 == 1 and s.nms_kernel >= 1, f'sd.nms_kernel={s.nms_kernel} must be odd and >= 1', p)
  if s.unet_dir:
    _check(os.path.isfile(os.path.join(s.unet_dir, sd_convert.META_FILE)),
           f'sd.unet_dir={s.unet_dir!r} has no {sd_convert.META_FILE}: convert with `python -m reposedm_jax.convert sd`', p)
  for key in ('batch_size', 'num_steps', 'log_every', 'ckpt_every', 'sample_steps', 'eval_batch_size', 'max_persons'):
    _check(s[key] > 0, f'sd.{key}={s[key]} must be positive', p)
  _check(s.batch_size % jax.device_count() == 0,
         f'sd.batch_size={s.batch_size} must be divisible by the {jax.device_count()} devices', p)
  _check(s.remat in layers.REMAT_POLICIES, f'sd.remat={s.remat!r} must be one of {tuple(layers.REMAT_POLICIES)}', p)
  _check(0 <= s.text_drop < 1 and 0 <= s.hflip <= 1, 'sd.text_drop must be in [0, 1) and sd.hflip in [0, 1]', p)
  for key, d in (('unet_dir', s.unet_dir), ('text_dir', s.text_dir), ('detector_dir', s.detector_dir)):
    _check(not d or os.path.isdir(d), f'sd.{key}={d!r} is not a directory', p)


def _validate_reid(config, p: list[str]) -> None:
  r = config.reid
  _check(r.loss in reid_train.LOSSES, f'reid.loss={r.loss!r} must be one of {reid_train.LOSSES}', p)
  _check(r.metric in ('euclidean', 'cosine'), f"reid.metric={r.metric!r} must be 'euclidean' or 'cosine'", p)
  _check(all(0 < f <= 1 for f in r.fractions), f'reid.fractions={tuple(r.fractions)} must lie in (0, 1]', p)
  _check(r.ids_per_batch >= 2 and r.images_per_id >= 1,
         f'reid.ids_per_batch={r.ids_per_batch} must be >= 2 and reid.images_per_id={r.images_per_id} >= 1', p)
  _check(r.height % 16 == 0 and r.width % 16 == 0, f'reid.height x width = {r.height} x {r.width} must be '
         'multiples of 16 (ResNet-50 with last stride 1)', p)
  for key in ('num_steps', 'log_every', 'ckpt_every', 'eval_batch_size', 'generate_batch'):
    _check(r[key] > 0, f'reid.{key}={r[key]} must be positive', p)
  if r.backbone_dir:
    _check(os.path.isdir(r.backbone_dir), f'reid.backbone_dir={r.backbone_dir!r} is not a directory', p)
    _check(tuple(r.blocks) == (3, 4, 6, 3), f'reid.blocks={tuple(r.blocks)}: ImageNet weights (reid.backbone_dir) '
           'are ResNet-50\'s (3, 4, 6, 3)', p)
  if config.mode == 'reid_augment':
    _check(bool(r.generator) and os.path.isdir(r.generator),
           f'reid.generator={r.generator!r}: mode=reid_augment needs a pose-transfer workdir or export', p)


def _validate_latent(config, p: list[str]) -> None:
  lc, m, d = config.latent, config.model, config.data
  _check(lc.pose in latent.POSE_MODES, f'latent.pose={lc.pose!r} must be one of {latent.POSE_MODES}', p)
  try:
    vc = latent.vae_config(config)
  except (ValueError, FileNotFoundError, KeyError) as e:
    p.append(str(e))
    return
  f = vc.downsample
  _check(d.height % f == 0 and d.width % f == 0,
         f'model.space=latent: data.height x width = {d.height} x {d.width} must be divisible by the VAE\'s '
         f'downsample factor {f}', p)
  _check(m.image_channels == vc.latent_channels,
         f'model.space=latent: model.image_channels={m.image_channels} must equal the VAE\'s latent channels '
         f'{vc.latent_channels}', p)
  if lc.pose == 'encode':
    _check(m.pose_channels == vc.latent_channels,
           f'latent.pose=encode: model.pose_channels={m.pose_channels} must equal the VAE\'s latent channels '
           f'{vc.latent_channels}', p)


def _validate_pose(config, n_dev: int, p: list[str]) -> None:
  """config.pose: the HigherHRNet estimator and its trainer (mode=train_pose)."""
  q = config.pose
  _check(q.arch in hrnet.PRESETS, f'pose.arch={q.arch!r} must be one of {sorted(hrnet.PRESETS)}', p)
  _check(q.sigma > 0 and q.sigma_s4 > 0, 'pose.sigma and pose.sigma_s4 must be positive', p)
  for key in ('checkpoint', 'init_from'):
    if q[key]:
      _check(os.path.isdir(q[key]), f'pose.{key}={q[key]!r} is not a directory (write one with '
             '`python -m reposedm_jax.convert hrnet --src FILE.pth --dst DIR`)', p)
  if config.mode == 'train_pose':
    _check(q.batch_size % (2 * jax.process_count()) == 0 and (q.batch_size // 2) % n_dev == 0,
           f'pose.batch_size={q.batch_size} must be 2 x a multiple of the {n_dev} devices '
           '(each step uses both images of batch_size/2 pairs)', p)
    for key in ('num_steps', 'log_every', 'ckpt_every', 'eval_batch_size', 'keep_checkpoints'):
      _check(q[key] > 0, f'pose.{key} must be positive', p)
    _check(q.eval_every >= 0 and q.warmup_steps >= 0, 'pose.eval_every and pose.warmup_steps must be >= 0', p)
    _check(q.lr > 0 and 0 <= q.final_lr_frac <= 1, 'pose.lr must be positive and pose.final_lr_frac in [0, 1]', p)


def _has_step(run: str) -> bool:
  """A finished checkpoint step in run/checkpoints (sampling creates the directory empty)."""
  ckpt = os.path.join(run, 'checkpoints')
  return os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt))


def check_prediction_matches(config, workdir: str) -> None:
  """Refuses to run on checkpoints trained with another `diffusion.prediction`.

  The switch changes what the weights mean, not their shapes, so the checkpoint restore cannot catch it: an eps
  network read as v samples noise. Sources: the workdir's own checkpoint steps and, when it has none and the mode
  samples, `init_from`. Every mode rewrites config.json, which is what this reads, so every mode is checked
  (eval too: it would otherwise record the wrong prediction for the next sample / predict). A config.json from
  before the switch existed means 'eps'.
  """
  if 'diffusion' not in config:
    return
  want = config.diffusion.get('prediction', 'eps')
  paths = [workdir] if _has_step(workdir) else []
  if not paths and config.mode == 'sample' and config.get('init_from'):
    paths.append(config.init_from)
  for path in paths:
    cfg_path = os.path.join(path, 'config.json')
    if not os.path.isfile(cfg_path):
      continue
    with open(cfg_path) as f:
      stored = json.load(f).get('diffusion', {}).get('prediction', 'eps')
    if stored != want:
      raise ConfigError(f'{cfg_path}: its checkpoints were trained with diffusion.prediction={stored!r}, this config '
                        f'has {want!r}; add --config.diffusion.prediction={stored} or use another --workdir')


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    # Written whole, then renamed: other processes read it (check_prediction_matches) while process 0 writes.
    tmp = os.path.join(workdir, f'.config.json.{os.getpid()}')
    with open(tmp, 'w') as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, 'config.json'))
