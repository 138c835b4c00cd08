"""Constant padding with a fill value, and dense displacement warps (warp_flow,
integrate_velocity), in 2-D and 3-D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import stnjax


def random_array(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def zoomed_out_theta(dims, seed=1):
  """Shrinks by 1.6 and shifts, so that many reads fall partly or wholly off the image."""
  rng = np.random.default_rng(seed)
  theta = 1.6 * np.eye(dims, dims + 1) + rng.uniform(-0.2, 0.2, (dims, dims + 1))
  return jnp.asarray(theta.astype(np.float32))


CASES = [(2, "bilinear"), (2, "nearest"), (2, "bicubic"), (3, "bilinear"), (3, "nearest")]


@pytest.mark.parametrize("dims,method", CASES)
def test_constant_fill_is_the_image_extended_by_the_value(dims, method):
  """Equal to zeros padding of the image padded by the fill, wider than any read."""
  shape = (5, 6, 7)[-dims:]
  image = random_array(shape + (3,))
  fill = jnp.array([0.5, -2.0, 3.0])
  theta = zoomed_out_theta(dims)
  out = stnjax.sample(theta, image, padding_mode="constant", fill_value=fill, method=method)
  margin = 8
  padded = jnp.concatenate([
      jnp.pad(image[..., c], margin, constant_values=float(fill[c]))[..., None] for c in range(3)],
      axis=-1)
  # theta in the padded image's normalized coordinates: same pixels read.
  in_sizes = np.array(shape[::-1], np.float64)
  scale = in_sizes / (in_sizes + 2 * margin)
  padded_theta = np.asarray(theta, np.float64) * scale[:, None]
  expected = stnjax.sample(jnp.asarray(padded_theta, jnp.float32), padded, shape, method=method,
                           padding_mode="zeros")
  assert np.abs(np.asarray(out)).max() > 0
  np.testing.assert_allclose(out, expected, atol=3e-5)


@pytest.mark.parametrize("dims,method", CASES)
def test_constant_fill_leaves_reads_inside_the_image_unchanged(dims, method):
  shape = (4, 5, 6)[-dims:]
  image = random_array(shape + (2,))
  identity = jnp.eye(dims, dims + 1)
  out = stnjax.sample(identity, image, padding_mode="constant", fill_value=7.0, method=method)
  if method == "bicubic":  # Its taps reach one pixel past the border.
    np.testing.assert_array_equal(out[1:-1, 1:-1], image[1:-1, 1:-1])
  else:
    np.testing.assert_array_equal(out, image)
  nan_theta = jnp.full((dims, dims + 1), jnp.nan)
  np.testing.assert_array_equal(
      stnjax.sample(nan_theta, image, padding_mode="constant", fill_value=7.0, method=method), 7.0)


def test_constant_fill_everywhere_it_is_taken():
  image = random_array((6, 7, 2))
  grid = stnjax.affine_grid(2 * jnp.eye(2, 3), (6, 7))
  from stnjax import transforms
  for out in (stnjax.grid_sample(image, grid, padding_mode="constant", fill_value=1.5),
              transforms.warp(transforms.scale_translation(), jnp.array([2.0, 0, 0]), image,
                              padding_mode="constant", fill_value=1.5),
              stnjax.warp_flow(image, jnp.full((6, 7, 2), 50.0), padding_mode="constant",
                               fill_value=1.5)):
    assert float(out[0, 0, 0]) == 1.5


def test_fill_value_gradients():
  image = random_array((1, 5, 6, 2))
  theta = zoomed_out_theta(2)[None]
  fill = jnp.array([0.3, -0.4])

  def warp(theta, image, fill):
    return stnjax.sample(theta, image, padding_mode="constant", fill_value=fill)

  with jax.enable_x64(True):
    check_grads(jax.jit(warp), (theta.astype(jnp.float64), image.astype(jnp.float64),
                                fill.astype(jnp.float64)),
                order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2, eps=1e-4)
  # The fill's gradient is the weight read off the image.
  grad_fill = jax.grad(lambda f: warp(theta, image, f).sum())(fill)
  off_image = stnjax.sample(theta, jnp.zeros((1, 5, 6, 1)), padding_mode="constant",
                            fill_value=1.0).sum()
  np.testing.assert_allclose(grad_fill, [off_image, off_image], rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"padding_mode": "zeros", "fill_value": 1.0},
     "fill_value applies only with padding_mode='constant', got padding_mode='zeros'"),
    ({"padding_mode": "constant", "fill_value": jnp.zeros(4)},
     r"one value per channel \(shape \(3,\)\), got shape \(4,\)"),
    ({"padding_mode": "constant", "fill_value": "white"}, "fill_value must be a number"),
])
def test_fill_value_errors(kwargs, message):
  with pytest.raises((ValueError, TypeError), match=message):
    stnjax.sample(jnp.eye(2, 3), jnp.zeros((4, 5, 3)), **kwargs)


# warp_flow.


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_flow_is_the_identity_and_whole_pixels_shift(dims):
  shape = (4, 5, 6)[-dims:]
  image = random_array((2,) + shape + (3,))
  flow = jnp.zeros((2,) + shape + (dims,))
  np.testing.assert_array_equal(stnjax.warp_flow(image, flow), image)
  # Every pixel reads one further along the slowest axis (y in 2-D, z in 3-D).
  shifted = stnjax.warp_flow(image, flow.at[..., dims - 1].set(1.0))
  np.testing.assert_array_equal(shifted[:, :-1], image[:, 1:])
  np.testing.assert_array_equal(shifted[:, -1], 0.0)


@pytest.mark.parametrize("dims,method,padding_mode", [
    (2, "bilinear", "zeros"), (2, "bicubic", "reflection"), (2, "nearest", "border"),
    (3, "bilinear", "zeros"), (3, "bilinear", "reflection"), (3, "nearest", "zeros")])
def test_warp_flow_is_grid_sample_of_the_moved_pixels(dims, method, padding_mode):
  """VoxelMorph's SpatialTransformer: grid_sample(align_corners=True) of the moved grid."""
  shape = (4, 5, 6)[-dims:]
  image = random_array((2,) + shape + (2,))
  flow = 2.5 * random_array((2,) + shape + (dims,), seed=1)
  pixels = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape[::-1]],
                                  indexing="xy" if dims == 2 else "ij"), axis=-1)
  if dims == 3:  # meshgrid "ij" over (x, y, z) sizes gives [W, H, D]: bring D first.
    pixels = jnp.transpose(pixels, (2, 1, 0, 3))
  grid = stnjax.pixel_to_normalized(pixels + flow, shape, align_corners=True)
  for align_corners in (False, True) if padding_mode == "reflection" else (True,):
    expected = stnjax.grid_sample(image, grid, method=method, padding_mode=padding_mode,
                                  align_corners=True) if align_corners else None
    out = stnjax.warp_flow(image, flow, method=method, padding_mode=padding_mode,
                           align_corners=align_corners)
    if expected is not None:
      np.testing.assert_allclose(out, expected, atol=2e-5)


