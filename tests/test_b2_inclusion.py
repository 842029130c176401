"""B2 ⊇ B1: b2 / full built on B1 weights compute B1's function; B1 / PIDM checkpoints load into them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from reposedm_jax import checkpoint
from reposedm_jax.convert import pidm as pidm_convert
from reposedm_jax.models import factory
from reposedm_jax.models.b2 import has_source
from tests.conftest import random_batch
from tests.test_train import tiny_config

pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(variant, path='both'):
  config = tiny_config()
  config.variant = variant
  config.rpa.dim, config.rpa.ds, config.rpa.heads, config.rpa.windows = 16, 4, 2, (3,)
  config.rpa.radius, config.rpa.iterations = 1, 1
  config.rpa.aligned_path = path
  config.rpa.init_flow = 'none'  # the paper's identity start (tests/test_keypoint_flow.py: the pre-warp)
  return config


def _b1_params(seed=0):
  """B1 weights with every zero-initialised output projection made non-zero (a 'trained' B1)."""
  config = _config('b1')
  params = factory.init_params(factory.build_model(config), config, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  flat = {k: (jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype) if not np.any(np.asarray(v)) else v)
          for k, v in traverse_util.flatten_dict(params).items()}
  return traverse_util.unflatten_dict(flat)


def _outputs(variant_config, params, batch, t):
  model = factory.build_model(variant_config)
  src = jnp.asarray(batch['src_img'])
  src = src.at[1].set(0.0)  # row 1 is the CFG null condition
  kpts = (jnp.asarray(batch['src_kpts']), jnp.asarray(batch['tgt_kpts']))  # read by the pre-warp only
  return model.apply({'params': params}, jnp.asarray(batch['tgt_img']), t, jnp.asarray(batch['tgt_pose']), src,
                     train=False, kpts=kpts)


@pytest.mark.parametrize('variant,path', [('b2', 'input'), ('b2', 'tokens'), ('full', 'both')])
def test_fresh_b2_on_b1_weights_is_b1(tmp_path, variant, path):
  b1 = _b1_params()
  ckpt = str(tmp_path / 'b1')
  checkpoint.save_params(ckpt, b1)
  config = _config(variant, path)
  model = factory.build_model(config)
  fresh = factory.init_params(model, config, jax.random.key(3))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
  params = checkpoint.load_params(ckpt, abstract, fresh_params=fresh)
  assert set(params) == {'unet', 'rpa'}
  batch = random_batch(config)
  t = jnp.asarray([10, 500, 900, 999])
  want = _outputs(_config('b1'), b1, batch, t)
  got = _outputs(config, params, batch, t)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
  # The aligned paths exist and are live: moving their zero-initialised weights changes the output,
  # except on the null row, where they are switched off with the condition.
  flat = traverse_util.flatten_dict(params)
  flat = {k: (v + 0.05 if 'aligned' in '/'.join(k) and k[-1] == 'kernel' else v) for k, v in flat.items()}
  moved = _outputs(config, traverse_util.unflatten_dict(flat), batch, t)
  diff = np.abs(np.asarray(moved) - np.asarray(want)).max(axis=(1, 2, 3))
  assert diff[1] <= 1e-6 and np.all(diff[[0, 2, 3]] > 1e-4), diff


def test_replace_reading_is_kept_as_a_switch():
  config = _config('b2', 'replace')
  params = factory.init_params(factory.build_model(config), config, jax.random.key(0))
  names = {'/'.join(k) for k in traverse_util.flatten_dict(params)}
  assert not any('aligned' in n for n in names)
  assert {'/'.join(k) for k in traverse_util.flatten_dict(_b1_params())} == {
      n[len('unet/'):] for n in names if n.startswith('unet/')}


def test_pidm_layout_checkpoint_converts_into_b2_and_full(tmp_path):
  """PIDM state dict -> converter -> init_from of b2 and full: the U-Net is the converted one."""
  b1 = _b1_params(seed=1)
  flat = traverse_util.flatten_dict(b1)
  # Torch layouts by hand (conv HWIO -> OIHW, dense (I, O) -> linear (O, I)), not the converter's code.
  sd = {pidm_convert.flax_path_to_pidm_key(k): (np.asarray(v).transpose(3, 2, 0, 1) if v.ndim == 4 else
                                                np.asarray(v).T if v.ndim == 2 else np.asarray(v))
        for k, v in flat.items()}
  converted = pidm_convert.convert_pidm_state_dict(sd, _config('b1').model)
  dst = checkpoint.save_params(str(tmp_path / 'pidm'), converted)
  for variant in ('b2', 'full'):
    config = _config(variant, 'both')
    fresh = factory.init_params(factory.build_model(config), config, jax.random.key(2))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
    params = checkpoint.load_params(dst, abstract, fresh_params=fresh)
    got = traverse_util.flatten_dict(params['unet'])
    for k, v in flat.items():
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v))


def test_mismatched_checkpoint_lists_what_differs(tmp_path):
  b1 = _b1_params()
  broken = traverse_util.flatten_dict(b1)
  broken[('not_a_layer', 'kernel')] = jnp.zeros((2,))
  ckpt = str(tmp_path / 'broken')
  checkpoint.save_params(ckpt, traverse_util.unflatten_dict(broken))
  config = _config('b2')
  fresh = factory.init_params(factory.build_model(config), config, jax.random.key(3))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
  with pytest.raises(ValueError, match='unexpected.*unet/not_a_layer/kernel'):
    checkpoint.load_params(ckpt, abstract, fresh_params=fresh)


def test_has_source_marks_the_null_condition():
  src = np.ones((3, 4, 4, 3), np.float32)
  src[1] = 0
  np.testing.assert_array_equal(np.asarray(has_source(jnp.asarray(src))), [1, 0, 1])


def test_training_workdir_as_init_from_gives_its_latest_ema(tmp_path):
  """`--config.init_from=<B1 workdir>`: the latest step's EMA params, nested under unet/ for b2."""
  b1 = _b1_params()
  raw = jax.tree.map(lambda v: v + 1.0, b1)
  workdir = str(tmp_path / 'b1_run')
  manager = checkpoint.make_manager(workdir, keep=2)
  for step, ema in ((2, raw), (4, b1)):  # the older step must not be the one read
    checkpoint.save(manager, step, {'params': raw, 'ema_params': ema, 'step': jnp.int32(step)})
  manager.wait_until_finished()
  manager.close()
  config = _config('b2', 'input')
  fresh = factory.init_params(factory.build_model(config), config, jax.random.key(3))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fresh)
  params = checkpoint.load_params(workdir, abstract, fresh_params=fresh)
  got, want, init = (traverse_util.flatten_dict(t) for t in (params, b1, fresh))
  for key, value in got.items():  # B1's tensors from the EMA; what B2 adds (rpa/, *aligned*) fresh
    expected = want[key[1:]] if key[0] == 'unet' and key[1:] in want else init[key]
    np.testing.assert_array_equal(value, expected, err_msg='/'.join(key))
  assert len(got) == len(want) + sum(k[0] == 'rpa' or 'aligned' in '/'.join(k) for k in got)
  # Same variant: the EMA tree loads as it is.
  b1_abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), b1)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(workdir, b1_abstract), b1)
  empty = tmp_path / 'empty_run' / 'checkpoints'
  empty.mkdir(parents=True)
  with pytest.raises(ValueError, match='without a finished checkpoint'):
    checkpoint.load_params(str(empty.parent), abstract, fresh_params=fresh)


@pytest.mark.parametrize('path', ['both', 'replace'])
def test_the_v_aligned_prior_is_the_warped_source_and_zero_for_the_null_condition(path):
  """diffusion.prediction='v_aligned' reads cond['aligned']['prior'] (sampling) and the sown 'prior' (training):
  both must be RPA's warped source, and all zero on a CFG null row, so the null branch keeps a zero prior."""
  config = _config('b2', path)
  model = factory.build_model(config)
  params = factory.init_params(model, config, jax.random.key(0))
  batch = random_batch(config, seed=3)
  src = jnp.asarray(batch['src_img']).at[1].set(0.0)
  pose = jnp.asarray(batch['tgt_pose'])
  cond, inter = model.apply({'params': params}, src, pose, False, mutable=['intermediates'],
                            method=model.encode_condition)
  prior = cond['prior'] if path == 'replace' else cond['aligned']['prior']
  warped = np.asarray(inter['intermediates']['warped'][0])
  np.testing.assert_array_equal(prior, inter['intermediates']['prior'][0])
  np.testing.assert_allclose(np.asarray(prior)[0], warped[0], atol=1e-6)
  assert np.any(np.abs(warped[0]) > 0.1) and not np.any(np.asarray(prior)[1])
