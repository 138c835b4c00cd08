"""`stnjax.conv_general_dilated` and `stnjax.max_pool` against the XLA operations they
replace (`lax.conv_general_dilated`, Flax's `max_pool`).

The convolution's compiled CPU kernel sums in a different order from XLA, so values
agree to float32 rounding; the pool's fast path is exact.
"""

import flax.linen as nn
from flax import nnx
import numpy as np
import pytest

import jax
from jax import lax
import jax.numpy as jnp

import stnjax
from stnjax import _conv
from stnjax import _cpu_kernel

needs_kernel = pytest.mark.skipif(not stnjax.has_cpu_kernel(),
                                  reason="stnjax's CPU kernel is not built (no C++ compiler)")

NHWC = ("NHWC", "HWIO", "NHWC")


def conv_case(batch, size, in_channels, out_channels, kernel, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch,) + size + (in_channels,)).astype(np.float32)
  w = rng.standard_normal(kernel + (in_channels, out_channels)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(w)


def conv_and_grads(conv, x, w, padding, cotangent):
  def loss(x, w):
    return jnp.vdot(conv(x, w, (1, 1), padding, dimension_numbers=NHWC), cotangent)
  out = jax.jit(lambda x, w: conv(x, w, (1, 1), padding, dimension_numbers=NHWC))(x, w)
  return (out,) + jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


def assert_close(actual, expected, rtol=2e-5):
  for a, b in zip(actual, expected):
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = float(jnp.max(jnp.abs(b))) or 1.0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rtol * scale)


# Output channel counts cover 1 to 4 vectors of 8 (8, 10, 16, 20) and the one-channel
# path (1); batches over 8 split the kernel gradient into uneven chunks.
@pytest.mark.parametrize("batch,size,in_channels,out_channels,kernel,padding", [
    (3, (12, 11), 1, 8, (7, 5), "VALID"),
    (2, (9, 9), 10, 20, (5, 5), "SAME"),
    (1, (8, 8), 3, 1, (3, 3), ((1, 2), (0, 1))),
    (11, (14, 14), 8, 10, (5, 5), "VALID"),
    (2, (5, 5), 2, 3, (5, 5), "VALID"),
    (1, (40, 33), 2, 16, (3, 3), "SAME"),
    (2, (6, 6), 3, 5, (3, 3), ((4, 0), (1, 3))),  # Padding wider than the kernel.
])
def test_convolution_matches_lax(batch, size, in_channels, out_channels, kernel, padding):
  x, w = conv_case(batch, size, in_channels, out_channels, kernel)
  out_shape = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC).shape
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
  assert_close(conv_and_grads(stnjax.conv_general_dilated, x, w, padding, cotangent),
               conv_and_grads(lax.conv_general_dilated, x, w, padding, cotangent))


def kernel_conv(x, w, strides, padding, dimension_numbers):
  """The kernel path whatever the channel counts (the public function sends layers
  wider than MAX_KERNEL_CHANNELS to XLA)."""
  del strides, dimension_numbers
  pads = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], (1, 1), padding)
  return _conv._conv(x, w, tuple(map(tuple, pads)), None)


@pytest.mark.parametrize("in_channels,out_channels", [(4, 40), (20, 3), (3, 70)])
def test_kernel_for_wide_layers_matches_lax(in_channels, out_channels):
  x, w = conv_case(3, (7, 6), in_channels, out_channels, (3, 2))
  out_shape = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC).shape
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
  assert_close(conv_and_grads(kernel_conv, x, w, "SAME", cotangent),
               conv_and_grads(lax.conv_general_dilated, x, w, "SAME", cotangent))


def test_wide_layers_go_to_xla():
  x, w = conv_case(2, (8, 8), 17, 4, (3, 3))
  hlo = jax.jit(lambda x, w: stnjax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=NHWC)).lower(x, w).as_text()
  assert _cpu_kernel.CONV_TARGET not in hlo


def test_second_order_reverse_mode_matches_lax():
  x, w = conv_case(2, (9, 8), 3, 5, (3, 3))

  def grad_norm(conv):
    def inner(x, w):
      return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jax.grad(inner, argnums=(0, 1))(x, w)[1] ** 2)
                            + jnp.sum(jax.grad(inner)(x, w) ** 2), argnums=(0, 1)))
  assert_close(grad_norm(stnjax.conv_general_dilated)(x, w),
               grad_norm(lax.conv_general_dilated)(x, w), rtol=1e-4)


@needs_kernel
def test_kernel_runs_on_the_cpu_and_is_deterministic():
  x, w = conv_case(13, (20, 20), 5, 12, (5, 5))
  step = jax.jit(jax.grad(
      lambda x, w: jnp.sum(stnjax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                       dimension_numbers=NHWC) ** 2),
      argnums=(0, 1)))
  hlo = step.lower(x, w).compile().as_text()
  assert _cpu_kernel.CONV_TARGET in hlo and _cpu_kernel.CONV_KERNEL_GRAD_TARGET in hlo
  first = step(x, w)
  for _ in range(3):
    for a, b in zip(step(x, w), first):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("call", [
    dict(window_strides=(2, 2)),
    dict(rhs_dilation=(2, 1)),
    dict(lhs_dilation=(1, 2)),
    dict(feature_group_count=2),
    dict(dtype=jnp.bfloat16),
    dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
])
def test_other_calls_are_lax_itself(call):
  x, w = conv_case(2, (10, 10), 4, 6, (3, 3))
  dtype = call.pop("dtype", jnp.float32)
  x, w = x.astype(dtype), w.astype(dtype)
  numbers = call.pop("dimension_numbers", NHWC)
  if numbers != NHWC:
    x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
  groups = call.get("feature_group_count", 1)
  w = w[:, :, :w.shape[2] // groups] if numbers == NHWC else w[:, :w.shape[1] // groups]
  options = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=numbers)
  options.update(call)
  ours = stnjax.conv_general_dilated(x, w, **options)
  np.testing.assert_array_equal(np.asarray(ours, np.float32),
                                np.asarray(lax.conv_general_dilated(x, w, **options), np.float32))


