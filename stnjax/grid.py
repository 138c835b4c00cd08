"""Sampling grids and coordinate conversions.

Conventions (the same in the whole package):
  * A grid is `[..., Ho, Wo, 2]`; its last axis is `(x, y)` in normalized
    coordinates, -1 the left/top edge of the image and +1 the right/bottom edge.
    A volume's grid is `[..., Do, Ho, Wo, 3]`, last axis `(x, y, z)`, z along depth.
  * `align_corners=False` (default): -1 and +1 are the outer edges of the corner
    pixels, so pixel `i` of a size-`n` axis has centre `(2 * i + 1) / n - 1`.
    `align_corners=True`: -1 and +1 are the centres of the corner pixels, so pixel
    `i` sits at `2 * i / (n - 1) - 1`. Both exactly as in PyTorch.
  * Pixel coordinates put the centre of pixel `(row, col)` at `(x, y) = (col, row)`,
    as OpenCV, kornia and scipy.ndimage do.
  * theta maps *output* coordinates to *input* coordinates (pull sampling): a
    `[2, 3]` theta gives `(x_s, y_s) = theta @ (x_t, y_t, 1)`; a `[3, 3]` theta is a
    homography, followed by the perspective divide. In 3-D, `[3, 4]` is affine and
    `[4, 4]` projective.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stnjax import _validation

__all__ = [
    "affine_grid",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "theta_from_pixel_matrix",
    "pixel_matrix_from_theta",
]


def pixels_per_unit(size: int, align_corners: bool) -> float:
  """Pixels per normalized unit along an axis of `size` pixels."""
  return (size - 1) / 2 if align_corners else size / 2


def units_per_pixel(size: int, align_corners: bool) -> float:
  """Inverse of `pixels_per_unit`; 0 where that is 0 (PyTorch maps such an axis to 0)."""
  scale = pixels_per_unit(size, align_corners)
  return 1.0 / scale if scale else 0.0


def centred_pixels(size: int) -> np.ndarray:
  """Pixel indices minus the axis centre: exact half-integers, float64 `[size]`."""
  return np.arange(size, dtype=np.float64) - (size - 1) / 2


def _transform_output_grid(theta, out_shape, align_corners, scales):
  """theta applied to the normalized output grid, scaled, before any perspective divide.

  Works on separable terms: each entry of theta multiplies a `[Wo]`, `[Ho]` or `[Do]`
  vector, and only the final sums are `[..., (Do,) Ho, Wo]`; no batch of base grids
  is built.

  Returns:
    `(coords, denominator)`: coords are `scales[i] * (theta[i] @ p)` for the output
    axes x, y (and z), and denominator is the last row's `theta[-1] @ p` for a
    projective theta (None for an affine one), each float32 `[..., *out_shape]`.
  """
  dims = len(out_shape)
  theta = theta.astype(jnp.float32)
  axes = [centred_pixels(n) * units_per_pixel(n, align_corners) for n in out_shape[::-1]]

  def along(axis, values):
    # [..., n] -> [..., 1, .., n, .., 1], n at the place of its axis in out_shape.
    shape = [1] * dims
    shape[dims - 1 - axis] = values.shape[-1]
    return values.reshape(values.shape[:-1] + tuple(shape))

  def row(r, scale):
    # The scale goes into the float64 constants, so that identity rows stay exact.
    terms = [along(a, theta[..., r, a, None] * jnp.asarray(axis * scale, jnp.float32))
             for a, axis in enumerate(axes)]
    const = theta[..., r, dims].reshape(theta.shape[:-2] + (1,) * dims) * np.float32(scale)
    return functools.reduce(jnp.add, terms) + const

  denominator = row(dims, 1.0) if theta.shape[-2] == dims + 1 else None
  return [row(a, scale) for a, scale in enumerate(scales)], denominator


def source_pixels(theta: jax.Array, in_shape, out_shape, align_corners: bool):
  """Input pixel coordinates read by each output pixel under theta.

  Composes theta with the pixel <-> normalized maps of the input and output, so the
  identity theta gives exactly the output pixel's own position (no rounding).

  Args:
    theta: `[..., 2, 3]` or `[..., 3, 3]` (2-D), `[..., 3, 4]` or `[..., 4, 4]` (3-D),
      any float dtype.
    in_shape: `(H, W)` or `(D, H, W)` of the image read.
    out_shape: `(Ho, Wo)` or `(Do, Ho, Wo)` of the output.
    align_corners: as in `affine_grid`.

  Returns:
    `(x, y)` or `(x, y, z)`, each float32 `[..., *out_shape]`.
  """
  sizes = in_shape[::-1]
  coords, denominator = _transform_output_grid(
      theta, out_shape, align_corners, [pixels_per_unit(n, align_corners) for n in sizes])
  if denominator is not None:
    coords = [c / denominator for c in coords]
  return tuple(np.float32((n - 1) / 2) + c for n, c in zip(sizes, coords))


def source_jacobian(theta: jax.Array, in_shape, out_shape, align_corners: bool):
  """How the input pixel read moves with the output pixel under an affine theta.

  Args:
    theta: `[..., 2, 3]` or `[..., 3, 3]` (or, in 3-D, `[..., 3, 4]` or `[..., 4, 4]`).
    in_shape, out_shape, align_corners: as in `source_pixels`.

  Returns:
    For an affine theta, `jac[i][j]`: the derivative of input pixel coordinate `i` (x,
    y[, z]) along output axis `j` (column, row[, slice]), each float32 `[..., 1, 1]`:
    the same at every output pixel. Zero along an output axis of one pixel, as
    differences between neighbouring output pixels give there (they have none). None
    for a projective theta, whose Jacobian varies over the output.
  """
  dims = len(out_shape)
  if theta.shape[-2] == dims + 1:
    return None
  theta = theta.astype(jnp.float32)
  out_sizes, in_sizes = out_shape[::-1], in_shape[::-1]

  def derivative(i, j):
    if out_sizes[j] == 1:
      return jnp.zeros_like(theta[..., i, j])
    pixels = units_per_pixel(out_sizes[j], align_corners) * pixels_per_unit(
        in_sizes[i], align_corners)
    return theta[..., i, j] * np.float32(pixels)

  return tuple(tuple(derivative(i, j).reshape(theta.shape[:-2] + (1,) * dims)
                     for j in range(dims)) for i in range(dims))


@functools.partial(jax.jit, static_argnames=("out_shape", "align_corners"))
def _affine_grid(theta, out_shape, align_corners):
  coords, denominator = _transform_output_grid(theta, out_shape, align_corners,
                                               [1.0] * len(out_shape))
  if denominator is not None:
    coords = [c / denominator for c in coords]
  return jnp.stack(coords, axis=-1)


def affine_grid(theta: jax.Array, out_shape, *, align_corners: bool = False) -> jax.Array:
  """Sampling grid of an affine or projective transform, in 2-D or 3-D.

  Equals `torch.nn.functional.affine_grid(theta, size, align_corners)` for a
  `[N, 2, 3]` theta and `size` `(N, C, Ho, Wo)`, or a `[N, 3, 4]` theta and `size`
  `(N, C, Do, Ho, Wo)`, with any number of leading dims. A `[..., 3, 3]` or
  `[..., 4, 4]` theta is a projective transform (the grid is divided by its last row).

  Args:
    theta: `[..., 2, 3]` or `[..., 3, 3]` (2-D), `[..., 3, 4]` or `[..., 4, 4]` (3-D)
      floating array mapping output to input normalized coordinates.
    out_shape: `(Ho, Wo)`, or `(Do, Ho, Wo)` for a 3-D theta.
    align_corners: see the module docstring.

  Returns:
    float32 grid `[..., Ho, Wo, 2]` with last axis `(x, y)`, or `[..., Do, Ho, Wo, 3]`
    with last axis `(x, y, z)`.

  Raises:
    TypeError: `theta` is not an array, or not floating.
    ValueError: `theta` is not one of the four matrix shapes, or `out_shape` is not
      `(Ho, Wo)` (`(Do, Ho, Wo)` for a 3-D theta) of positive ints.

  Example:
    >>> import jax.numpy as jnp
    >>> affine_grid(jnp.eye(2, 3), (1, 2))[0, :, 0].tolist()  # x of the two pixel centres
    [-0.5, 0.5]
    >>> affine_grid(jnp.eye(2, 3), (1, 2), align_corners=True)[0, :, 0].tolist()
    [-1.0, 1.0]
    >>> affine_grid(jnp.eye(3, 4), (2, 1, 1))[:, 0, 0, 2].tolist()  # z of two slices
    [-0.5, 0.5]
  """
  dims = _validation.check_theta(theta)
  out_shape = _validation.check_size(out_shape, "out_shape", dims)
  return _affine_grid(theta, out_shape, bool(align_corners))


def _check_coords(coords, shape):
  sizes = _validation.check_size(shape, "shape", None)[::-1]
  coords = jnp.asarray(coords, jnp.float32)
  if coords.ndim < 1 or coords.shape[-1] != len(sizes):
    raise ValueError(f"coords must be [..., {len(sizes)}] for an image of shape "
                     f"{tuple(shape)}, got shape {tuple(coords.shape)}.")
  return coords, sizes


def normalized_to_pixel(coords: jax.Array, shape, *, align_corners: bool = False) -> jax.Array:
  """Converts normalized coordinates to pixel coordinates.

  Uses PyTorch's formula, `((c + 1) * n - 1) / 2` (or `(c + 1) / 2 * (n - 1)` with
  `align_corners=True`) along each axis of `n` pixels. The centre of pixel
  `(row, col)` is at `(x, y) = (col, row)`.

  Args:
    coords: `[..., 2]` `(x, y)` or `[..., 3]` `(x, y, z)` normalized coordinates.
    shape: `(H, W)` or `(D, H, W)` of the image, matching the coordinates' length.
    align_corners: see the module docstring; default False.

  Returns:
    float32 pixel coordinates of `coords`' shape.

  Raises:
    ValueError: `shape` is not 2 or 3 positive ints, or `coords`' last axis does not
      match it.

  Example:
    >>> import jax.numpy as jnp
    >>> corners = jnp.array([[-1.0, -1.0], [1.0, 1.0]])  # top left, bottom right
    >>> normalized_to_pixel(corners, (4, 8)).tolist()  # The corner pixels' outer edges.
    [[-0.5, -0.5], [7.5, 3.5]]
    >>> normalized_to_pixel(corners, (4, 8), align_corners=True).tolist()  # Their centres.
    [[0.0, 0.0], [7.0, 3.0]]
  """
  coords, sizes = _check_coords(coords, shape)
  return jnp.stack([unnormalize(coords[..., axis], n, align_corners)
                    for axis, n in enumerate(sizes)], axis=-1)


def pixel_to_normalized(coords: jax.Array, shape, *, align_corners: bool = False) -> jax.Array:
  """Converts pixel coordinates to normalized coordinates: `normalized_to_pixel`'s inverse.

  Args:
    coords: `[..., 2]` `(x, y)` or `[..., 3]` `(x, y, z)` pixel coordinates; the
      centre of pixel `(row, col)` is at `(x, y) = (col, row)`.
    shape: `(H, W)` or `(D, H, W)` of the image, matching the coordinates' length.
    align_corners: see the module docstring; default False.

  Returns:
    float32 normalized coordinates of `coords`' shape.

  Raises:
    ValueError: `shape` is not 2 or 3 positive ints, or `coords`' last axis does not
      match it.

  Example:
    >>> import jax.numpy as jnp
    >>> pixel_to_normalized(jnp.array([[-0.5, -0.5], [7.5, 3.5]]), (4, 8)).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
  """
  coords, sizes = _check_coords(coords, shape)
  centre = np.array([(n - 1) / 2 for n in sizes], np.float32)
  scale = np.array([units_per_pixel(n, align_corners) for n in sizes], np.float32)
  return (coords - centre) * scale


def unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  """One axis of normalized coordinates to pixels, with PyTorch's exact float formula."""
  if align_corners:
    return (coord + 1) / 2 * (size - 1)
  return ((coord + 1) * size - 1) / 2


