"""Sampling sharded data: inside `shard_map` with an image every device shares, and
outside it with arrays whose types carry explicit sharding (`jax.make_mesh`'s default).

Meshes span the devices this host has (one on a plain CPU machine, where the same
programs still run the sharded code paths); `test_on_four_devices` runs this file again
with four CPU devices.
"""

import os
import subprocess
import sys

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stnjax

pytestmark = pytest.mark.usefixtures("fast_compiles")

P = jax.sharding.PartitionSpec
BATCH_PER_DEVICE = 2
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def _devices():
  return len(jax.devices())


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _thetas(batch, dims=2, glimpses=()):
  """Shrinking thetas with random shear, rotation and shift, a different one per image."""
  identity = np.eye(dims, dims + 1, dtype=np.float32)
  offsets = np.random.default_rng(5).uniform(-0.3, 0.3, (batch,) + glimpses + (dims, dims + 1))
  return jnp.asarray(0.6 * identity + offsets, jnp.float32)


# (name, function of (coords, image), coords shape, image shape).
_B = "batch"
CASES = {
    "bilinear": (lambda t, i: stnjax.sample(t, i, (5, 6)), (_B, 2, 3), (_B, 8, 9, 3)),
    "bilinear-1-channel": (lambda t, i: stnjax.sample(t, i, (5, 6)), (_B, 2, 3), (_B, 8, 9, 1)),
    "bilinear-glimpses": (lambda t, i: stnjax.sample(t, i, (4, 4)), (_B, 3, 2, 3), (_B, 8, 9, 2)),
    "nearest": (lambda t, i: stnjax.sample(t, i, (5, 6), method="nearest"), (_B, 2, 3),
                (_B, 8, 9, 2)),
    "bicubic": (lambda t, i: stnjax.sample(t, i, (5, 6), method="bicubic"), (_B, 2, 3),
                (_B, 8, 9, 2)),
    "antialias": (lambda t, i: stnjax.sample(t, i, (4, 4), antialias=True), (_B, 2, 3),
                  (_B, 16, 16, 2)),
    "trilinear": (lambda t, i: stnjax.sample(t, i, (3, 4, 5)), (_B, 3, 4), (_B, 5, 6, 7, 2)),
    "warp_flow": (lambda f, i: stnjax.warp_flow(i, 2 * f), (_B, 8, 9, 2), (_B, 8, 9, 3)),
    "integrate_velocity": (lambda v, i: stnjax.warp_flow(i, stnjax.integrate_velocity(2 * v)),
                           (_B, 6, 7, 2), (_B, 6, 7, 1)),
}


def _arguments(name, batch):
  _, coords_shape, image_shape = CASES[name]
  shape = lambda s: tuple(batch if d == _B else d for d in s)
  coords_shape, image_shape = shape(coords_shape), shape(image_shape)
  if coords_shape[-2:] in ((2, 3), (3, 4)):
    coords = _thetas(batch, coords_shape[-1] - 1, coords_shape[1:-2])
  else:
    coords = _random(coords_shape, 1)
  return coords, _random(image_shape, 2)


def _loss(function):
  """A sum of a nonlinear function of each output value: any split of the batch sums
  the same terms."""
  def loss(coords, image):
    out = function(coords, image)
    return jnp.sum(out ** 2 * jnp.cos(3 * out))
  return loss


def _assert_close(got, expected):
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    # Sums split differently over devices: float32 rounding of the largest term.
    np.testing.assert_allclose(g, e, atol=TOLERANCE["atol"] * max(1.0, np.abs(e).max()),
                               rtol=TOLERANCE["rtol"])


@pytest.mark.parametrize("name", list(CASES))
def test_shard_map_with_the_image_on_every_device(name):
  """Each device warps one image with its own share of the coordinates: the image's
  gradient is summed over the devices (it was a type error for bilinear reads)."""
  function = CASES[name][0]
  batch = BATCH_PER_DEVICE * _devices()
  coords, images = _arguments(name, batch)
  image = images[0]

  def local(coords, image):
    return function(coords, jnp.broadcast_to(image, coords.shape[:1] + image.shape))

  def total_loss(coords, image):
    return jax.lax.psum(_loss(local)(coords, image), "devices")

  mesh = jax.make_mesh((_devices(),), ("devices",), axis_types=(jax.sharding.AxisType.Auto,))
  in_specs = (P("devices"), P())
  sharded = jax.jit(jax.shard_map(
      lambda c, i: (local(c, i), jax.grad(total_loss, (0, 1))(c, i)),
      mesh=mesh, in_specs=in_specs, out_specs=(P("devices"), (P("devices"), P()))))
  out, grads = sharded(coords, image)
  _assert_close(out, local(coords, image))
  _assert_close(grads, jax.jit(jax.grad(_loss(local), (0, 1)))(coords, image))


