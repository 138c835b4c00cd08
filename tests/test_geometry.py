"""stnjax.geometry against OpenCV's stored matrices, closed forms and exact crops."""

import pathlib

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import stnjax
from stnjax import geometry

FIXTURE_PATH = pathlib.Path(__file__).parent / "fixtures" / "opencv_reference.npz"
with np.load(FIXTURE_PATH) as _data:
  OPENCV = {key: _data[key] for key in _data.files}


def assert_close_per_matrix(actual, expected, rtol=1e-5, atol=1e-5):
  """Float32 rounding: atol scales with each matrix's largest entry (translations of 1000s)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  magnitude = np.maximum(1.0, np.abs(expected).max(axis=(-2, -1), keepdims=True))
  tolerance = atol * magnitude + rtol * np.abs(expected)
  np.testing.assert_array_less(np.abs(actual - expected), tolerance)


def apply_homogeneous(matrix, points):
  """Pixel matrix `[..., 2 or 3, 3]` applied to `(x, y)` points `[..., N, 2]`, in float64."""
  matrix = np.asarray(matrix, np.float64)
  points = np.asarray(points, np.float64)
  homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1)
  mapped = homogeneous @ np.swapaxes(matrix, -1, -2)
  if matrix.shape[-2] == 2:
    return mapped
  return mapped[..., :2] / mapped[..., 2:]


def ramp_image(shape):
  """`[H, W, 2]` image holding each pixel's own (x, y): bilinear reads it back exactly."""
  rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
  return jnp.asarray(np.stack([cols, rows], -1), jnp.float32)


# rotation_matrix


def test_rotation_matrix_matches_opencv():
  matrix = geometry.rotation_matrix(OPENCV["rotation/centre"], OPENCV["rotation/angle"],
                                    OPENCV["rotation/scale"])
  assert matrix.dtype == jnp.float32
  assert_close_per_matrix(matrix, OPENCV["rotation/matrix"])


def test_rotation_matrix_turns_counter_clockwise_on_screen_and_quarter_turns_are_exact():
  centre = jnp.array([3.0, 2.0])
  np.testing.assert_array_equal(geometry.rotation_matrix(centre, 0.0), jnp.eye(2, 3))
  quarter = geometry.rotation_matrix(centre, 90.0)
  np.testing.assert_array_equal(quarter, [[0, 1, 1], [-1, 0, 5]])
  # The pixel right of the centre goes above it (y points down).
  np.testing.assert_array_equal(apply_homogeneous(quarter, [[4.0, 2.0]]), [[3.0, 1.0]])
  np.testing.assert_array_equal(geometry.rotation_matrix(centre, -180.0, 2.0),
                                [[-2, 0, 9], [0, -2, 6]])
  np.testing.assert_array_equal(geometry.rotation_matrix(centre, 450.0),
                                geometry.rotation_matrix(centre, 90.0))


def test_rotation_matrix_warps_like_rot90_on_a_non_square_image():
  height, width = 5, 7
  image = jnp.asarray(np.random.default_rng(0).uniform(size=(height, width, 3)), jnp.float32)
  # Rotate about the input's centre, then move that centre to the output's.
  matrix = geometry.rotation_matrix(jnp.array([(width - 1) / 2, (height - 1) / 2]), 90.0)
  matrix = matrix.at[:, 2].add(jnp.array([(height - width) / 2, (width - height) / 2]))
  theta = stnjax.theta_from_pixel_matrix(matrix, (height, width), (width, height))
  out = stnjax.sample(theta, image, (width, height))
  np.testing.assert_allclose(out, np.rot90(np.asarray(image)), atol=1e-5)


def test_rotation_matrix_broadcasts_centre_angle_and_scale():
  centres = jnp.zeros((4, 1, 2))
  angles = jnp.array([0.0, 30.0, -60.0])
  matrix = geometry.rotation_matrix(centres, angles, jnp.array(2.0))
  assert matrix.shape == (4, 3, 2, 3)
  np.testing.assert_allclose(matrix[2, 1], geometry.rotation_matrix(jnp.zeros(2), 30.0, 2.0))
  assert geometry.rotation_matrix([1, 2], 45).dtype == jnp.float32