def _pixel_from_normalized_matrix(shape, align_corners) -> np.ndarray:
  """3x3 float64 matrix taking homogeneous normalized (x, y, 1) to pixel coordinates."""
  height, width = shape
  return np.array([
      [pixels_per_unit(width, align_corners), 0.0, (width - 1) / 2],
      [0.0, pixels_per_unit(height, align_corners), (height - 1) / 2],
      [0.0, 0.0, 1.0],
  ])


def _normalize_rows(pixel_rows, shape, align_corners):
  """Pixel-valued rows `[..., 3, 3]` (x, y, w) to normalized ones, for an image of `shape`.

  Divides by the scale rather than multiplying by its rounded inverse, so that whole
  pixel offsets become the correctly rounded normalized value.
  """
  height, width = shape
  x_scale = pixels_per_unit(width, align_corners)
  y_scale = pixels_per_unit(height, align_corners)
  w_row = pixel_rows[..., 2, :]
  x_row = pixel_rows[..., 0, :] - np.float32((width - 1) / 2) * w_row
  y_row = pixel_rows[..., 1, :] - np.float32((height - 1) / 2) * w_row
  # A size-1 axis with align_corners has no extent: PyTorch maps it to 0.
  x_row = x_row / np.float32(x_scale) if x_scale else jnp.zeros_like(x_row)
  y_row = y_row / np.float32(y_scale) if y_scale else jnp.zeros_like(y_row)
  return jnp.stack([x_row, y_row, w_row], axis=-2)


