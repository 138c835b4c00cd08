"""Transform constructors: rotations, homographies, inverses, compositions and box crops.

The helpers that OpenCV and kornia provide and that users otherwise write by hand.

Coordinates follow `stnjax.grid`:
  * Pixel coordinates put the centre of pixel `(row, col)` at `(x, y) = (col, row)`,
    as OpenCV does, so an image of shape `(H, W)` spans `-0.5 .. W - 0.5` in x and its
    centre is `((W - 1) / 2, (H - 1) / 2)`.
  * A *pixel matrix* (`rotation_matrix`, `perspective_matrix`) maps input pixels to
    output pixels, as OpenCV's `warpAffine` and `warpPerspective` take it; turn it
    into a theta for `stnjax.sample` with `stnjax.theta_from_pixel_matrix`.
  * theta maps output normalized coordinates to input normalized coordinates.

Every function takes any leading batch dims, returns float32, and is made of plain
`jax.numpy` operations, so `jit`, `vmap` and every order of differentiation apply.
Shapes are checked when traced; values are not (a singular matrix or a degenerate
quad gives non-finite entries, not an error).
"""

import functools

import jax
import jax.numpy as jnp

from stnjax import _validation
from stnjax import grid as grid_lib

__all__ = [
    "compose_theta",
    "invert_theta",
    "perspective_matrix",
    "rotation_matrix",
    "theta_from_boxes",
]


