"""Transform families: identity, gradients, the TPS interpolation property, lookup."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stnjax
from stnjax import _jax_private
from stnjax import transforms


def random_image(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def identity_params(family, *batch):
  return jnp.broadcast_to(jnp.asarray(family.identity_params, jnp.float32),
                          batch + (family.num_params,))


def test_expected_families_and_sizes():
  sizes = {name: transforms.get(name).num_params for name in transforms.names(dims=2)}
  assert sizes == {"affine": 6, "translation": 2, "scale_translation": 3, "similarity": 4,
                   "projective": 8, "tps": 32}
  assert transforms.tps((3, 5)).num_params == 30


@pytest.mark.parametrize("name,method,align_corners", list(itertools.product(
    transforms.names(dims=2), ("bilinear", "nearest", "bicubic"), (False, True))))
def test_identity_params_return_the_image_exactly(name, method, align_corners):
  family = transforms.get(name)
  image = random_image((2, 5, 7, 3))
  out = transforms.warp(family, identity_params(family, 2), image, method=method,
                        align_corners=align_corners)
  np.testing.assert_array_equal(out, image)
  grid = family.grid(identity_params(family, 2), (5, 7), align_corners=align_corners)
  np.testing.assert_allclose(
      grid, stnjax.affine_grid(jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3)), (5, 7),
                               align_corners=align_corners), atol=1e-6)


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("name", transforms.names(dims=2))
def test_gradients_reach_every_parameter(name):
  family = transforms.get(name)
  image = random_image((2, 13, 17, 2))
  rng = np.random.default_rng(4)
  params = identity_params(family, 2) + jnp.asarray(
      rng.normal(0, 0.02, (2, family.num_params)), jnp.float32)
  target = random_image((2, 9, 11, 2), seed=5)

  def loss(params):
    return ((transforms.warp(family, params, image, (9, 11)) - target) ** 2).sum()

  grad = jax.grad(loss)(params)
  assert grad.shape == params.shape
  assert np.all(np.abs(np.asarray(grad)) > 1e-6), grad


@pytest.mark.parametrize("name", transforms.names(dims=2))
def test_warp_agrees_with_grid_sample_of_the_grid(name):
  family = transforms.get(name)
  image = random_image((2, 13, 17, 3))
  params = identity_params(family, 2, 3) + jnp.asarray(
      np.random.default_rng(6).normal(0, 0.05, (2, 3, family.num_params)), jnp.float32)
  out = transforms.warp(family, params, image, (9, 11), padding_mode="border")
  assert out.shape == (2, 3, 9, 11, 3)
  grid = family.grid(params, (9, 11))
  np.testing.assert_allclose(out, stnjax.grid_sample(image, grid, padding_mode="border"),
                             atol=2e-5)


def test_matrix_families_give_the_documented_thetas():
  angle, log_scale = np.pi / 2, np.log(2.0)
  np.testing.assert_allclose(
      transforms.similarity().theta(jnp.array([angle, log_scale, 0.1, 0.2])),
      [[0, -2, 0.1], [2, 0, 0.2]], atol=1e-6)
  np.testing.assert_allclose(transforms.scale_translation().theta(jnp.array([0.5, 0.1, -0.2])),
                             [[0.5, 0, 0.1], [0, 0.5, -0.2]])
  np.testing.assert_allclose(transforms.translation().theta(jnp.array([0.3, -0.4])),
                             [[1, 0, 0.3], [0, 1, -0.4]])
  np.testing.assert_allclose(transforms.projective().theta(jnp.arange(8.0)),
                             [[0, 1, 2], [3, 4, 5], [6, 7, 1]])
  np.testing.assert_allclose(transforms.affine().theta(jnp.arange(6.0)), [[0, 1, 2], [3, 4, 5]])


def test_tps_interpolates_its_control_points():
  # With align_corners=True a 4x4 output grid sits exactly on the 4x4 lattice.
  family = transforms.tps((4, 4))
  offsets = np.random.default_rng(7).normal(0, 0.1, (16, 2)).astype(np.float32)
  grid = family.grid(jnp.asarray(offsets.ravel()), (4, 4), align_corners=True)
  base = stnjax.affine_grid(jnp.eye(2, 3), (4, 4), align_corners=True)
  np.testing.assert_allclose(grid - base, offsets.reshape(4, 4, 2), atol=1e-5)


def test_tps_reproduces_affine_maps():
  # A TPS whose control points move by an affine map is that affine map everywhere.
  family = transforms.tps((3, 4))
  theta = np.array([[0.9, 0.2, 0.1], [-0.1, 1.1, -0.05]])
  rows, cols = np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 4), indexing="ij")
  points = np.stack([cols.ravel(), rows.ravel(), np.ones(12)], -1)
  offsets = points @ theta.T - points[:, :2]
  grid = family.grid(jnp.asarray(offsets.ravel(), jnp.float32), (6, 9))
  np.testing.assert_allclose(grid, stnjax.affine_grid(jnp.asarray(theta, jnp.float32), (6, 9)),
                             atol=1e-5)


def test_transforms_are_hashable_and_cached():
  assert transforms.get("tps") is transforms.get("tps", lattice_shape=[4, 4])
  assert hash(transforms.get("affine")) == hash(transforms.affine())
  image = random_image((5, 7, 1))
  family = transforms.get("similarity")
  transforms.warp(family, jnp.zeros(4), image)
  with _jax_private.compilations("_warp") as compiled:
    transforms.warp(transforms.get("similarity"), jnp.ones(4), image)
  assert not compiled


@pytest.mark.parametrize("call,error,message", [
    (lambda: transforms.get("rotation"), ValueError, r"Unknown transform family 'rotation'"),
    (lambda: transforms.tps((1, 4)), ValueError, "at least 2 x 2"),
    (lambda: transforms.tps(4), ValueError, r"lattice_shape must be \(rows, cols\)"),
    (lambda: transforms.affine().theta(jnp.zeros(5)), ValueError,
     r"affine params must have shape \[\.\.\., 6\], got \(5,\)"),
    (lambda: transforms.similarity().theta(jnp.zeros(4, jnp.int32)), TypeError,
     "must be floating"),
    (lambda: transforms.warp(transforms.tps(), jnp.zeros((3, 32)), jnp.zeros((2, 5, 7, 1))),
     ValueError, r"batch dims \(2,\)"),
    (lambda: transforms.warp(transforms.affine(), jnp.zeros(6), jnp.zeros((5, 7, 1)),
                             method="area"), ValueError, "method must be one of"),
])
def test_bad_input_messages(call, error, message):
  with pytest.raises(error, match=message):
    call()