# perspective_matrix


def test_perspective_matrix_matches_opencv():
  source, target = OPENCV["perspective/source"], OPENCV["perspective/target"]
  expected = OPENCV["perspective/matrix"]
  matrix = geometry.perspective_matrix(source, target)
  assert matrix.shape == expected.shape and matrix.dtype == jnp.float32
  np.testing.assert_allclose(matrix, expected, rtol=3e-5, atol=1e-6 * np.abs(expected).max())
  # Where the matrices send points, in pixels, relative to the size of the picture.
  size = np.ptp(source, axis=-2).max(axis=-1, keepdims=True)[..., None]
  inner = source.mean(axis=-2, keepdims=True) + 0.5 * (source - source.mean(axis=-2, keepdims=True))
  for points in (source, inner):
    error = apply_homogeneous(matrix, points) - apply_homogeneous(expected, points)
    np.testing.assert_array_less(np.abs(error), np.broadcast_to(1e-5 * size, error.shape))


def test_perspective_matrix_identity_and_broadcasting():
  square = jnp.array([[0.0, 0.0], [6.0, 0.0], [6.0, 4.0], [0.0, 4.0]])
  np.testing.assert_allclose(geometry.perspective_matrix(square, square), np.eye(3), atol=1e-6)
  targets = square + jnp.arange(3.0)[:, None, None]
  matrix = geometry.perspective_matrix(square, targets)
  assert matrix.shape == (3, 3, 3)
  np.testing.assert_allclose(matrix[2], [[1, 0, 2], [0, 1, 2], [0, 0, 1]], atol=1e-5)


def reference_perspective(source, target):
  """OpenCV's 8x8 system solved in float64 NumPy: the finite-difference reference."""
  x, y, u, v = source[:, 0], source[:, 1], target[:, 0], target[:, 1]
  ones, zeros = np.ones(4), np.zeros(4)
  system = np.concatenate([np.stack([x, y, ones, zeros, zeros, zeros, -x * u, -y * u], -1),
                           np.stack([zeros, zeros, zeros, x, y, ones, -x * v, -y * v], -1)])
  return np.append(np.linalg.solve(system, np.concatenate([u, v])), 1.0).reshape(3, 3)


def test_perspective_matrix_gradient_matches_float64_finite_differences():
  source = OPENCV["perspective/source"][1].astype(np.float64)
  target = OPENCV["perspective/target"][1].astype(np.float64)
  # Each entry weighted by its scale, so that the small perspective row counts.
  weights = np.random.default_rng(0).normal(size=(3, 3)) / np.abs(OPENCV["perspective/matrix"][1])

  def loss(s, t):
    return jnp.sum(geometry.perspective_matrix(s, t) * weights)

  grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(source, jnp.float32),
                                         jnp.asarray(target, jnp.float32))
  for index, (argument, grad) in enumerate(zip((source, target), grads)):
    numeric = np.zeros_like(argument)
    step = 1e-4
    for point, axis in np.ndindex(4, 2):
      shifted = [source.copy(), target.copy()]
      shifted[index][point, axis] += step
      up = np.sum(reference_perspective(*shifted) * weights)
      shifted[index][point, axis] -= 2 * step
      down = np.sum(reference_perspective(*shifted) * weights)
      numeric[point, axis] = (up - down) / (2 * step)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3 * np.abs(numeric).max())


# invert_theta


def test_invert_theta_matches_opencv_invert_affine_transform():
  inverse = geometry.invert_theta(OPENCV["invert_affine/matrix"])
  assert inverse.dtype == jnp.float32
  assert_close_per_matrix(inverse, OPENCV["invert_affine/inverse"])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shapes", [((5, 7), (5, 7)), ((13, 17), (9, 11))])