def test_warp_flow_gradients_and_transformations():
  image = random_array((1, 4, 5, 2))
  flow = 0.7 * random_array((1, 4, 5, 2), seed=2) + 0.31
  with jax.enable_x64(True):
    # Second order: the warp_flow case of test_composability.py.
    check_grads(jax.jit(stnjax.warp_flow), (image.astype(jnp.float64), flow.astype(jnp.float64)),
                order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2, eps=1e-4)
  batched = jax.vmap(stnjax.warp_flow)(image, flow)
  np.testing.assert_allclose(batched, stnjax.warp_flow(image, flow), atol=1e-6)


def test_warp_flow_errors():
  with pytest.raises(ValueError, match=r"image's spatial shape \(4, 5\).*got flow shape \(4, 6, 2\)"):
    stnjax.warp_flow(jnp.zeros((4, 5, 1)), jnp.zeros((4, 6, 2)))
  with pytest.raises(ValueError, match=r"flow must have shape \[\.\.\., H, W, 2\]"):
    stnjax.warp_flow(jnp.zeros((4, 5, 1)), jnp.zeros((4, 5, 4)))
  with pytest.raises(TypeError, match="flow must have a floating dtype"):
    stnjax.warp_flow(jnp.zeros((4, 5, 1)), jnp.zeros((4, 5, 2), jnp.int32))


# integrate_velocity.


@pytest.mark.parametrize("dims", [2, 3])
def test_a_uniform_velocity_integrates_to_itself_inside(dims):
  shape = (16, 17, 18)[-dims:]
  velocity = jnp.broadcast_to(jnp.asarray([0.6, -0.4, 0.3][:dims], jnp.float32),
                              shape + (dims,))
  displacement = stnjax.integrate_velocity(velocity)
  inner = (slice(3, -3),) * dims
  np.testing.assert_allclose(displacement[inner], velocity[inner], rtol=1e-4)
  np.testing.assert_array_equal(stnjax.integrate_velocity(velocity, 0), velocity)


def test_the_negated_velocity_integrates_to_the_inverse():
  rng = np.random.default_rng(0)
  coarse = rng.normal(size=(4, 4, 2)).astype(np.float32)
  velocity = jax.image.resize(jnp.asarray(coarse), (32, 32, 2), "cubic") * 1.5
  forward = stnjax.integrate_velocity(velocity, padding_mode="border")
  backward = stnjax.integrate_velocity(-velocity, padding_mode="border")
  composed = forward + stnjax.warp_flow(backward, forward, padding_mode="border")
  inner = (slice(6, -6), slice(6, -6))
  assert float(jnp.abs(forward[inner]).max()) > 1.0
  assert float(jnp.abs(composed[inner]).max()) < 0.1 * float(jnp.abs(forward[inner]).max())


def test_integrate_velocity_gradients_and_errors():
  velocity = 0.5 * random_array((1, 6, 7, 2), seed=3)
  integrate = jax.jit(lambda v: stnjax.integrate_velocity(v, num_steps=3))
  with jax.enable_x64(True):
    check_grads(integrate, (velocity.astype(jnp.float64),), order=1, modes=("fwd", "rev"),
                atol=2e-2, rtol=2e-2, eps=1e-4)
  with pytest.raises(ValueError, match="num_steps must be >= 0, got -1"):
    stnjax.integrate_velocity(velocity, -1)
  with pytest.raises(TypeError, match="num_steps must be an int, got float"):
    stnjax.integrate_velocity(velocity, 2.5)
  with pytest.raises(TypeError, match="num_steps must be an int, got bool"):
    stnjax.integrate_velocity(velocity, True)
  assert stnjax.integrate_velocity(velocity.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="padding_mode must be 'zeros' or 'border'"):
    stnjax.integrate_velocity(velocity, padding_mode="reflection")
