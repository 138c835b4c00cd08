"""Properties of grid_sample and sample beyond PyTorch parity (see test_parity.py)."""

import functools
import itertools

import chex
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import stnjax
from stnjax import _jax_private

METHODS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")


def random_image(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), dtype)


def batched_theta(theta, *batch):
  return jnp.broadcast_to(jnp.asarray(theta, jnp.float32), batch + np.shape(theta))


def pixel_translation(dx, dy, shape, align_corners=False):
  """theta that reads input pixel (x + dx, y + dy) for output pixel (x, y)."""
  matrix = jnp.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
  return stnjax.theta_from_pixel_matrix(matrix, shape, align_corners=align_corners,
                                        inverse_map=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (13, 17), (1, 6)])
def test_identity_returns_input_exactly(method, align_corners, shape):
  image = random_image((2,) + shape + (3,))
  for theta in (jnp.eye(2, 3), jnp.eye(3)):
    out = stnjax.sample(batched_theta(theta, 2), image, method=method,
                        align_corners=align_corners)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("shape", [(5, 7), (13, 17)])
def test_one_pixel_translation_moves_content_one_pixel(method, padding_mode, shape):
  image = random_image(shape + (2,))
  right = stnjax.sample(pixel_translation(1.0, 0.0, shape), image, method=method,
                        padding_mode=padding_mode)
  down = stnjax.sample(pixel_translation(0.0, 1.0, shape), image, method=method,
                       padding_mode=padding_mode)
  # Output pixel (x, y) reads input pixel (x + 1, y): content moves left (and up) by one.
  np.testing.assert_array_equal(right[:, :-1], image[:, 1:])
  np.testing.assert_array_equal(down[:-1], image[1:])
  if padding_mode == "border" and method != "bicubic":
    np.testing.assert_array_equal(right[:, -1], image[:, -1])


def test_non_square_axes_are_not_swapped():
  # A 5x7 image whose value is its column index: x must run along W.
  image = jnp.broadcast_to(jnp.arange(7.0)[None, :, None], (5, 7, 1))
  grid = stnjax.affine_grid(jnp.eye(2, 3), (5, 7))
  assert grid.shape == (5, 7, 2)
  np.testing.assert_allclose(grid[0, :, 0], (2 * np.arange(7) + 1) / 7 - 1, atol=1e-6)
  np.testing.assert_allclose(grid[:, 0, 1], (2 * np.arange(5) + 1) / 5 - 1, atol=1e-6)
  half_width = stnjax.sample(jnp.array([[0.5, 0, 0], [0, 1, 0]]), image)
  np.testing.assert_allclose(half_width[0, :, 0], np.clip(np.arange(7) / 2 + 1.5, 0, 6),
                             atol=1e-5)


def test_gradient_wrt_translation_is_nonzero_at_identity():
  image = random_image((5, 7, 1))
  grad = jax.grad(lambda theta: stnjax.sample(theta, image).sum())(jnp.eye(2, 3))
  assert np.all(np.abs(grad[:, 2]) > 1e-3), grad