def _check_matrix(matrix, name):
  matrix = jnp.asarray(matrix)
  if matrix.ndim < 2 or matrix.shape[-1] != 3 or matrix.shape[-2] not in (2, 3):
    raise ValueError(f"{name} must have shape [..., 2, 3] or [..., 3, 3], got {tuple(matrix.shape)}.")
  return matrix.astype(jnp.float32)


def _to_homogeneous(matrix):
  """An affine `[..., d, d + 1]` matrix as `[..., d + 1, d + 1]`; square ones as they are."""
  if matrix.shape[-2] == matrix.shape[-1]:
    return matrix
  last_row = jnp.zeros(matrix.shape[:-2] + (1, matrix.shape[-1]), matrix.dtype).at[..., -1].set(1)
  return jnp.concatenate([matrix, last_row], axis=-2)


def theta_from_pixel_matrix(matrix: jax.Array, in_shape, out_shape=None, *,
                            align_corners: bool = False, inverse_map: bool = False) -> jax.Array:
  """theta for `sample` from a pixel-space matrix, as OpenCV's `warpAffine` or kornia take.

  Args:
    matrix: `[..., 2, 3]` affine or `[..., 3, 3]` homography in pixel coordinates.
      By default it maps *input* pixels to *output* pixels (OpenCV's and kornia's
      convention); with `inverse_map=True` it maps output pixels to input pixels
      (OpenCV's `WARP_INVERSE_MAP`).
    in_shape: `(H, W)` of the input image.
    out_shape: `(Ho, Wo)` of the output; defaults to `in_shape`.
    align_corners: the value you will pass to `sample`.
    inverse_map: see `matrix`.

  Returns:
    float32 theta of the same shape as `matrix`.

  Raises:
    ValueError: `matrix` is not `[..., 2, 3]` or `[..., 3, 3]`, or a shape is not
      `(H, W)` of positive ints.

  Example:
    >>> import jax.numpy as jnp
    >>> import stnjax
    >>> shift = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # Moves content 2 px right.
    >>> theta = theta_from_pixel_matrix(shift, (1, 8))
    >>> theta.tolist()
    [[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]
    >>> image = jnp.arange(8.0).reshape(1, 8, 1)
    >>> stnjax.sample(theta, image)[..., 0].tolist()
    [[0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
  """
  in_shape = _validation.check_size(in_shape, "in_shape")
  out_shape = in_shape if out_shape is None else _validation.check_size(out_shape, "out_shape")
  matrix = _check_matrix(matrix, "matrix")
  pull = _to_homogeneous(matrix)
  if not inverse_map:
    pull = jnp.linalg.inv(pull)
  from_normalized = jnp.asarray(_pixel_from_normalized_matrix(out_shape, align_corners), jnp.float32)
  theta = _normalize_rows(pull @ from_normalized, in_shape, align_corners)
  return theta[..., :matrix.shape[-2], :]