def test_inverting_theta_equals_inverting_the_pixel_matrix(align_corners, shapes):
  in_shape, out_shape = shapes
  for matrix, inverse in zip(OPENCV["invert_affine/matrix"], OPENCV["invert_affine/inverse"]):
    theta = stnjax.theta_from_pixel_matrix(matrix, in_shape, out_shape, align_corners=align_corners)
    # The inverse warp reads the output (out_shape) and writes the input's shape.
    expected = stnjax.theta_from_pixel_matrix(inverse, out_shape, in_shape,
                                              align_corners=align_corners)
    assert_close_per_matrix(geometry.invert_theta(theta), expected, rtol=1e-4, atol=1e-5)


def test_invert_theta_identity_projective_and_batches():
  np.testing.assert_array_equal(geometry.invert_theta(jnp.eye(2, 3)), jnp.eye(2, 3))
  rng = np.random.default_rng(2)
  theta = jnp.asarray(np.eye(3) + rng.uniform(-0.3, 0.3, (4, 2, 3, 3)), jnp.float32)
  inverse = geometry.invert_theta(theta)
  assert inverse.shape == (4, 2, 3, 3)
  np.testing.assert_allclose(theta @ inverse, np.broadcast_to(np.eye(3), theta.shape), atol=1e-5)
  affine = theta[..., :2, :]
  round_trip = geometry.invert_theta(geometry.invert_theta(affine))
  np.testing.assert_allclose(round_trip, affine, atol=1e-5)
  assert not np.isfinite(geometry.invert_theta(jnp.zeros((2, 3)))).any()


def test_sampling_with_the_inverse_undoes_the_warp():
  theta = jnp.array([[0.9, -0.25, 0.1], [0.2, 0.8, -0.05]])
  image = ramp_image((13, 17))
  # Bilinear reads a linear ramp exactly, and an affine warp of it is linear again, so
  # only positions off the image differ. (A projective warp of it is not linear.)
  warped = stnjax.sample(theta, image, (9, 11))
  back = stnjax.sample(geometry.invert_theta(theta), warped, (13, 17))
  # Where both warps stayed inside, a sampled image of ones reads exactly 1.
  ones = jnp.ones((13, 17, 1))
  inside = stnjax.sample(geometry.invert_theta(theta), stnjax.sample(theta, ones, (9, 11)),
                         (13, 17))[..., 0] == 1
  assert inside.sum() > 50
  np.testing.assert_allclose(np.asarray(back)[inside], np.asarray(image)[inside], atol=1e-4)


# compose_theta


def homogeneous(theta):
  theta = np.asarray(theta, np.float64)
  if theta.shape[-2] == theta.shape[-1]:
    return theta
  last_row = np.zeros(theta.shape[:-2] + (1, theta.shape[-1]))
  last_row[..., -1] = 1
  return np.concatenate([theta, last_row], axis=-2)


@pytest.mark.parametrize("first_shape, then_shape, out_shape", [
    ((2, 3), (2, 3), (2, 3)),
    ((4, 2, 3), (3, 3), (4, 3, 3)),
    ((3, 3), (5, 1, 2, 3), (5, 1, 3, 3)),
    ((2, 1, 3, 4), (3, 3, 4), (2, 3, 3, 4)),
    ((3, 4), (4, 4), (4, 4)),
])
def test_compose_theta_is_the_product_of_the_homogeneous_matrices(first_shape, then_shape,
                                                                  out_shape):
  rng = np.random.default_rng(7)
  first, then = (np.eye(shape[-2], shape[-1]) + rng.uniform(-0.3, 0.3, shape)
                 for shape in (first_shape, then_shape))
  composed = geometry.compose_theta(first, then)
  assert composed.shape == out_shape and composed.dtype == jnp.float32
  expected = homogeneous(first) @ homogeneous(then)
  np.testing.assert_allclose(composed, expected[..., :out_shape[-2], :], atol=1e-6)
  # The identity on either side gives the other back exactly.
  identity = np.eye(first_shape[-2], first_shape[-1])
  np.testing.assert_array_equal(geometry.compose_theta(identity, then),
                                homogeneous(np.asarray(then, np.float32))[..., :out_shape[-2], :])
  np.testing.assert_array_equal(geometry.compose_theta(first, np.eye(*then_shape[-2:])),
                                homogeneous(np.asarray(first, np.float32))[..., :out_shape[-2], :])