@pytest.mark.usefixtures("fast_compiles")
class VariantsTest(parameterized.TestCase):
  """Each public function, jitted and not, against PyTorch's stored values and gradients."""

  def reference(self, method, padding_mode):
    from conftest import REFERENCE_CASES
    case = REFERENCE_CASES[f"affine_13x17_to_9x11_{method}_{padding_mode}_unaligned"]
    return {k: jnp.asarray(v) for k, v in case.items() if k not in ("options", "out_shape")}

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*itertools.product(METHODS, PADDING_MODES))
  def test_sample(self, method, padding_mode):
    case = self.reference(method, padding_mode)
    warp = self.variant(functools.partial(stnjax.sample, out_shape=(9, 11), method=method,
                                          padding_mode=padding_mode))
    out, vjp = jax.vjp(warp, case["theta"], case["image"])
    grad_theta, grad_image = vjp(case["cotangent"])
    for actual, expected in ((out, "out"), (grad_theta, "grad_theta"),
                             (grad_image, "grad_image")):
      np.testing.assert_allclose(actual, case[expected], rtol=2e-5, atol=5e-5, err_msg=expected)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*METHODS)
  def test_grid_sample_and_affine_grid(self, method):
    case = self.reference(method, "zeros")
    grid = self.variant(functools.partial(stnjax.affine_grid, out_shape=(9, 11)))(case["theta"])
    np.testing.assert_allclose(grid, case["grid_from_theta"], atol=1e-6)
    read = self.variant(functools.partial(stnjax.grid_sample, method=method))
    out, vjp = jax.vjp(read, case["image"], case["grid"])
    grad_image, grad_grid = vjp(case["cotangent"])
    np.testing.assert_allclose(out, case["out_grid"], rtol=2e-5, atol=5e-5)
    np.testing.assert_allclose(grad_image, case["grad_image_grid"], rtol=2e-5, atol=5e-5)
    np.testing.assert_allclose(grad_grid, case["grad_grid"], rtol=2e-5, atol=5e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pixel_helpers(self):
    # A quarter turn of the normalized square: on a square 7x7 image, the same turn
    # about the centre pixel, output (x, y) reading input (6 - y, x).
    theta = batched_theta([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], 2)
    to_pixels = self.variant(functools.partial(stnjax.pixel_matrix_from_theta,
                                               in_shape=(7, 7), inverse_map=True))
    np.testing.assert_allclose(to_pixels(theta)[0], [[0.0, -1.0, 6.0], [1.0, 0.0, 0.0]],
                               atol=1e-5)
    to_theta = self.variant(functools.partial(stnjax.theta_from_pixel_matrix,
                                              in_shape=(7, 7), inverse_map=True))
    np.testing.assert_allclose(to_theta(to_pixels(theta)), theta, atol=1e-5)


def test_vmap_matches_batched_call():
  image = random_image((3, 5, 7, 2))
  theta = jnp.asarray(np.random.default_rng(1).normal(0, 0.2, (3, 2, 3)) + np.eye(2, 3),
                      jnp.float32)
  batched = stnjax.sample(theta, image, (4, 6), method="bicubic", padding_mode="reflection")
  mapped = jax.vmap(lambda t, i: stnjax.sample(t, i, (4, 6), method="bicubic",
                                               padding_mode="reflection"))(theta, image)
  np.testing.assert_allclose(mapped, batched, atol=1e-6)
  grid = stnjax.affine_grid(theta, (4, 6))
  np.testing.assert_allclose(jax.vmap(stnjax.grid_sample)(image, grid),
                             stnjax.grid_sample(image, grid), atol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda t: stnjax.affine_grid(t, (4, 6)))(theta), grid)


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_numeric_gradients(method, padding_mode):
  image = random_image((2, 5, 7, 2), seed=3)
  theta = batched_theta([[0.83, 0.21, 0.137], [-0.11, 1.07, -0.193]], 2)

  def warp(theta, image):
    return stnjax.sample(theta, image, (4, 6), method=method, padding_mode=padding_mode)

  # float32 central differences: a small step keeps clear of the kinks at integer
  # pixel positions; tolerances are those float32 differences allow.
  jax.test_util.check_grads(warp, (theta, image), order=1, modes=["rev"], eps=1e-3,
                            atol=2e-2, rtol=2e-2)


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("method", METHODS)
def test_float_dtypes_are_kept(dtype, method):
  image = random_image((2, 5, 7, 3))
  theta = batched_theta([[0.9, 0.2, 0.1], [-0.1, 1.1, -0.2]], 2)
  out = stnjax.sample(theta, image.astype(dtype), method=method)
  assert out.dtype == dtype
  reference = stnjax.sample(theta, image.astype(dtype).astype(jnp.float32), method=method)
  np.testing.assert_allclose(np.asarray(out, np.float32), reference,
                             atol=float(jnp.finfo(dtype).eps) * 4)
  grad_image, grad_theta = jax.grad(
      lambda i, t: stnjax.sample(t, i, method=method).astype(jnp.float32).sum(),
      argnums=(0, 1))(image.astype(dtype), theta.astype(dtype))
  assert grad_image.dtype == dtype and grad_theta.dtype == dtype


