"""Recurrent Pose Alignment and the B2 model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import deepfashion, demo
from reposedm_jax.models import factory
from reposedm_jax.models.rpa import RPA


pytestmark = pytest.mark.usefixtures('fast_compile')


def tiny_rpa(use_scan=False):
  return RPA(dim=16, ds=4, heads=2, windows=(None, 3), depth=1, radius=1, iterations=2, use_scan=use_scan)


def inputs(b=2, h=24, w=20, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.uniform(-1, 1, (b, h, w, 3)), jnp.float32),
          jnp.asarray(rng.uniform(0, 1, (b, h, w, 20)), jnp.float32))


@pytest.mark.parametrize('config_module,ds', [(demo, 4), (deepfashion, 8)])
def test_rpa_shapes_for_demo_and_paper_configs(config_module, ds):
  config = config_module.get_config('variant=b2')
  h, w = config.data.height, config.data.width
  rpa = RPA.from_config(config.rpa)
  src = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  pose = jax.ShapeDtypeStruct((1, h, w, 20), jnp.float32)
  variables = jax.eval_shape(rpa.init, jax.random.key(0), src, pose)
  warped, flow, strip = jax.eval_shape(rpa.apply, variables, src, pose)
  assert warped.shape == (1, h, w, 3)
  assert flow.shape == (1, -(-h // ds), -(-w // ds), 2)
  assert strip.shape == (config.rpa.iterations + 1, 1, h, w, 3)


def test_gradients_reach_every_rpa_parameter():
  rpa = tiny_rpa()
  src, pose = inputs()
  params = rpa.init(jax.random.key(0), src, pose)['params']
  target = jnp.roll(src, 2, axis=2)

  def loss(p):
    warped, _, _ = rpa.apply({'params': p}, src, pose)
    return jnp.abs(warped - target).mean()

  grads = jax.grad(loss)(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, f'parameters without gradient: {dead}'


def test_scan_and_loop_variants_agree():
  src, pose = inputs(seed=1)
  loop, scan = tiny_rpa(False), tiny_rpa(True)
  params = loop.init(jax.random.key(0), src, pose)['params']
  # Same parameter tree: the scan's 'cell' is broadcast over iterations, not stacked.
  scan_params = scan.init(jax.random.key(0), src, pose)['params']
  assert jax.tree.structure(params) == jax.tree.structure(scan_params)
  out_loop = loop.apply({'params': params}, src, pose)
  out_scan = scan.apply({'params': params}, src, pose)
  for a, b in zip(out_loop, out_scan):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_initial_flow_is_near_identity():
  rpa = tiny_rpa()
  src, pose = inputs(seed=2)
  params = rpa.init(jax.random.key(0), src, pose)['params']
  warped, flow, _ = rpa.apply({'params': params}, src, pose)
  assert float(jnp.abs(flow).max()) < 0.05
  assert float(jnp.abs(warped - src).mean()) < 0.05


def test_b2_model_forward_and_aux_output():
  config = demo.get_config('variant=b2')
  config.data.height, config.data.width = 32, 24
  m = config.model
  m.model_channels, m.channel_mult, m.attention_ds, m.norm_groups = 16, (1, 2), (2,), 8
  config.rpa.dim, config.rpa.iterations = 16, 1
  model = factory.build_model(config)
  params = factory.init_params(model, config, jax.random.key(0))
  assert set(params) == {'unet', 'rpa'}
  src, pose = inputs(h=32, w=24)
  x_t = jnp.zeros_like(src)
  assert config.rpa.init_flow == 'keypoints'  # the demo's B2: the pre-warp needs both poses' keypoints
  out, inter = model.apply({'params': params}, x_t, jnp.zeros((2,), jnp.int32), pose, src, train=False,
                           kpts=factory.dummy_kpts(2), mutable=['intermediates'])
  assert out.shape == (2, 32, 24, 6)
  assert inter['intermediates']['warped'][0].shape == (2, 32, 24, 3)

# B2 end to end (train + sample + RPA strips with the B1 commands) is covered by
# tests/test_pif.py::test_full_variant_trains_and_samples_with_the_b1_commands: variant=full is the same
# B2Model plus guidance, and one end-to-end compile of each would double the suite's slowest test.