def test_sampling_with_the_composition_equals_warping_twice():
  first = jnp.array([[0.7, -0.2, 0.05], [0.15, 0.6, -0.1]])
  then = jnp.array([[0.8, 0.05, -0.05], [-0.08, 0.8, 0.04]])
  image = ramp_image((13, 17))
  # A linear ramp is read back exactly by bilinear sampling, and both warps shrink
  # towards the middle, so every read lies inside: the two agree to float rounding, also
  # with a first warp to another size.
  twice = stnjax.sample(then, stnjax.sample(first, image, (11, 19)), (9, 7))
  once = stnjax.sample(geometry.compose_theta(first, then), image, (9, 7))
  np.testing.assert_allclose(once, twice, atol=1e-4)
  # Two projective warps: their composition warps the grid points alike.
  first_p = jnp.concatenate([first, jnp.array([[0.05, -0.04, 1.0]])])
  then_p = jnp.concatenate([then, jnp.array([[-0.03, 0.06, 1.0]])])
  grid = stnjax.affine_grid(then_p, (9, 7))
  through_first = np.einsum("ij,hwj->hwi", np.asarray(first_p),
                            np.concatenate([grid, np.ones((9, 7, 1))], -1))
  np.testing.assert_allclose(
      stnjax.affine_grid(geometry.compose_theta(first_p, then_p), (9, 7)),
      through_first[..., :2] / through_first[..., 2:], atol=1e-5)


# theta_from_boxes


@pytest.mark.parametrize("align_corners", [False, True])
def test_whole_image_box(align_corners):
  theta = geometry.theta_from_boxes(jnp.array([0.0, 0.0, 7.0, 5.0]), (5, 7),
                                    align_corners=align_corners)
  if align_corners:  # The corner output centres land on the image's outer corners.
    np.testing.assert_allclose(theta, [[7 / 6, 0, 0], [0, 5 / 4, 0]], rtol=1e-6)
  else:
    np.testing.assert_array_equal(theta, jnp.eye(2, 3))


def test_boxes_with_integer_edges_read_exact_crops():
  image = jnp.asarray(np.random.default_rng(3).uniform(size=(6, 9, 2)), jnp.float32)
  # Three boxes of 3 rows x 4 columns; the last is flipped left-right.
  boxes = jnp.array([[0, 0, 4, 3], [5, 3, 9, 6], [6, 2, 2, 5]])
  theta = geometry.theta_from_boxes(boxes, image.shape[:2])
  glimpses = stnjax.sample(theta, image, (3, 4))
  assert glimpses.shape == (3, 3, 4, 2)
  np.testing.assert_allclose(glimpses[0], image[0:3, 0:4], atol=1e-6)
  np.testing.assert_allclose(glimpses[1], image[3:6, 5:9], atol=1e-6)
  np.testing.assert_allclose(glimpses[2], image[2:5, 2:6][:, ::-1], atol=1e-6)