def test_uint8_images_are_read_as_float32():
  image = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3)), jnp.uint8)
  out = stnjax.sample(jnp.eye(2, 3), image)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, image.astype(jnp.float32))
  shifted = stnjax.sample(jnp.array([[1.0, 0, 0.1], [0, 1, 0]]), image)
  assert shifted.dtype == jnp.float32 and float(shifted.max()) <= 255


def test_second_call_with_same_shapes_does_not_recompile():
  image = random_image((2, 5, 7, 3))
  theta = batched_theta(jnp.eye(2, 3), 2)
  stnjax.sample(theta, image, (4, 4), method="bicubic")
  with _jax_private.compilations("_warp") as compiled:
    stnjax.sample(theta + 0.1, image * 2, (4, 4), method="bicubic")
    stnjax.sample(theta, image, [4, 4], method="bicubic")  # A list names the same shape.
  assert not compiled
  grid = stnjax.affine_grid(theta, (4, 4))
  stnjax.grid_sample(image, grid)
  with _jax_private.compilations("_warp") as compiled:
    stnjax.grid_sample(image + 1, grid * 0.5)
  assert not compiled
  family = stnjax.transforms.get("similarity")
  stnjax.transforms.warp(family, jnp.zeros((2, 4)), image)
  with _jax_private.compilations("_warp") as compiled:
    stnjax.transforms.warp(family, jnp.ones((2, 4)), image + 1)
  assert not compiled


def intermediate_shapes(jaxpr):
  """Shapes of every value a jaxpr (and the jaxprs nested in it) computes."""
  shapes = []
  for equation in jaxpr.eqns:
    shapes += [tuple(v.aval.shape) for v in equation.outvars]
    for param in equation.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        shapes += intermediate_shapes(inner)
  return shapes


def test_glimpses_read_one_image_without_copying_it():
  batch, glimpses, height, width, channels = 2, 4, 13, 17, 5
  image = random_image((batch, height, width, channels))
  rng = np.random.default_rng(2)
  theta = jnp.asarray(np.eye(2, 3) + rng.normal(0, 0.2, (batch, glimpses, 2, 3)), jnp.float32)
  out = stnjax.sample(theta, image, (6, 5))
  assert out.shape == (batch, glimpses, 6, 5, channels)
  for k in range(glimpses):  # Two programs: float32 rounding, as against PyTorch.
    np.testing.assert_allclose(out[:, k], stnjax.sample(theta[:, k], image, (6, 5)),
                               rtol=2e-5, atol=2e-5)

  def loss(theta, image):
    return stnjax.sample(theta, image, (6, 5)).sum()

  shapes = intermediate_shapes(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(theta, image).jaxpr)
  image_copies = [s for s in shapes if s[-3:] == (height, width, channels) and glimpses in s[:-3]]
  assert not image_copies, image_copies
  # No batch of base grids either: nothing shaped [..., Ho, Wo, 2 or 3] or [..., Ho*Wo, 3].
  base_grids = [s for s in shapes if s[-3:] in ((6, 5, 2), (6, 5, 3)) or s[-2:] == (30, 3)]
  assert not base_grids, base_grids


def test_single_image_with_several_thetas():
  image = random_image((5, 7, 3))
  theta = batched_theta(jnp.eye(2, 3), 4)
  out = stnjax.sample(theta, image)
  assert out.shape == (4, 5, 7, 3)
  np.testing.assert_array_equal(out[2], image)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_huge_and_non_finite_coordinates_stay_inside(method, padding_mode):
  image = random_image((5, 7, 2)) + 2.0  # No zeros in the image.
  values = [1e30, -1e30, np.inf, -np.inf, np.nan, 3e9]
  grid = jnp.asarray([[[x, y] for x in values] for y in values], jnp.float32)
  out = np.asarray(stnjax.grid_sample(image, grid, method=method, padding_mode=padding_mode))
  assert np.isfinite(out).all()
  nan_rows = [i for i, v in enumerate(values) if np.isnan(v)]
  np.testing.assert_array_equal(out[nan_rows], 0.0)  # NaN reads zero in every mode.
  np.testing.assert_array_equal(out[:, nan_rows], 0.0)
  finite_out = out[:, [0, 1, 5]][[0, 1, 5]]
  if padding_mode == "zeros":
    np.testing.assert_array_equal(out, 0.0)
  elif padding_mode == "border" and method != "bicubic":
    corners = {image[i, j, 0].item() for i in (0, -1) for j in (0, -1)}
    assert set(finite_out[..., 0].ravel().tolist()) <= corners