def test_without_the_kernel_it_is_lax(monkeypatch):
  monkeypatch.setattr(_cpu_kernel, "AVAILABLE", False)
  x, w = conv_case(2, (8, 8), 3, 4, (3, 3))
  hlo = jax.jit(lambda x, w: stnjax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=NHWC)).lower(x, w).as_text()
  assert _cpu_kernel.CONV_TARGET not in hlo and "convolution" in hlo


def test_bad_arguments_get_lax_errors():
  x, w = conv_case(2, (8, 8), 3, 4, (3, 3))
  with pytest.raises(ValueError, match="feature_group_count"):
    stnjax.conv_general_dilated(x, w[:, :, :2], (1, 1), "VALID", dimension_numbers=NHWC)


def test_gpu_and_tpu_lowering_uses_xla_convolutions():
  x, w = conv_case(2, (8, 8), 3, 4, (3, 3))
  step = jax.jit(jax.grad(lambda x, w: jnp.sum(stnjax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=NHWC) ** 2), argnums=(0, 1)))
  exported = jax.export.export(step, platforms=["cuda", "tpu"])(x, w)
  text = exported.mlir_module()
  assert _cpu_kernel.CONV_TARGET not in text and "convolution" in text


def test_vmap_matches_lax():
  x, w = conv_case(6, (9, 9), 2, 3, (3, 3))
  x = x.reshape(2, 3, 9, 9, 2)

  def per_group(conv):
    return jax.jit(jax.vmap(lambda x: conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))
  assert_close((per_group(stnjax.conv_general_dilated)(x),),
               (per_group(lax.conv_general_dilated)(x),))


def test_is_a_drop_in_for_flax_convolutions():
  x, _ = conv_case(2, (12, 12), 3, 1, (1, 1))
  linen_plain = nn.Conv(7, (3, 3), padding="SAME")
  linen_fast = nn.Conv(7, (3, 3), padding="SAME",
                       conv_general_dilated=stnjax.conv_general_dilated)
  params = linen_plain.init(jax.random.key(0), x)
  assert_close((linen_fast.apply(params, x),), (linen_plain.apply(params, x),))
  nnx_plain = nnx.Conv(3, 7, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
  nnx_fast = nnx.Conv(3, 7, (3, 3), padding="VALID", rngs=nnx.Rngs(0),
                      conv_general_dilated=stnjax.conv_general_dilated)
  assert_close((nnx_fast(x),), (nnx_plain(x),))


# Rounded values make ties common; Flax's (XLA's) gradient goes to the first maximum.
@pytest.mark.parametrize("shape,window", [
    ((3, 7, 9, 2), (2, 2)),
    ((2, 8, 8, 3), (2, 2)),
    ((2, 9, 7, 1), (3, 2)),
    ((1, 2, 2, 1), (2, 2)),
])
def test_tiled_max_pool_matches_flax_exactly(shape, window):
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.round(rng.standard_normal(shape), 1).astype(np.float32))
  out_shape = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  cotangent = jnp.asarray(rng.standard_normal(out_shape).astype(np.float32))

  def value_and_grad(pool):
    return jax.jit(jax.value_and_grad(lambda x: jnp.vdot(pool(x, window, window), cotangent)))
  for ours, flax in zip(value_and_grad(stnjax.max_pool)(x), value_and_grad(nn.max_pool)(x)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax))


@pytest.mark.parametrize("window,strides,padding,shape", [
    ((3, 3), (1, 1), "SAME", (2, 6, 6, 2)),
    ((2, 2), None, "VALID", (2, 6, 5, 2)),
    ((2, 2), (2, 2), "SAME", (2, 5, 5, 2)),
    ((2, 2), (2, 2), ((1, 0), (0, 1)), (2, 5, 5, 2)),
    ((2, 2), (2, 2), "VALID", (6, 5, 2)),
])
def test_other_pools_match_flax(window, strides, padding, shape):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

  def value_and_grad(pool):
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(pool(x, window, strides, padding) ** 2)))
  for ours, flax in zip(value_and_grad(stnjax.max_pool)(x), value_and_grad(nn.max_pool)(x)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax))


def test_max_pool_gradient_goes_to_a_nan():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1).at[0, 0, 1, 0].set(jnp.nan)
  grad = jax.grad(lambda x: jnp.sum(stnjax.max_pool(x, (2, 2), (2, 2))))(x)
  assert jnp.isnan(stnjax.max_pool(x, (2, 2), (2, 2))[0, 0, 0, 0])
  assert grad[0, 0, 1, 0] == 1 and float(jnp.sum(grad)) == 4


def test_max_pool_rejects_bad_windows():
  x = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ValueError, match="2 spatial axes"):
    stnjax.max_pool(x, (2, 2, 2), (2, 2, 2))
  with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
    stnjax.max_pool(jnp.zeros((4, 4)), (2, 2), (2, 2))
