"""Speed switches of the U-Net: dot_product_attention vs einsum, remat policies, bf16 compute."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reposedm_jax.models import layers
from reposedm_jax.models.unet import PIDMUNet

pytestmark = pytest.mark.usefixtures('fast_compile')

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(1, 2), norm_groups=8,
            dropout=0.0)


def random_params(shapes, seed=0, std=0.2):
  """Random float32 params of the given shapes, every leaf non-zero (the zero-initialised output convs
  would hide the attention path). numpy draws: no XLA compile, which dominates tiny tests on CPU."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(std * rng.normal(size=a.shape) + (a.ndim == 1), jnp.float32), shapes)


def unet_inputs(b=2, h=8, w=6, seed=1):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32), jnp.asarray([3, 700], jnp.int32)[:b],
          jnp.asarray(rng.uniform(size=(b, h, w, 20)), jnp.float32),
          jnp.asarray(rng.uniform(-1, 1, (b, h, w, 3)), jnp.float32))


def init_unet(**kw):
  model = PIDMUNet(**{**TINY, **kw})
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, *unet_inputs(), train=False)['params'])
  return model, random_params(shapes)


# ----------------------------------------------------------------------------- attention


def attention_reference_f64(p, x, cond, groups):
  """PIDM's cross-attention in float64 numpy: GN(x) -> q, cond -> (k, v), softmax(q k^T / sqrt(C)) v."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x, cond = np.asarray(x, np.float64), np.asarray(cond, np.float64)
  b, h, w, c = x.shape
  xt = x.reshape(b, h * w, c)
  g = xt.reshape(b, h * w, groups, c // groups)
  normed = ((g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5))
  normed = normed.reshape(b, h * w, c) * p['norm']['scale'] + p['norm']['bias']
  q = normed @ p['to_q']['kernel'] + p['to_q']['bias']
  kv = cond.reshape(b, h * w, c) @ p['to_kv']['kernel'] + p['to_kv']['bias']
  k, v = kv[..., :c], kv[..., c:]
  logits = q @ k.transpose(0, 2, 1) / math.sqrt(c)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ v) @ p['proj_out2']['kernel'] + p['proj_out2']['bias']
  return x + out.reshape(b, h, w, c)


def test_dot_product_attention_equals_einsum_and_float64_reference():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 16)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(2, 6, 5, 16)), jnp.float32)
  params = random_params(jax.eval_shape(lambda: layers.CrossAttention(8).init(jax.random.key(0), x, cond)['params']),
                         std=0.5)
  out = {impl: jax.jit(layers.CrossAttention(8, implementation=impl).apply)({'params': params}, x, cond)
         for impl in ('dot_product', 'einsum')}
  want = attention_reference_f64(params, x, cond, 8)
  assert np.abs(want - np.asarray(x)).max() > 0.1  # The attention path really contributes.
  np.testing.assert_allclose(out['dot_product'], out['einsum'], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['dot_product'], want, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match='model.attention'):
    layers.CrossAttention(8, implementation='flash').apply({'params': params}, x, cond)


def test_unet_attention_implementations_agree():
  model, params = init_unet(attention='dot_product')
  out_dpa = jax.jit(lambda p: model.apply({'params': p}, *unet_inputs(), train=False))(params)
  out_ein = jax.jit(lambda p: model.clone(attention='einsum').apply({'params': p}, *unet_inputs(), train=False))(
      params)
  assert float(jnp.abs(out_dpa).max()) > 1e-2
  np.testing.assert_allclose(out_dpa, out_ein, atol=1e-5 * float(jnp.abs(out_dpa).max()), rtol=1e-5)


# ----------------------------------------------------------------------------- remat

REMAT_PRIMS = {'checkpoint', 'remat2', 'remat'}  # jax.checkpoint's primitive name differs across versions.


def primitive_names(jaxpr) -> list[str]:
  """All primitive names in a (closed) jaxpr, recursing into sub-jaxprs (pjit, remat, custom_jvp...)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          names += primitive_names(sub)
  return names


def test_remat_policies_match_no_remat():
  # One level (compile time); dropout on: the recomputation must redraw the same masks.
  model, params = init_unet(dropout=0.3, channel_mult=(1,), attention_ds=(1,))
  inputs = unet_inputs()
  policies = ('none', 'full', 'dots_saveable')

  def loss(p, policy):
    out = model.clone(remat=policy).apply({'params': p}, *inputs, train=True, rngs={'dropout': jax.random.key(5)})
    return jnp.mean(jnp.square(out))

  for policy in policies:
    names = set(primitive_names(jax.make_jaxpr(lambda p, q=policy: jax.grad(loss)(p, q))(params)))
    assert bool(REMAT_PRIMS & names) == (policy != 'none'), policy
    # Same parameter tree: checkpoints and PIDM weights load with or without remat.
    shapes = jax.eval_shape(
        lambda q=policy: model.clone(remat=q).init({'params': jax.random.key(0)}, *inputs, train=False)['params'])
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
  # One compiled program for the three policies (compile time dominates on CPU).
  results = jax.jit(lambda p: [jax.value_and_grad(loss)(p, q) for q in policies])(params)
  (ref_loss, ref_grads), others = results[0], results[1:]
  for policy, (value, grads) in zip(policies[1:], others):
    np.testing.assert_allclose(value, ref_loss, rtol=1e-6, err_msg=policy)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=policy),
                 grads, ref_grads)
  with pytest.raises(ValueError, match='model.remat'):
    jax.eval_shape(lambda: model.clone(remat='offload').init({'params': jax.random.key(0)}, *inputs, train=False))


# ----------------------------------------------------------------------------- bf16


def eqn_dtypes(jaxpr, prim: str) -> list[tuple]:
  """Input dtypes of every `prim` equation, recursing into sub-jaxprs."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == prim:
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          found += eqn_dtypes(sub, prim)
  return found


def test_bfloat16_compute_with_float32_params_norms_and_softmax():
  model, params = init_unet(dtype=jnp.bfloat16)
  inputs = unet_inputs()
  fwd = lambda p: model.apply({'params': p}, *inputs, train=False)  # noqa: E731
  jaxpr = jax.make_jaxpr(fwd)(params)
  convs, dots = eqn_dtypes(jaxpr, 'conv_general_dilated'), eqn_dtypes(jaxpr, 'dot_general')
  assert len(convs) >= 10 and len(dots) >= 8
  assert all(d == ('bfloat16', 'bfloat16') for d in convs + dots), set(convs + dots)
  # GroupNorm statistics and the attention softmax stay float32.
  assert eqn_dtypes(jaxpr, 'rsqrt') and all(d == ('float32',) for d in eqn_dtypes(jaxpr, 'rsqrt'))
  assert eqn_dtypes(jaxpr, 'exp') and all(d == ('float32',) for d in eqn_dtypes(jaxpr, 'exp'))
  out_bf16 = jax.jit(fwd)(params)
  out_f32 = jax.jit(lambda p: model.clone(dtype=jnp.float32).apply({'params': p}, *inputs, train=False))(params)
  assert out_bf16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out_bf16 - out_f32) / jnp.linalg.norm(out_f32))
  assert 1e-4 < rel < 5e-2, rel  # Really computed in bf16 (not float32), and still close.
  # Master params and their gradients stay float32.
  grads = jax.eval_shape(jax.grad(lambda p: jnp.mean(jnp.square(fwd(p)))), params)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype('float32')}