def _as_float32(value, name: str, layout: str) -> jax.Array:
  """`value` as a float32 array; a TypeError names the expected layout and what came."""
  try:
    array = jnp.asarray(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real array {layout}, got {type(value).__name__}.") from None
  dtype = jnp.dtype(array.dtype)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{name} must have a float or integer dtype, got {dtype}.")
  return array.astype(jnp.float32)


def _check_trailing(array: jax.Array, name: str, trailing: tuple[int, ...], meaning: str):
  if array.ndim < len(trailing) or array.shape[array.ndim - len(trailing):] != trailing:
    layout = ", ".join(["..."] + [str(d) for d in trailing])
    raise ValueError(
        f"{name} must have shape [{layout}] {meaning}, got shape {tuple(array.shape)}.")


def _broadcast_batch(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
  """The broadcast of several batch shapes; a ValueError lists them all."""
  try:
    return jnp.broadcast_shapes(*shapes.values())
  except ValueError:
    listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    raise ValueError(f"The batch dims must broadcast together, got {listed}.") from None


def _cos_sin_degrees(angle: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin of an angle in degrees, exact at multiples of 90.

  Reduces to a quarter turn plus a remainder in [-45, 45] first, so that rotations by
  90, 180 or 270 degrees are exact permutations and large angles lose no precision.
  """
  quarters = jnp.round(angle / 90)
  remainder = jnp.deg2rad(angle - 90 * quarters)  # Exact subtraction; round has zero gradient.
  cos, sin = jnp.cos(remainder), jnp.sin(remainder)
  quarter = jnp.mod(quarters, 4).astype(jnp.int32)
  is_quarter = [quarter == k for k in range(4)]
  # `0 - x` rather than `-x` here and below: exact zeros stay +0, not -0.
  return (jnp.select(is_quarter, [cos, 0 - sin, 0 - cos, sin]),
          jnp.select(is_quarter, [sin, cos, 0 - sin, 0 - cos]))


def rotation_matrix(centre: jax.Array, angle, scale=1.0) -> jax.Array:
  """Pixel matrix of a rotation and scaling about a point: OpenCV's `getRotationMatrix2D`.

  Equals `cv2.getRotationMatrix2D(centre, angle, scale)`: positive angles turn the
  image counter-clockwise as seen on screen (y down). The matrix maps input pixels to
  output pixels; `stnjax.theta_from_pixel_matrix(matrix, (H, W))` gives the theta that
  `stnjax.sample` needs. Rotating in pixels keeps right angles on non-square images,
  which a rotation of theta itself (in normalized coordinates) does not.

  Args:
    centre: `[..., 2]` `(x, y)` in pixels; the centre of an `(H, W)` image is
      `((W - 1) / 2, (H - 1) / 2)`, not `(W / 2, H / 2)`.
    angle: degrees, a float or an array broadcastable with `centre[..., 0]`.
      Multiples of 90 give exact matrices.
    scale: isotropic scale factor, a float or an array broadcastable likewise.

  Returns:
    float32 `[..., 2, 3]`, the leading dims broadcast from the three arguments.

  Raises:
    TypeError: an argument is not a float or integer number or array.
    ValueError: `centre` is not `[..., 2]`, or the batch dims do not broadcast.

  Example:
    >>> rotation_matrix(jnp.array([2.0, 1.0]), 90.0).tolist()
    [[0.0, 1.0, 1.0], [-1.0, 0.0, 3.0]]
  """
  centre = _as_float32(centre, "centre", "[..., 2]")
  angle = _as_float32(angle, "angle", "(degrees)")
  scale = _as_float32(scale, "scale", "(a factor)")
  _check_trailing(centre, "centre", (2,), "(x, y) in pixels")
  _broadcast_batch({"centre": centre.shape[:-1], "angle": angle.shape, "scale": scale.shape})
  return _rotation_matrix(centre, angle, scale)


@jax.jit
def _rotation_matrix(centre, angle, scale):
  batch = jnp.broadcast_shapes(centre.shape[:-1], angle.shape, scale.shape)
  cos, sin = _cos_sin_degrees(angle)
  alpha = jnp.broadcast_to(scale * cos, batch)
  beta = jnp.broadcast_to(scale * sin, batch)
  centre_x = jnp.broadcast_to(centre[..., 0], batch)
  centre_y = jnp.broadcast_to(centre[..., 1], batch)
  # The centre is fixed: x' = alpha (x - cx) + beta (y - cy) + cx, and likewise y'.
  top = [alpha, beta, (1 - alpha) * centre_x - beta * centre_y]
  bottom = [0 - beta, alpha, beta * centre_x + (1 - alpha) * centre_y]
  return jnp.stack([jnp.stack(top, -1), jnp.stack(bottom, -1)], -2)


def perspective_matrix(source_points: jax.Array, target_points: jax.Array) -> jax.Array:
  """Homography taking four source points to four target points: `getPerspectiveTransform`.

  Equals `cv2.getPerspectiveTransform(source_points, target_points)`, normalized so
  that `H[2, 2] = 1`. Solves OpenCV's 8x8 linear system with `jnp.linalg.solve`, so
  the result is differentiable in every point. Three collinear points, or a
  homography that sends the pixel origin to infinity (where `H[2, 2]` would be 0),
  give non-finite or meaningless entries, as they do in OpenCV.

  Args:
    source_points: `[..., 4, 2]` `(x, y)` in pixels, e.g. the corners of an image.
    target_points: `[..., 4, 2]`, where each source point goes. The leading dims of
      the two broadcast.

  Returns:
    float32 `[..., 3, 3]` pixel matrix mapping source points to target points (pass
    it to `stnjax.theta_from_pixel_matrix` to warp an image with it).

  Raises:
    TypeError: the points are not a float or integer array.
    ValueError: the points are not `[..., 4, 2]`, or their batch dims do not
      broadcast.

  Example:
    >>> square = jnp.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> perspective_matrix(square, 2 * square + 1).round(5).tolist()
    [[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]]
  """
  source = _as_float32(source_points, "source_points", "[..., 4, 2]")
  target = _as_float32(target_points, "target_points", "[..., 4, 2]")
  _check_trailing(source, "source_points", (4, 2), "(four (x, y) points)")
  _check_trailing(target, "target_points", (4, 2), "(four (x, y) points)")
  _broadcast_batch({"source_points": source.shape[:-2], "target_points": target.shape[:-2]})
  return _perspective_matrix(source, target)


@jax.jit
def _perspective_matrix(source, target):
  batch = jnp.broadcast_shapes(source.shape[:-2], target.shape[:-2])
  source = jnp.broadcast_to(source, batch + (4, 2))
  target = jnp.broadcast_to(target, batch + (4, 2))

  # Each correspondence gives two rows of A h = b, with h the first 8 entries of H
  # (H[2, 2] = 1), as OpenCV sets it up. LU with partial pivoting copes with pixel-sized
  # entries: mapped points agree with a float64 solve to ~1e-7 of the image size.
  x, y = source[..., 0], source[..., 1]
  u, v = target[..., 0], target[..., 1]
  ones, zeros = jnp.ones_like(x), jnp.zeros_like(x)
  u_rows = jnp.stack([x, y, ones, zeros, zeros, zeros, -x * u, -y * u], axis=-1)
  v_rows = jnp.stack([zeros, zeros, zeros, x, y, ones, -x * v, -y * v], axis=-1)
  system = jnp.stack([u_rows, v_rows], axis=-2).reshape(batch + (8, 8))
  rhs = jnp.stack([u, v], axis=-1).reshape(batch + (8, 1))
  entries = jnp.linalg.solve(system, rhs)[..., 0]
  return jnp.concatenate([entries, ones[..., :1]], axis=-1).reshape(batch + (3, 3))


def invert_theta(theta: jax.Array) -> jax.Array:
  """The inverse transform: undoes a warp, or turns a push matrix into a pull matrix.

  Normalized coordinates do not depend on the image size, so
  `sample(invert_theta(theta), sample(theta, image))` gives back `image` wherever both
  warps stay inside the image (up to interpolation). Works on pixel matrices too:
  for a `[2, 3]` matrix it equals `cv2.invertAffineTransform`, except that a singular
  matrix gives non-finite entries where OpenCV returns zeros.

  Args:
    theta: `[..., 2, 3]` affine or `[..., 3, 3]` projective, float or integer; or a
      volume's `[..., 3, 4]` or `[..., 4, 4]`.

  Returns:
    float32 of theta's shape. A 2-D affine inverse is computed in closed form (exact
    for the identity); a projective one is the plain matrix inverse, not rescaled so that
    its `[2, 2]` entry is 1 (`sample` divides by the third row, so scale is immaterial).

  Raises:
    TypeError: `theta` is not a float or integer array.
    ValueError: `theta` is not one of the four matrix shapes.

  Example:
    >>> invert_theta(jnp.array([[2.0, 0.0, 1.0], [0.0, 0.5, 0.0]])).tolist()
    [[0.5, 0.0, -0.5], [0.0, 2.0, 0.0]]
  """
  theta = _as_float32(theta, "theta", "[..., 2, 3] or [..., 3, 3], [..., 3, 4] or [..., 4, 4]")
  _validation.check_theta(theta)
  return _invert_theta(theta)


@jax.jit
def _invert_theta(theta):
  if theta.shape[-2] == theta.shape[-1]:
    return jnp.linalg.inv(theta)
  if theta.shape[-1] == 4:  # 3-D affine: [A^-1, -A^-1 t].
    linear = jnp.linalg.inv(theta[..., :3])
    return jnp.concatenate([linear, -(linear @ theta[..., 3:])], axis=-1)
  (a, b, c), (d, e, f) = (jnp.moveaxis(row, -1, 0) for row in jnp.moveaxis(theta, -2, 0))
  determinant = a * e - b * d
  # Divide each entry by the determinant (rather than scale by its inverse) for exactness.
  top = [e, 0 - b, b * f - e * c]  # `0 - x`: exact zeros stay +0, not -0.
  bottom = [0 - d, a, d * c - a * f]
  return jnp.stack([jnp.stack(top, -1), jnp.stack(bottom, -1)], -2) / determinant[..., None, None]


def compose_theta(first: jax.Array, then: jax.Array) -> jax.Array:
  """Two warps as one: the theta that warps with `first`, then with `then`.

  `sample(compose_theta(first, then), image)` samples what
  `sample(then, sample(first, image))` does, interpolating the image once, not twice.

  theta pulls (output to input coordinates), so the composition is the matrix product
  `first @ then`: `then` takes the final output to `first`'s output, and `first` takes
  that to the image. Normalized coordinates do not depend on the image sizes, so the
  sizes of the two warps do not matter.

  Args:
    first: the warp applied to the image first, `[..., 2, 3]` affine or `[..., 3, 3]`
      projective; a volume's `[..., 3, 4]` or `[..., 4, 4]`. Float or integer.
    then: the warp applied to its result, of the same dimensionality; the batch dims of
      the two broadcast.

  Returns:
    float32 `[..., 2, 3]` (for volumes `[..., 3, 4]`) when both are affine, else the
    projective `[..., 3, 3]` (`[..., 4, 4]`). The identity on either side returns the
    other exactly.

  Raises:
    TypeError: `first` or `then` is not a float or integer array.
    ValueError: either is not one of the four matrix shapes, one transforms images and
      the other volumes, or their batch dims do not broadcast.

  Example:
    >>> compose_theta(jnp.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
    ...               jnp.array([[1.0, 0.0, 0.5], [0.0, 3.0, 0.0]])).tolist()
    [[2.0, 0.0, 2.0], [0.0, 3.0, 0.0]]
  """
  layout = _validation.THETA_SHAPES
  first = _as_float32(first, "first", layout)
  then = _as_float32(then, "then", layout)
  first_dims = _validation.check_theta(first, "first")
  then_dims = _validation.check_theta(then, "then")
  if first_dims != then_dims:
    raise ValueError(f"first and then must both transform images or both volumes, got "
                     f"shapes {tuple(first.shape)} ({first_dims}-D) and "
                     f"{tuple(then.shape)} ({then_dims}-D).")
  _broadcast_batch({"first": first.shape[:-2], "then": then.shape[:-2]})
  return _compose_theta(first, then)


@jax.jit
def _compose_theta(first, then):
  dims = first.shape[-1] - 1
  product = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  if first.shape[-2] == then.shape[-2] == dims:  # Affine: [A1 A2, A1 t2 + t1].
    linear = product(first[..., :dims], then)
    return jnp.concatenate([linear[..., :dims], linear[..., dims:] + first[..., dims:]], -1)
  return product(grid_lib._to_homogeneous(first), grid_lib._to_homogeneous(then))


def theta_from_boxes(boxes: jax.Array, in_shape, *, align_corners: bool = False) -> jax.Array:
  """theta that crops a box and resizes it to the output: RoIAlign-style glimpses.

  `stnjax.sample(theta, image, out_shape, align_corners=align_corners)` then reads the
  box at any `out_shape`; the theta does not depend on it, because normalized output
  coordinates span the output whatever its size.

  Boxes are in pixel-*edge* coordinates, as torchvision and COCO boxes are:
  `(0, 0, W, H)` is the whole image. (In stnjax's pixel-centre coordinates that box
  spans `-0.5 .. W - 0.5`; a box's edge coordinates are its centre coordinates plus
  0.5.)

  * `align_corners=False`: the output pixels' squares tile the box and each reads
    its square's centre, as torchvision's `roi_align(..., sampling_ratio=1,
    aligned=True)` does inside the image. The whole-image box gives the identity,
    and a box with integer edges sampled at its own size gives the exact crop.
  * `align_corners=True`: the centres of the corner output pixels land on the box's
    corners. TensorFlow's `crop_and_resize` does this with boxes in normalized
    pixel-centre coordinates: its box `(y1, x1, y2, x2)` is the edge box
    `(x1 * (W - 1) + 0.5, y1 * (H - 1) + 0.5, x2 * (W - 1) + 0.5, y2 * (H - 1) + 0.5)`.

  A box with `x_max < x_min` (or `y_max < y_min`) flips the crop left-right (up-down).

  Args:
    boxes: `[..., 4]` `(x_min, y_min, x_max, y_max)` in pixel-edge coordinates.
    in_shape: `(H, W)` of the image the boxes are in.
    align_corners: the value you will pass to `sample`.

  Returns:
    float32 `[..., 2, 3]` theta, one per box.

  Raises:
    TypeError: `boxes` is not a float or integer array.
    ValueError: `boxes` is not `[..., 4]`, or `in_shape` is not `(H, W)` of positive
      ints.

  Example:
    >>> theta_from_boxes(jnp.array([0.0, 0.0, 7.0, 5.0]), (5, 7)).tolist()  # The whole image.
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    >>> theta_from_boxes(jnp.array([0.0, 0.0, 4.0, 5.0]), (5, 8)).tolist()  # Its left half.
    [[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]]
  """
  boxes = _as_float32(boxes, "boxes", "[..., 4]")
  _check_trailing(boxes, "boxes", (4,), "(x_min, y_min, x_max, y_max)")
  in_shape = _validation.check_size(in_shape, "in_shape")
  return _theta_from_boxes(boxes, in_shape, bool(align_corners))


@functools.partial(jax.jit, static_argnames=("in_shape", "align_corners"))
def _theta_from_boxes(boxes, in_shape, align_corners):
  height, width = in_shape

  def axis_row(low, high, size):
    # An edge coordinate e is normalized (e - size / 2) / half_extent, which maps the
    # box to [low', high']; the output's [-1, 1] goes there linearly.
    half_extent = grid_lib.pixels_per_unit(size, align_corners)
    if half_extent == 0:  # A size-1 axis with align_corners: PyTorch reads pixel 0.
      return jnp.zeros_like(low), jnp.zeros_like(low)
    denominator = 2 * half_extent
    return (high - low) / denominator, (low + high - size) / denominator

  x_min, y_min, x_max, y_max = jnp.moveaxis(boxes, -1, 0)
  x_scale, x_shift = axis_row(x_min, x_max, width)
  y_scale, y_shift = axis_row(y_min, y_max, height)
  zeros = jnp.zeros_like(x_scale)
  return jnp.stack([jnp.stack([x_scale, zeros, x_shift], -1),
                    jnp.stack([zeros, y_scale, y_shift], -1)], -2)
