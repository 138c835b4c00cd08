"""3-D sampling: volumes `[..., D, H, W, C]`, the 3-D transform families, their errors.

Parity with PyTorch's 5-D affine_grid/grid_sample is in test_parity.py (stored cases).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import stnjax
from stnjax import transforms

PADDING_MODES = ("zeros", "border", "reflection", "constant")


def random_volume(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def near_identity_theta(batch, seed=1, spread=0.1):
  rng = np.random.default_rng(seed)
  return jnp.asarray((np.eye(3, 4) + rng.uniform(-spread, spread, batch + (3, 4))).astype(
      np.float32))


@pytest.mark.parametrize("method,padding_mode,align_corners", list(itertools.product(
    ("bilinear", "nearest"), PADDING_MODES, (False, True))))
def test_identity_theta_returns_the_volume_exactly(method, padding_mode, align_corners):
  volume = random_volume((2, 3, 4, 5, 2))
  for theta in (jnp.broadcast_to(jnp.eye(3, 4), (2, 3, 4)), jnp.broadcast_to(jnp.eye(4), (2, 4, 4))):
    out = stnjax.sample(theta, volume, method=method, padding_mode=padding_mode,
                        align_corners=align_corners)
    np.testing.assert_array_equal(out, volume)


def test_integer_volumes_and_half_precision_keep_their_meaning():
  volume = jnp.arange(60, dtype=jnp.int32).reshape(3, 4, 5, 1)
  out = stnjax.sample(jnp.eye(3, 4), volume)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, volume.astype(jnp.float32))
  half = stnjax.sample(jnp.eye(3, 4), volume.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16


def test_glimpses_read_the_same_volume():
  volume = random_volume((2, 5, 6, 7, 3))
  theta = near_identity_theta((2, 4))
  glimpses = stnjax.sample(theta, volume, (3, 4, 5))
  assert glimpses.shape == (2, 4, 3, 4, 5, 3)
  for k in range(4):
    np.testing.assert_allclose(glimpses[:, k], stnjax.sample(theta[:, k], volume, (3, 4, 5)),
                               atol=1e-6)


def test_sample_is_grid_sample_of_affine_grid():
  volume = random_volume((2, 5, 6, 7, 2))
  theta = near_identity_theta((2,), spread=0.3)
  grid = stnjax.affine_grid(theta, (4, 3, 5))
  assert grid.shape == (2, 4, 3, 5, 3)
  np.testing.assert_allclose(stnjax.sample(theta, volume, (4, 3, 5)),
                             stnjax.grid_sample(volume, grid), atol=2e-6)


def test_translation_by_whole_voxels_shifts_the_volume():
  volume = random_volume((4, 5, 6, 1))
  # One voxel along z is 2 / D normalized units (align_corners=False).
  theta = jnp.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2 / 4]])
  out = stnjax.sample(theta, volume)
  np.testing.assert_allclose(out[:-1], volume[1:], atol=1e-6)
  np.testing.assert_array_equal(out[-1], 0.0)


@pytest.mark.parametrize("name", transforms.names(dims=3))
def test_3d_families_identity_and_grid(name):
  family = transforms.get(name)
  assert family.dims == 3
  volume = random_volume((2, 4, 5, 6, 1))
  identity = jnp.broadcast_to(jnp.asarray(family.identity_params), (2, family.num_params))
  np.testing.assert_array_equal(transforms.warp(family, identity, volume), volume)
  params = identity + 0.05 * jnp.arange(family.num_params, dtype=jnp.float32) / family.num_params
  grid = family.grid(params, (3, 4, 5))
  np.testing.assert_allclose(transforms.warp(family, params, volume, (3, 4, 5)),
                             stnjax.grid_sample(volume, grid), atol=2e-6)


def test_quaternion_rotations_are_rotations_without_gimbal_lock():
  rng = np.random.default_rng(0)
  quaternions = jnp.asarray(rng.normal(size=(50, 4)).astype(np.float32) * 3)
  rotations = transforms.rotation_from_quaternion(quaternions)
  np.testing.assert_allclose(rotations @ jnp.swapaxes(rotations, -1, -2),
                             np.broadcast_to(np.eye(3), (50, 3, 3)), atol=2e-6)
  np.testing.assert_allclose(jnp.linalg.det(rotations), 1.0, atol=2e-6)
  # Euler angles lose a degree of freedom at pitch 90 degrees; the quaternion's
  # Jacobian keeps rank 3 there (4 params, minus the scale it ignores).
  pitch_90 = jnp.array([np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0], jnp.float32)
  jacobian = jax.jacfwd(transforms.rotation_from_quaternion)(pitch_90).reshape(9, 4)
  assert np.linalg.matrix_rank(np.asarray(jacobian), tol=1e-4) == 3


def test_quarter_turn_about_z_permutes_the_volume():
  volume = random_volume((3, 5, 5, 1))
  half = np.sqrt(0.5)
  params = jnp.array([half, 0, 0, half, 0, 0, 0], jnp.float32)  # 90 degrees about z.
  out = transforms.warp(transforms.rigid_3d(), params, volume)
  # theta maps output (x, y) to input (-y, x): out[z, r, c] = in[z, c, W - 1 - r].
  expected = jnp.swapaxes(jnp.flip(volume, axis=2), 1, 2)
  np.testing.assert_allclose(out, expected, atol=1e-5)


# Second order: the sample-volume case of test_composability.py.
@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("padding_mode,order", [("zeros", 1), ("border", 1), ("reflection", 1)])
def test_gradients_match_finite_differences(padding_mode, order):
  volume = random_volume((1, 3, 4, 5, 2), seed=3)
  theta = near_identity_theta((1,), seed=4, spread=0.05)
  warp = jax.jit(lambda t, v: stnjax.sample(t, v, (2, 3, 3), padding_mode=padding_mode))
  with jax.enable_x64(True):
    check_grads(warp, (theta.astype(jnp.float64), volume.astype(jnp.float64)), order=order,
                modes=("fwd", "rev"), atol=2e-2, rtol=2e-2, eps=1e-4)


def test_transformations_compose():
  volume = random_volume((2, 3, 4, 5, 1))
  theta = near_identity_theta((2,))
  loss = lambda t, v: (stnjax.sample(t, v) ** 2).sum()
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, volume)
  per_example = jax.vmap(jax.grad(lambda t, v: loss(t[None], v[None]), argnums=(0, 1)))(
      theta, volume)
  for a, b in zip(grad, per_example):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Second derivatives: the sample-volume case of test_composability.py.
  exported = jax.export.export(jax.jit(jax.grad(loss)), platforms=("cpu", "cuda", "tpu"))(
      theta, volume)
  np.testing.assert_allclose(exported.call(theta, volume), grad[0], rtol=1e-6, atol=1e-6)


BAD_INPUTS = [
    (stnjax.sample, (jnp.eye(3, 4), jnp.zeros((4, 5, 1))), {}, ValueError,
     r"image must have shape \[\.\.\., D, H, W, C\] \(rank >= 4"),
    (stnjax.sample, (jnp.eye(3, 4), jnp.zeros((3, 4, 5, 1))), {"method": "bicubic"}, ValueError,
     "bicubic' samples 2-D images only"),
    (stnjax.sample, (jnp.eye(3, 4), jnp.zeros((3, 4, 5, 1))), {"out_shape": (4, 5)}, ValueError,
     r"out_shape must be a triple \(depth, height, width\)"),
    (stnjax.sample, (jnp.zeros((3, 5)), jnp.zeros((3, 4, 5, 1))), {}, ValueError,
     r"\[\.\.\., 3, 4\] or \[\.\.\., 4, 4\] \(3-D\)"),
    (stnjax.sample, (jnp.zeros((3, 3, 4)), jnp.zeros((2, 3, 4, 5, 1))), {}, ValueError,
     r"batch dims \(2,\).*\[2, \.\.\., 3 or 4, 4\]"),
    (stnjax.grid_sample, (jnp.zeros((3, 4, 5, 1)), jnp.zeros((2, 2, 3))), {}, ValueError,
     r"\[\.\.\., Do, Ho, Wo, 3\]"),
    (stnjax.affine_grid, (jnp.eye(3, 4), (4, 5)), {}, ValueError,
     r"out_shape must be a triple \(depth, height, width\)"),
    (transforms.warp, (transforms.rigid_3d(), jnp.zeros(6), jnp.zeros((3, 4, 5, 1))), {},
     ValueError, r"rigid_3d params must have shape \[\.\.\., 7\]"),
]


@pytest.mark.parametrize("function,args,kwargs,error,message", BAD_INPUTS,
                         ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(BAD_INPUTS)])
def test_bad_input_messages(function, args, kwargs, error, message):
  with pytest.raises(error, match=message):
    function(*args, **kwargs)


def test_the_cpu_kernel_is_refused_for_volumes():
  if not stnjax.has_cpu_kernel():
    pytest.skip("stnjax's CPU kernel is not built")
  with pytest.raises(ValueError, match="serves 2-D images only"):
    stnjax.sample(jnp.eye(3, 4), jnp.zeros((3, 4, 5, 1)), implementation="cpu_kernel")


def test_modules_refuse_3d_families_clearly():
  module = stnjax.SpatialTransformer(transform="affine_3d")
  with pytest.raises(ValueError, match="'affine_3d' transforms volumes"):
    module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_invert_theta_undoes_a_3d_warp():
  theta = near_identity_theta((2,), seed=5, spread=0.05)
  inverse = stnjax.invert_theta(theta)
  homogeneous = lambda t: jnp.concatenate([t, jnp.broadcast_to(jnp.array([0, 0, 0, 1.0]),
                                                               t.shape[:-2] + (1, 4))], -2)
  np.testing.assert_allclose(homogeneous(theta) @ homogeneous(inverse),
                             np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-5)
  projective = homogeneous(theta).at[:, 3, :3].set(0.1)
  np.testing.assert_allclose(stnjax.invert_theta(projective) @ projective,
                             np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-5)