@pytest.fixture
def explicit_mesh():
  return jax.make_mesh((_devices(),), ("devices",),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def _batch_sharded(mesh, *arrays):
  return [jax.device_put(a, jax.sharding.NamedSharding(mesh, P("devices"))) for a in arrays]


@pytest.mark.parametrize("name", list(CASES))
def test_explicitly_sharded_batch(name, explicit_mesh):
  """Arrays sharded along the batch in their types: each device reads its own images
  (nothing is gathered), and the results and gradients stay sharded along the batch."""
  function = CASES[name][0]
  batch = BATCH_PER_DEVICE * _devices()
  coords, images = _arguments(name, batch)
  expected = jax.jit(function)(coords, images)
  expected_grads = jax.jit(jax.grad(_loss(function), (0, 1)))(coords, images)
  with jax.set_mesh(explicit_mesh):
    sharded = _batch_sharded(explicit_mesh, coords, images)
    out = jax.jit(function)(*sharded)
    gradient = jax.jit(jax.grad(_loss(function), (0, 1)))
    grads = gradient(*sharded)
    program = gradient.lower(*sharded).compile().as_text()
  assert "all-gather" not in program and "all-to-all" not in program
  _assert_close(out, expected)
  _assert_close(grads, expected_grads)
  for array in [out, *grads]:
    assert jax.typeof(array).sharding.spec[0] == "devices", jax.typeof(array)


def test_explicit_sharding_with_second_derivatives_and_vmap(explicit_mesh):
  function = CASES["bilinear"][0]
  coords, images = _arguments("bilinear", BATCH_PER_DEVICE * _devices())
  direction = _random(coords.shape, 3)

  def curvature(coords, images):
    grad = jax.grad(_loss(function))
    return jax.jvp(lambda c: grad(c, images), (coords,), (direction,))[1]

  def mapped(coords, images):
    return jax.vmap(function, in_axes=(None, 3), out_axes=3)(coords, images[..., None])

  expected = (jax.jit(curvature)(coords, images), jax.jit(mapped)(coords, images))
  with jax.set_mesh(explicit_mesh):
    sharded = _batch_sharded(explicit_mesh, coords, images)
    got = (jax.jit(curvature)(*sharded), jax.jit(mapped)(*sharded))
  _assert_close(got, expected)


def test_explicitly_sharded_rows_are_gathered(explicit_mesh):
  """An image sharded along its rows (not the batch) is gathered before it is read."""
  function = CASES["bilinear"][0]
  coords, images = _arguments("bilinear", 2)
  images = jnp.tile(images, (1, _devices(), 1, 1))
  expected = jax.jit(jax.grad(_loss(function), (0, 1)))(coords, images)
  with jax.set_mesh(explicit_mesh):
    rows = jax.device_put(images, jax.sharding.NamedSharding(explicit_mesh, P(None, "devices")))
    got = jax.jit(jax.grad(_loss(function), (0, 1)))(coords, rows)
  _assert_close(got, expected)


@pytest.mark.slow
def test_on_four_devices():
  """This file again with four CPU devices, so that the devices really split the batch."""
  if _devices() > 1:
    pytest.skip("this host already has several devices: the other tests split over them")
  environment = dict(os.environ, JAX_PLATFORMS="cpu",
                     XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
                     " --xla_force_host_platform_device_count=4")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
       "-k", "not test_on_four_devices"],
      env=environment, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


class _DenseLocalization(nn.Module):
  """A localization net of dense layers: in this jax, the gradient of `lax.conv` (and
  so of Flax's `Conv`) over an explicitly sharded batch asks for an `out_sharding`."""

  @nn.compact
  def __call__(self, x):
    return nn.tanh(nn.Dense(16)(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("transform", ["affine", "tps"])
def test_module_gradient_on_an_explicitly_sharded_batch(transform, explicit_mesh):
  module = stnjax.linen.SpatialTransformer(localization=_DenseLocalization(),
                                           transform=transform, out_shape=(6, 5))
  x = _random((BATCH_PER_DEVICE * _devices(), 9, 8, 2), 4)
  params = module.init(jax.random.key(0), x)
  # Away from the identity, so that the localization's gradient is not trivially zero.
  params = jax.tree.map(lambda p: p + 0.05 * _random(p.shape, 6), params)
  gradient = jax.jit(jax.grad(lambda params, x: jnp.sum(module.apply(params, x) ** 2)))
  expected = gradient(params, x)
  with jax.set_mesh(explicit_mesh):
    got = gradient(params, *_batch_sharded(explicit_mesh, x))
  _assert_close(got, expected)