@pytest.mark.parametrize("method,spatial", [  # Bicubic samples 2-D images only.
    (method, spatial) for spatial in [(6, 5), (4, 6, 5)] for method in METHODS
    if not (method == "bicubic" and len(spatial) == 3)])
@pytest.mark.parametrize("channels", [1, 2])  # Two take the checked path (_corners).
def test_a_non_finite_pixel_reaches_only_reads_that_use_it(method, spatial, channels):
  """A read whose taps hang off the image never takes a value from the pixels it reads in
  their place (as in PyTorch, which does not read them): an inf or NaN in the first
  column changes the reads at the far edge of its row only through taps that lie on it."""
  image = random_image(spatial + (channels,))
  clean = image.at[..., 2, 0, :].set(0.0)
  width = spatial[-1]
  # Points between the last column and the zero padding beyond it, in the bad pixel's row
  # and in the next one: their taps off the image would alias to column 0.
  xs = np.array([width - 0.5, width - 0.2, width - 1.0])
  if method == "bicubic":
    xs = xs + 1.5  # Four taps: keep column 0's neighbours off them.
  points = [[x, y] + ([1.0] if len(spatial) == 3 else []) for x in xs for y in (2.0, 3.0)]
  sizes = np.asarray(spatial[::-1], np.float32)
  grid = jnp.asarray((2 * np.asarray(points, np.float32) + 1) / sizes - 1)
  grid = grid.reshape((1,) * (len(spatial) - 1) + grid.shape)  # [(1,) 1, N, dims]
  for bad in (np.inf, np.nan):
    dirty = image.at[..., 2, 0, :].set(bad)
    np.testing.assert_array_equal(stnjax.grid_sample(dirty, grid, method=method),
                                  stnjax.grid_sample(clean, grid, method=method))


def test_nan_theta_gives_zeros():
  image = random_image((2, 5, 7, 3)) + 2.0
  theta = batched_theta(jnp.full((2, 3), jnp.nan), 2)
  for method, padding_mode in itertools.product(METHODS, PADDING_MODES):
    out = stnjax.sample(theta, image, method=method, padding_mode=padding_mode)
    np.testing.assert_array_equal(out, 0.0)


def test_zero_perspective_denominator_is_safe():
  theta = jnp.array([[1.0, 0, 0], [0, 1, 0], [1.0, 0, 0]])  # w = x: zero on a column.
  out = stnjax.sample(theta, random_image((5, 8, 1)), align_corners=True)
  assert np.isfinite(np.asarray(out)).all()