def pixel_matrix_from_theta(theta: jax.Array, in_shape, out_shape=None, *,
                            align_corners: bool = False, inverse_map: bool = False) -> jax.Array:
  """The inverse of `theta_from_pixel_matrix`: theta as a pixel-space matrix.

  Args:
    theta: `[..., 2, 3]` affine or `[..., 3, 3]` projective 2-D theta, floating.
    in_shape: `(H, W)` of the input image.
    out_shape: `(Ho, Wo)` of the output; defaults to `in_shape`.
    align_corners: the value passed to `sample`.
    inverse_map: return the matrix that maps output pixels to input pixels (OpenCV's
      `WARP_INVERSE_MAP`) instead of input pixels to output pixels.

  Returns:
    float32 pixel matrix of theta's shape, mapping input pixels to output pixels (or,
    with `inverse_map=True`, output pixels to input pixels).

  Raises:
    TypeError: `theta` is not an array, or not floating.
    ValueError: `theta` is not a 2-D theta, or a shape is not `(H, W)` of positive
      ints.

  Example:
    >>> import jax.numpy as jnp
    >>> theta = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])  # Reads 0.5 units right.
    >>> pixel_matrix_from_theta(theta, (4, 8)).tolist()  # Content moves 2 pixels left.
    [[1.0, 0.0, -2.0], [0.0, 1.0, 0.0]]
  """
  in_shape = _validation.check_size(in_shape, "in_shape")
  out_shape = in_shape if out_shape is None else _validation.check_size(out_shape, "out_shape")
  if _validation.check_theta(theta) != 2:
    raise ValueError(f"pixel_matrix_from_theta takes a 2-D theta [..., 2, 3] or [..., 3, 3], "
                     f"got shape {tuple(theta.shape)}.")
  theta = theta.astype(jnp.float32)
  from_normalized = jnp.asarray(_pixel_from_normalized_matrix(in_shape, align_corners), jnp.float32)
  theta_pixels = from_normalized @ _to_homogeneous(theta)
  # Right-multiply by the output's pixel -> normalized map, column by column.
  out_height, out_width = out_shape
  x_column = theta_pixels[..., :, 0] * np.float32(units_per_pixel(out_width, align_corners))
  y_column = theta_pixels[..., :, 1] * np.float32(units_per_pixel(out_height, align_corners))
  w_column = (theta_pixels[..., :, 2] - np.float32((out_width - 1) / 2) * x_column
              - np.float32((out_height - 1) / 2) * y_column)
  pull = jnp.stack([x_column, y_column, w_column], axis=-1)
  matrix = pull if inverse_map else jnp.linalg.inv(pull)
  return matrix[..., :theta.shape[-2], :]
