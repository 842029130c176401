"""Does a trained model use its source image? (a diagnostic, not a test)

  python -m tools.condition_probe --config=configs/demo.py --workdir=runs/demo \
      --config.data.root=runs/val_data [--pairs=16] [--timesteps=50,200,500,800]

For test pairs (x0 = target, fixed noise) and each timestep t it prints the relative change of the predicted
noise when the source is replaced by the CFG null condition (|eps_c - eps_u| / |eps_c|) and by another pair's
source (a different person), plus the mean |x0_hat - x0| of both predictions. A model that reads its source
moves eps by a few per cent or more; 1e-4 means the source path is dead and classifier-free guidance is a
no-op (w_c changes nothing), whatever the sample grids suggest. The params are the workdir's latest EMA.
"""

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from reposedm_jax import checkpoint
from reposedm_jax.data import dataset, pipeline
from reposedm_jax.diffusion import gaussian
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory



def _define_flags():  # at run time only: importing `probe` (tests) must not define flags main.py also defines
  config_flags.DEFINE_config_file('config', None, 'Config file (the run\'s).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Training workdir (its latest EMA params) or a params dir.')
  flags.DEFINE_integer('pairs', 16, 'Test pairs (one batch).')
  flags.DEFINE_list('timesteps', ['50', '200', '500', '800'], 'Timesteps to probe.')
  flags.mark_flags_as_required(['config', 'workdir'])


def probe(config, workdir: str, pairs: int, timesteps) -> list[dict]:
  model = factory.build_model(config)
  fresh = factory.init_params(model, config, jax.random.key(0))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
  params = checkpoint.load_params(workdir, abstract, fresh_params=fresh)
  split = dataset.load_split(config.data, 'test')
  b = next(pipeline.iterate_eval(config.data, split, pairs))
  sched = linear_schedule(config.diffusion.timesteps, config.diffusion.beta_start, config.diffusion.beta_end)
  x0, pose, src = (jnp.asarray(b[k]) for k in ('tgt_img', 'tgt_pose', 'src_img'))
  other = jnp.roll(src, 1, axis=0)  # each row gets the next pair's source (and its keypoints)
  kp_s, kp_t = jnp.asarray(b['src_kpts']), jnp.asarray(b['tgt_kpts'])
  prediction = config.diffusion.get('prediction', 'eps')
  channels = x0.shape[-1]

  def eps_of(x, t, s, ks):  # the eps the network implies (diffusion.prediction v / v_aligned: converted)
    out, inter = model.apply({'params': params}, x, t, pose, s, train=False, kpts=(ks, kp_t),
                             mutable=['intermediates'])
    prior = inter['intermediates']['prior'][0] if 'prior' in inter.get('intermediates', {}) else None
    return gaussian.eps_output(sched, out, x, t, prediction, prior=prior)[..., :channels]
  apply = jax.jit(eps_of)
  rng = np.random.default_rng(0)
  rows = []
  for t in timesteps:
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    xt = gaussian.q_sample(sched, x0, tt, jnp.asarray(rng.normal(size=x0.shape), jnp.float32))
    e_c, e_u, e_o = (apply(xt, tt, src, kp_s), apply(xt, tt, jnp.zeros_like(src), kp_s),
                         apply(xt, tt, other, jnp.roll(kp_s, 1, axis=0)))
    x0_of = lambda e: gaussian.predict_x0_from_eps(sched, xt, tt, e)  # noqa: E731
    rel = lambda a: float(jnp.linalg.norm(e_c - a) / jnp.maximum(jnp.linalg.norm(e_c), 1e-12))  # noqa: E731
    rows.append({'t': int(t), 'null_vs_source': rel(e_u), 'other_vs_source': rel(e_o),
                 'x0_err_source': float(jnp.abs(x0_of(e_c) - x0).mean()),
                 'x0_err_null': float(jnp.abs(x0_of(e_u) - x0).mean())})
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the table
  f = flags.FLAGS
  for r in probe(f.config, f.workdir, f.pairs, [int(t) for t in f.timesteps]):
    print(f"t={r['t']:4d}  |eps(source) - eps(null)| / |eps| {r['null_vs_source']:.4f}   "
          f"another person's source {r['other_vs_source']:.4f}   "
          f"|x0_hat - x0| source {r['x0_err_source']:.3f} null {r['x0_err_null']:.3f}")


if __name__ == '__main__':
  _define_flags()
  app.run(main)