BAD_INPUTS = [
    # (function, args, kwargs, exception, message fragment)
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7))), {}, ValueError, r"\[\.\.\., H, W, C\]"),
    (stnjax.sample, (jnp.zeros((2, 3)), jnp.zeros((2, 5, 7, 1))), {}, ValueError,
     r"image shape \(2, 5, 7, 1\) needs theta of rank >= 3, got shape \(2, 3\)"),
    (stnjax.sample, (jnp.zeros((3, 2, 3)), jnp.zeros((2, 5, 7, 1))), {}, ValueError,
     r"got \(3, 2, 3\)"),
    (stnjax.sample, (jnp.zeros((2, 4)), jnp.zeros((5, 7, 1))), {}, ValueError,
     r"\[\.\.\., 2, 3\].*got shape \(2, 4\)"),
    (stnjax.sample, (jnp.zeros((2, 3), jnp.int32), jnp.zeros((5, 7, 1))), {}, TypeError,
     "theta must have a floating dtype, got int32"),
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7, 1), bool)), {}, TypeError,
     "float or integer dtype, got bool"),
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7, 1))), {"method": "linear"}, ValueError,
     r"method must be one of .*got 'linear'"),
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7, 1))), {"padding_mode": "wrap"},
     ValueError, r"padding_mode must be one of .*got 'wrap'"),
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7, 1))), {"out_shape": (4, 0)}, ValueError,
     "out_shape must be a pair"),
    (stnjax.sample, (jnp.eye(2, 3), jnp.zeros((5, 7, 1))), {"out_shape": 4}, ValueError,
     "out_shape must be a pair"),
    (stnjax.grid_sample, (jnp.zeros((5, 7, 1)), jnp.zeros((4, 4, 3))), {}, ValueError,
     r"\[\.\.\., Do, Ho, Wo, 3\] \(x, y, z\), got shape \(4, 4, 3\)"),
    (stnjax.grid_sample, (jnp.zeros((2, 5, 7, 1)), jnp.zeros((3, 4, 4, 2))), {}, ValueError,
     r"batch dims \(2,\)"),
    (stnjax.grid_sample, (jnp.zeros((2, 5, 7, 1)), jnp.zeros((4, 4, 2))), {}, ValueError,
     "rank >= 4"),
    (stnjax.grid_sample, (jnp.zeros((5, 7, 1)), jnp.zeros((4, 4, 2), jnp.int32)), {}, TypeError,
     "grid must have a floating dtype"),
    (stnjax.grid_sample, (jnp.zeros((5, 7, 1)), jnp.zeros((4, 4, 2))), {"method": "cubic"},
     ValueError, "method must be one of"),
    (stnjax.affine_grid, (jnp.zeros((2, 2)), (4, 4)), {}, ValueError, r"got shape \(2, 2\)"),
    (stnjax.affine_grid, (jnp.eye(2, 3), (4, 4, 1)), {}, ValueError, "out_shape must be a pair"),
    (stnjax.theta_from_pixel_matrix, (jnp.zeros((4, 3)), (5, 7)), {}, ValueError,
     r"matrix must have shape \[\.\.\., 2, 3\] or \[\.\.\., 3, 3\], got \(4, 3\)"),
]


@pytest.mark.parametrize("function,args,kwargs,error,message", BAD_INPUTS,
                         ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(BAD_INPUTS)])
