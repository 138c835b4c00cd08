"""Grids and pixel-space interop, checked against closed forms and scipy.ndimage."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import stnjax


def test_pixel_centres_in_normalized_coordinates():
  pixels = jnp.array([[0.0, 0.0], [6.0, 4.0]])  # (x, y) in a 5x7 image.
  np.testing.assert_allclose(stnjax.pixel_to_normalized(pixels, (5, 7)),
                             [[-1 + 1 / 7, -1 + 1 / 5], [1 - 1 / 7, 1 - 1 / 5]], atol=1e-6)
  np.testing.assert_allclose(stnjax.pixel_to_normalized(pixels, (5, 7), align_corners=True),
                             [[-1, -1], [1, 1]], atol=1e-6)
  edges = jnp.array([[-1.0, -1.0], [1.0, 1.0]])
  np.testing.assert_allclose(stnjax.normalized_to_pixel(edges, (5, 7)),
                             [[-0.5, -0.5], [6.5, 4.5]], atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_normalized_round_trip(align_corners):
  pixels = jnp.asarray(np.random.default_rng(0).uniform(-3, 20, (10, 2)), jnp.float32)
  there = stnjax.pixel_to_normalized(pixels, (13, 17), align_corners=align_corners)
  back = stnjax.normalized_to_pixel(there, (13, 17), align_corners=align_corners)
  np.testing.assert_allclose(back, pixels, atol=1e-5)


def test_affine_grid_of_projective_identity_equals_affine_identity():
  for align_corners in (False, True):
    np.testing.assert_array_equal(
        stnjax.affine_grid(jnp.eye(3), (5, 7), align_corners=align_corners),
        stnjax.affine_grid(jnp.eye(2, 3), (5, 7), align_corners=align_corners))


def scipy_warp(image, pull, out_shape):
  """Bilinear zero-padded warp with a pixel-space pull matrix, via scipy.ndimage."""
  rows, cols = np.meshgrid(np.arange(out_shape[0]), np.arange(out_shape[1]), indexing="ij")
  homogeneous = np.stack([cols, rows, np.ones_like(rows)]).reshape(3, -1).astype(np.float64)
  source = pull @ homogeneous
  source_x, source_y = source[0] / source[2], source[1] / source[2]
  channels = [ndimage.map_coordinates(image[..., c].astype(np.float64), [source_y, source_x],
                                      order=1, mode="grid-constant", cval=0.0)
              for c in range(image.shape[-1])]
  return np.stack(channels, -1).reshape(out_shape + (image.shape[-1],))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("inverse_map", [False, True])
@pytest.mark.parametrize("homography", [False, True])
def test_theta_from_pixel_matrix_matches_scipy(align_corners, inverse_map, homography):
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 1, (13, 17, 2)).astype(np.float32)
  out_shape = (9, 11)
  pull = np.array([[0.9, 0.3, 2.5], [-0.2, 1.2, 1.5], [0.0, 0.0, 1.0]])
  if homography:
    pull[2, :2] = [0.01, -0.015]
  given = pull if inverse_map else np.linalg.inv(pull)
  if not homography:
    given = given[:2]
  theta = stnjax.theta_from_pixel_matrix(jnp.asarray(given, jnp.float32), image.shape[:2],
                                         out_shape, align_corners=align_corners,
                                         inverse_map=inverse_map)
  assert theta.shape == given.shape
  out = stnjax.sample(theta, jnp.asarray(image), out_shape, align_corners=align_corners)
  np.testing.assert_allclose(out, scipy_warp(image, pull, out_shape), atol=2e-5)
  back = stnjax.pixel_matrix_from_theta(theta, image.shape[:2], out_shape,
                                        align_corners=align_corners, inverse_map=inverse_map)
  np.testing.assert_allclose(back / back[-1, -1], given / given[-1, -1], atol=2e-5)


def test_pixel_matrix_from_theta_batches():
  theta = jnp.broadcast_to(jnp.array([[1.0, 0, 2 / 7], [0, 1, 0]]), (4, 3, 2, 3))
  matrix = stnjax.pixel_matrix_from_theta(theta, (5, 7), inverse_map=True)
  assert matrix.shape == (4, 3, 2, 3)
  np.testing.assert_allclose(matrix[1, 2], [[1, 0, 1], [0, 1, 0]], atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_shape,out_shape", [
    ((13, 17), (5, 7)), ((6, 4), (9, 1)), ((3, 4, 5), (2, 3, 1))])
def test_source_jacobian_of_an_affine_theta_is_its_pixels_differences(
    align_corners, in_shape, out_shape):
  """Along each output axis, the exact derivative of the pixel read: the difference between
  neighbouring output pixels (zero along an axis of one pixel, which has none)."""
  dims = len(out_shape)
  theta = jnp.asarray(np.random.default_rng(dims).normal(size=(2, 3, dims, dims + 1)),
                      jnp.float32)
  jacobian = stnjax.grid.source_jacobian(theta, in_shape, out_shape, align_corners)
  pixels = stnjax.grid.source_pixels(theta, in_shape, out_shape, align_corners)
  for coord, derivatives in zip(pixels, jacobian):
    for axis, derivative in enumerate(derivatives):
      assert derivative.shape == (2, 3) + (1,) * dims
      grid_axis = coord.ndim - 1 - axis
      if out_shape[::-1][axis] == 1:
        np.testing.assert_array_equal(derivative, 0.0)
        continue
      steps = np.diff(np.asarray(coord, np.float64), axis=grid_axis)
      np.testing.assert_allclose(np.broadcast_to(derivative, steps.shape), steps, atol=2e-5)


def test_source_jacobian_of_a_projective_theta_is_none():
  """A homography's derivatives vary over the output: there is no one per image."""
  assert stnjax.grid.source_jacobian(jnp.eye(3), (4, 4), (4, 4), False) is None
  assert stnjax.grid.source_jacobian(jnp.eye(4), (2, 4, 4), (2, 4, 4), False) is None
