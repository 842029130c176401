"""FSDP switch: the sharding rule, and one update equal to the data-parallel one on 4 fake devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import demo
from reposedm_jax import sharding, train, train_state
from reposedm_jax.diffusion.schedule import linear_schedule
from reposedm_jax.models import factory
from tests.conftest import random_batch

pytestmark = pytest.mark.usefixtures('fast_compile')


def test_fsdp_spec_splits_largest_divisible_dim():
  assert sharding.fsdp_spec((3, 3, 16, 32), 4, 'data', 0) == P(None, None, None, 'data')
  assert sharding.fsdp_spec((12, 8), 4, 'data', 0) == P('data')
  assert sharding.fsdp_spec((6, 8), 4, 'fsdp', 0) == P(None, 'fsdp')  # 6 does not divide: next largest.
  assert sharding.fsdp_spec((16, 16), 4, 'data', 0) == P('data')  # Tie: the first dim.
  assert sharding.fsdp_spec((6, 10), 4, 'data', 0) == P()  # Nothing divisible: replicated.
  assert sharding.fsdp_spec((), 4, 'data', 0) == P()  # Scalars (Adam count, step).
  assert sharding.fsdp_spec((64,), 4, 'data', 65) == P()  # Below min_size.
  assert sharding.fsdp_spec((64,), 1, 'data', 0) == P()  # Axis of size 1.


def tiny_config(fsdp_axis=''):
  """The smallest U-Net that still has attention: XLA's compile of the train step dominates this file."""
  config = demo.get_config('runlocal')
  config.data.height, config.data.width = 8, 6
  m = config.model
  m.model_channels, m.channel_mult, m.num_res_blocks, m.norm_groups, m.attention_ds = 8, (1,), 1, 4, (1,)
  config.train.batch_size = 4
  config.train.ema_start_step = 1  # The EMA decays from step 1, so it is compared too.
  config.fsdp_axis = fsdp_axis
  config.train.fsdp_min_size = 64  # Tiny model: split everything but biases / norm scales.
  return config


def run_steps(config, host_state, n=2):
  """n train steps from `host_state` laid out as config says; returns (host state, metrics, live state)."""
  mesh = sharding.make_mesh(config.mesh)
  model = factory.build_model(config)
  tx = train_state.make_optimizer(config)
  shardings = sharding.state_shardings(host_state, mesh, config.fsdp_axis, config.train.fsdp_min_size)
  state = jax.device_put(host_state, shardings)
  step = train.compile_train_step(model, linear_schedule(1000), tx, config, mesh, shardings)
  metrics = []
  for i in range(n):
    state, m = step(state, sharding.global_batch(random_batch(config, i), mesh), jax.random.key(1))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics, state


def test_fsdp_update_equals_data_parallel():
  assert jax.device_count() == 4
  config = tiny_config()
  model, tx = factory.build_model(config), train_state.make_optimizer(config)
  init = jax.device_get(jax.jit(lambda: train_state.init_state(model, tx, config, jax.random.key(0)))())
  dp, dp_metrics, _ = run_steps(config, init)
  fs, fs_metrics, live = run_steps(tiny_config('data'), init)
  # Really split 4 ways: a conv kernel, its Adam moment and its EMA hold 1/4 of their elements per device.
  kernel = live['params']['output_blocks_0_0']['in_layers_2']['kernel']
  assert kernel.sharding.spec != P() and kernel.addressable_shards[0].data.size == kernel.size // 4
  assert live['opt_state'][1][0].mu['output_blocks_0_0']['in_layers_2']['kernel'].sharding == kernel.sharding
  assert live['ema_params']['output_blocks_0_0']['in_layers_2']['kernel'].sharding == kernel.sharding
  for a, b in zip(dp_metrics, fs_metrics):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-6)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-5)
  for key in ('params', 'opt_state', 'ema_params'):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), dp[key], fs[key])
  assert int(fs['step']) == 2
  # The update moved the params (so equality above is not trivially init == init).
  assert not np.allclose(dp['params']['out_2']['kernel'], init['params']['out_2']['kernel'])


def test_fsdp_on_a_second_mesh_axis():
  """mesh (data 2, fsdp 2): the batch is split over both axes, the weights over 'fsdp' only."""
  mesh = sharding.make_mesh((('data', 2), ('fsdp', 2)))
  abstract = {'params': {'w': jax.ShapeDtypeStruct((3, 3, 8, 16), np.float32)}}
  s = sharding.state_shardings(abstract, mesh, 'fsdp', 0)['params']['w']
  assert s.spec == P(None, None, None, 'fsdp')
  x = jax.device_put(np.zeros((3, 3, 8, 16), np.float32), s)
  assert {sh.data.shape for sh in x.addressable_shards} == {(3, 3, 8, 8)} and len(x.addressable_shards) == 4
  assert sharding.batch_sharding(mesh).spec == P(('data', 'fsdp'))


def test_state_shardings_keep_guide_and_scalars_replicated():
  mesh = sharding.make_mesh((('data', -1),))
  abstract = {'params': {'w': jax.ShapeDtypeStruct((8, 64), np.float32), 'b': jax.ShapeDtypeStruct((64,), np.float32)},
              'step': jax.ShapeDtypeStruct((), np.int32),
              'guide': {'w': jax.ShapeDtypeStruct((8, 64), np.float32)}}
  s = sharding.state_shardings(abstract, mesh, 'data', min_size=100)
  assert s['params']['w'].spec == P(None, 'data') and s['params']['b'].spec == P()
  assert s['step'].spec == P() and s['guide']['w'].spec == P()
  assert all(x.spec == P() for x in jax.tree.leaves(sharding.state_shardings(abstract, mesh, '')))
  with pytest.raises(ValueError, match='fsdp_axis'):
    sharding.state_shardings(abstract, mesh, 'model')