def test_bad_input_messages(function, args, kwargs, error, message):
  with pytest.raises(error, match=message):
    function(*args, **kwargs)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_many_channels_give_the_gradients_of_each_channel(method):
  # Above 16 channels the CPU path reduces over channels instead of writing sums out.
  image = random_image((2, 5, 7, 20), seed=4)
  theta = batched_theta([[0.9, 0.2, 0.1], [-0.1, 1.1, -0.2]], 2)
  loss = lambda theta, image: jnp.sum(stnjax.sample(theta, image, (4, 6), method=method) ** 2)
  grad_theta, grad_image = jax.grad(loss, argnums=(0, 1))(theta, image)
  per_channel = [jax.grad(loss, argnums=(0, 1))(theta, image[..., c:c + 1]) for c in range(20)]
  np.testing.assert_allclose(grad_theta, sum(g for g, _ in per_channel), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grad_image, jnp.concatenate([g for _, g in per_channel], -1),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("max_images", [1, 2, 3, 100])
@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 6)])
def test_the_image_gradient_in_chunks_of_the_batch_equals_it_in_one(spatial, max_images,
                                                                   batch):
  # The CPU lowering runs the image gradient over chunks of images in a loop; where the
  # batch does not divide, the last chunk overlaps the one before it.
  from stnjax import _corners
  points, channels = 40, 2
  rng = np.random.default_rng(batch)
  coords = tuple(jnp.asarray(rng.uniform(-1.5, size + 0.5, (batch, points)), jnp.float32)
                 for size in spatial[::-1])
  cotangent = random_image((batch, points, channels), seed=1)
  image_gradient = functools.partial(_corners.image_gradient, spatial=spatial)
  chunked = jax.jit(lambda *a: _corners.in_chunks(image_gradient, *a, max_images=max_images))
  np.testing.assert_allclose(chunked(cotangent, *coords), image_gradient(cotangent, *coords),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial", [(128, 128), (32, 32, 32)])
def test_chunked_image_gradient_under_transformations(spatial):
  # Three images of 384 KiB each: the CPU lowering's chunks of at most 1 MiB hold two,
  # so the second chunk overlaps the first. The gradient must equal each image's own
  # (one image: no chunks) under jit, vmap, a second derivative, shard_map and export
  # (the second derivatives themselves are checked against differences elsewhere).
  batch, channels = 3, 6 if len(spatial) == 2 else 3
  rng = np.random.default_rng(0)
  image = random_image((batch,) + spatial + (channels,))
  eye = np.eye(len(spatial), len(spatial) + 1)
  theta = jnp.asarray(0.8 * eye + rng.normal(scale=0.1, size=(batch,) + eye.shape), jnp.float32)
  out_shape = tuple(size // 2 for size in spatial)
  weights = random_image((batch,) + out_shape + (channels,), seed=2)
  loss = lambda t, i, w: jnp.vdot(stnjax.sample(t, i, out_shape), w)
  gradient = jax.jit(jax.grad(loss, (0, 1)))
  got = gradient(theta, image, weights)
  each = [gradient(theta[k:k + 1], image[k:k + 1], weights[k:k + 1]) for k in range(batch)]
  for j in range(2):  # Theta's gradient sums thousands of points, in another order.
    np.testing.assert_allclose(got[j], jnp.concatenate([e[j] for e in each]),
                               rtol=1e-4, atol=1e-4)
  stacked = jax.vmap(gradient)(*(jnp.stack([a, a]) for a in (theta, image, weights)))
  direction = jnp.asarray(rng.normal(size=theta.shape), jnp.float32)
  second = jax.jit(lambda t: jax.jvp(lambda u: gradient(u, image, weights)[1], (t,),
                                     (direction,)))(theta)
  mesh = jax.make_mesh((len(jax.devices()),), ("devices",))
  replicated = jax.sharding.PartitionSpec()
  sharded = jax.jit(jax.shard_map(gradient, mesh=mesh, in_specs=replicated,
                                  out_specs=replicated))(theta, image, weights)
  exported = jax.export.export(gradient, platforms=("cpu", "cuda", "tpu"))(theta, image, weights)
  restored = jax.export.deserialize(exported.serialize()).call(theta, image, weights)
  for other in (tuple(a[1] for a in stacked), sharded, restored):
    for a, b in zip(other, got, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  second_each = [jax.jvp(lambda u, k=k: gradient(u, image[k:k + 1], weights[k:k + 1])[1],
                         (theta[k:k + 1],), (direction[k:k + 1],))[1] for k in range(batch)]
  np.testing.assert_allclose(second[1], jnp.concatenate(second_each), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial,channels", [((6, 7), 1), ((6, 7), 3), ((4, 5, 6), 1),
                                               ((4, 5, 6), 2)])
def test_the_cpu_forms_of_the_coordinate_gradient_equal_the_plain_one(spatial, channels):
  # The CPU lowering writes channel sums out and computes the components in one loop
  # (a variadic reduction); the values must not change.
  from stnjax import _corners
  batch, points = 3, 50
  rng = np.random.default_rng(0)
  images = random_image((batch,) + spatial + (channels,))
  coords = tuple(jnp.asarray(rng.uniform(-1.5, size + 0.5, (batch, points)), jnp.float32)
                 for size in spatial[::-1])
  cotangent = random_image((batch, points, channels), seed=1)
  plain = _corners.coordinate_cotangent(cotangent, images, *coords)
  for unrolled, one_loop in [(True, False), (False, True), (True, True)]:
    cpu_form = jax.jit(functools.partial(_corners.coordinate_cotangent, unrolled=unrolled,
                                         one_loop=one_loop))(cotangent, images, *coords)
    assert len(cpu_form) == len(spatial)
    for got, want in zip(cpu_form, plain):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial,channels", [((6, 7), 1), ((6, 7), 3), ((4, 5, 6), 2)])
def test_unchecked_reads_equal_checked_ones_with_every_derivative(spatial, channels):
  # With `unchecked` the bilinear primitives skip the bounds checks (every corner is on
  # the image here); values, first and second derivatives in both modes, the image
  # gradient's CPU chunks and vmap must not change.
  from stnjax import _interpolation
  from jax.test_util import check_grads
  batch, points = 4, 40  # An even batch: the CPU's coordinate pieces run in two halves.
  rng = np.random.default_rng(0)
  images = random_image((batch,) + spatial + (channels,))
  coords = tuple(jnp.asarray(rng.uniform(0, size - 1.001, (batch, points)), jnp.float32)
                 for size in spatial[::-1])

  def read(unchecked):
    return lambda images, *coords: _interpolation.bilinear(images, coords, "xla", unchecked)

  unchecked, checked = read(True), read(False)
  np.testing.assert_allclose(jax.jit(unchecked)(images, *coords), checked(images, *coords),
                             rtol=1e-6, atol=1e-7)
  weights = random_image((batch, points, channels), seed=1)
  loss = lambda f: lambda *args: jnp.vdot(f(*args), weights)
  argnums = tuple(range(1 + len(spatial)))
  for got, want in zip(jax.jit(jax.grad(loss(unchecked), argnums))(images, *coords),
                       jax.grad(loss(checked), argnums)(images, *coords), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  hessian_vector = lambda f: jax.jvp(jax.grad(loss(f), argnums), (images, *coords),
                                     (images, *coords))[1]
  for got, want in zip(hessian_vector(unchecked), hessian_vector(checked), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  mapped = jax.vmap(unchecked)(*(jnp.stack([a, a]) for a in (images, *coords)))
  np.testing.assert_allclose(mapped[1], checked(images, *coords), rtol=1e-6, atol=1e-7)
  check_grads(unchecked, (images, *coords), order=2, modes=("fwd", "rev"), eps=1e-3)
  # Every primitive that derivatives and batching bind keeps the option.
  args = (images, *coords)
  for jaxpr in (jax.make_jaxpr(jax.grad(loss(unchecked), argnums))(*args),
                jax.make_jaxpr(lambda: hessian_vector(unchecked))(),
                jax.make_jaxpr(jax.vmap(jax.grad(loss(unchecked), argnums)))(
                    *(jnp.stack([a, a]) for a in args))):
    bound = bilinear_equations(jaxpr.jaxpr)
    assert len(bound) >= 3 and all(e.params["unchecked"] for e in bound)
  # Unchecked, a corner one column right of the image is the next row's first pixel.
  x = jnp.full((batch, 1), spatial[-1] - 0.5, jnp.float32)
  others = [jnp.zeros((batch, 1), jnp.float32)] * (len(spatial) - 1)
  np.testing.assert_allclose(
      _interpolation.bilinear(images, (x, *others), "xla", True)[:, 0],
      (images[(slice(None),) + (0,) * (len(spatial) - 1) + (-1,)]
       + images[(slice(None),) + (0,) * (len(spatial) - 2) + (1, 0)]) / 2, rtol=1e-6)


def bilinear_equations(jaxpr):
  """The equations binding stnjax's bilinear primitives in jaxpr and its sub-jaxprs."""
  found = []
  for equation in jaxpr.eqns:
    if equation.primitive.name.startswith("stnjax_bilinear"):
      found.append(equation)
    for sub in sub_jaxprs(equation.params):
      found += bilinear_equations(sub)
  return found


def sub_jaxprs(params):
  """The jaxprs among an equation's parameters (jit's, cond's branches, custom rules');
  jax.extend.core.jaxprs_in_params does this from jax 0.10 on."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item