def test_boxes_through_pixel_centres_read_exact_crops_with_align_corners():
  image = jnp.asarray(np.random.default_rng(4).uniform(size=(6, 9, 2)), jnp.float32)
  # Columns 2..6 and rows 1..3: the corner pixels' centres are at edge coordinates + 0.5.
  theta = geometry.theta_from_boxes(jnp.array([2.5, 1.5, 6.5, 3.5]), (6, 9), align_corners=True)
  out = stnjax.sample(theta, image, (3, 5), align_corners=True)
  np.testing.assert_allclose(out, image[1:4, 2:7], atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_box_corners_land_where_documented(align_corners):
  boxes = jnp.asarray(np.random.default_rng(5).uniform(-2, 9, (10, 4)), jnp.float32)
  theta = geometry.theta_from_boxes(boxes, (5, 7), align_corners=align_corners)
  # Normalized output corners: the outer corners without align_corners, else the centres.
  corners = jnp.array([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
  read = jnp.einsum("bij,kj->bki", theta, corners)
  pixels = stnjax.normalized_to_pixel(read, (5, 7), align_corners=align_corners)
  expected = np.stack([boxes[:, :2], boxes[:, 2:]], 1) - 0.5  # Edge to centre coordinates.
  np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_align_corners_box_equals_tensorflow_crop_and_resize():
  height, width, crop_height, crop_width = 6, 9, 4, 5
  y1, x1, y2, x2 = 0.1, 0.2, 0.9, 0.6  # TensorFlow's normalized box.
  box = jnp.array([x1 * (width - 1) + 0.5, y1 * (height - 1) + 0.5,
                   x2 * (width - 1) + 0.5, y2 * (height - 1) + 0.5])
  theta = geometry.theta_from_boxes(box, (height, width), align_corners=True)
  out = stnjax.sample(theta, ramp_image((height, width)), (crop_height, crop_width),
                      align_corners=True)
  # tf.image.crop_and_resize's sampling positions, from its documentation.
  in_y = y1 * (height - 1) + np.arange(crop_height) * (y2 - y1) * (height - 1) / (crop_height - 1)
  in_x = x1 * (width - 1) + np.arange(crop_width) * (x2 - x1) * (width - 1) / (crop_width - 1)
  crop_shape = (crop_height, crop_width)
  np.testing.assert_allclose(out[..., 0], np.broadcast_to(in_x, crop_shape), atol=1e-5)
  np.testing.assert_allclose(out[..., 1], np.broadcast_to(in_y[:, None], crop_shape), atol=1e-5)


def test_boxes_on_a_size_one_axis_with_align_corners():
  theta = geometry.theta_from_boxes(jnp.array([1.0, 0.0, 3.0, 1.0]), (1, 7), align_corners=True)
  np.testing.assert_array_equal(theta[1], [0, 0, 0])
  assert np.isfinite(theta).all()


# Transformations


def test_jit_and_vmap_match_eager_batched_calls():
  rng = np.random.default_rng(6)
  centres = jnp.asarray(rng.uniform(0, 50, (5, 2)), jnp.float32)
  angles = jnp.asarray(rng.uniform(-180, 180, 5), jnp.float32)
  boxes = jnp.asarray(rng.uniform(0, 20, (5, 4)), jnp.float32)
  points = jnp.asarray(OPENCV["perspective/source"][:5])
  targets = jnp.asarray(OPENCV["perspective/target"][:5])
  cases = [
      (geometry.rotation_matrix, (centres, angles)),
      (geometry.perspective_matrix, (points, targets)),
      (geometry.invert_theta, (geometry.rotation_matrix(centres, angles),)),
      (geometry.compose_theta, (geometry.rotation_matrix(centres, angles),
                                geometry.rotation_matrix(centres[::-1], angles))),
      (lambda b: geometry.theta_from_boxes(b, (20, 30), align_corners=True), (boxes,)),
  ]
  for function, args in cases:
    batched = function(*args)
    np.testing.assert_allclose(jax.jit(function)(*args), batched, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(function))(*args), batched, rtol=1e-6,
                               atol=1e-6)


def test_gradients_match_finite_differences():
  # Jitted: op-by-op dispatch of the finite differences would take seconds.
  check = lambda f, args: jax.test_util.check_grads(jax.jit(f), args, order=1,
                                                    modes=["fwd", "rev"], eps=1e-2,
                                                    atol=1e-2, rtol=1e-2)
  check(lambda c, a, s: geometry.rotation_matrix(c, a, s),
        (jnp.array([3.0, 2.0]), jnp.array(30.0), jnp.array(1.5)))
  check(geometry.invert_theta, (jnp.array([[1.1, 0.2, 0.3], [-0.1, 0.9, 0.2]]),))
  check(geometry.invert_theta, (jnp.array([[1.1, 0.2, 0.3], [-0.1, 0.9, 0.2], [0.1, 0.0, 1.0]]),))
  check(lambda b: geometry.theta_from_boxes(b, (5, 7)), (jnp.array([1.0, 0.5, 5.0, 4.0]),))
  check(geometry.compose_theta, (jnp.array([[1.1, 0.2, 0.3], [-0.1, 0.9, 0.2]]),
                                 jnp.array([[0.8, 0.1, -0.2], [0.3, 1.2, 0.1], [0.1, 0.2, 1.0]])))
  # At a quarter turn, where the angle is reduced: d(scale * cos)/d(angle) = -pi / 180.
  d_alpha = jax.grad(lambda a: geometry.rotation_matrix(jnp.zeros(2), a)[0, 0])(90.0)
  np.testing.assert_allclose(d_alpha, -np.pi / 180, rtol=1e-6)


# Errors


@pytest.mark.parametrize("call, error, match", [
    (lambda: geometry.rotation_matrix(jnp.zeros(3), 0.0), ValueError,
     r"centre must have shape \[\.\.\., 2\] .*got shape \(3,\)"),
    (lambda: geometry.rotation_matrix(jnp.zeros((4, 2)), jnp.zeros(3)), ValueError,
     r"batch dims must broadcast.*centre \(4,\), angle \(3,\)"),
    (lambda: geometry.rotation_matrix("centre", 0.0), TypeError, r"centre must be a real array"),
    (lambda: geometry.perspective_matrix(jnp.zeros((3, 2)), jnp.zeros((4, 2))), ValueError,
     r"source_points must have shape \[\.\.\., 4, 2\] .*got shape \(3, 2\)"),
    (lambda: geometry.perspective_matrix(jnp.zeros((4, 2)), jnp.zeros((4, 3))), ValueError,
     r"target_points must have shape \[\.\.\., 4, 2\] .*got shape \(4, 3\)"),
    (lambda: geometry.perspective_matrix(jnp.zeros((2, 4, 2)), jnp.zeros((3, 4, 2))), ValueError,
     r"source_points \(2,\), target_points \(3,\)"),
    (lambda: geometry.invert_theta(jnp.zeros((2, 2))), ValueError,
     r"theta must have shape \[\.\.\., 2, 3\] or \[\.\.\., 3, 3\] \(2-D\).*got shape \(2, 2\)"),
    (lambda: geometry.invert_theta(jnp.zeros((2, 3), jnp.complex64)), TypeError,
     r"theta must have a float or integer dtype, got complex64"),
    (lambda: geometry.compose_theta(jnp.eye(2, 3), jnp.zeros((3, 2))), ValueError,
     r"then must have shape \[\.\.\., 2, 3\] or \[\.\.\., 3, 3\] \(2-D\).*got shape \(3, 2\)"),
    (lambda: geometry.compose_theta(jnp.eye(2, 3), jnp.eye(3, 4)), ValueError,
     r"both transform images or both volumes, got shapes \(2, 3\) \(2-D\) and \(3, 4\) \(3-D\)"),
    (lambda: geometry.compose_theta(jnp.zeros((2, 2, 3)), jnp.zeros((3, 2, 3))), ValueError,
     r"batch dims must broadcast.*first \(2,\), then \(3,\)"),
    (lambda: geometry.compose_theta("first", jnp.eye(2, 3)), TypeError,
     r"first must be a real array"),
    (lambda: geometry.theta_from_boxes(jnp.zeros((2, 5)), (5, 7)), ValueError,
     r"boxes must have shape \[\.\.\., 4\] \(x_min, y_min, x_max, y_max\), got shape \(2, 5\)"),
    (lambda: geometry.theta_from_boxes(jnp.zeros(4), (5,)), ValueError,
     r"in_shape must be a pair \(height, width\)"),
])
def test_bad_arguments_say_what_was_expected(call, error, match):
  with pytest.raises(error, match=match):
    call()
