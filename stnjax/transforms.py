"""Transform families that a localization net can regress.

Each family is a `Transform`: plain data plus pure functions. A localization net
outputs an unconstrained vector `params [..., num_params]`; `identity_params` is the
vector whose transform does nothing (initialize the net's last bias to it);
`theta(params)` gives the matrix for `stnjax.sample` (None for `tps`), and
`grid(params, out_shape)` the normalized sampling grid `[..., Ho, Wo, 2]`.
`warp(transform, params, image)` samples an image with any of them. The families
whose names end in `_3d` transform volumes `[..., D, H, W, C]` (theta `[..., 3, 4]`).

>>> import jax.numpy as jnp
>>> family = get("scale_translation")
>>> family.num_params, family.identity_params
(3, (1.0, 0.0, 0.0))
>>> family.theta(jnp.array([0.5, 0.25, 0.0])).tolist()
[[0.5, 0.0, 0.25], [0.0, 0.5, 0.0]]
"""

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from stnjax import _validation
from stnjax import grid as grid_lib
from stnjax import sampling

__all__ = [
    "Transform",
    "affine",
    "affine_3d",
    "get",
    "names",
    "projective",
    "rigid_3d",
    "rotation_from_quaternion",
    "scale_translation",
    "scale_translation_3d",
    "similarity",
    "similarity_3d",
    "tps",
    "translation",
    "translation_3d",
    "warp",
]


class Transform(NamedTuple):
  """A transform family: its parameter count, identity and pure functions.

  Get one with `get` (by name) or a factory (`affine`, `tps`, ...); warp with it with
  `warp`. A Transform is a hashable NamedTuple, so it can be a static argument of
  `jax.jit` and a field of a Flax module. `theta`, `grid` and `source_pixels` raise a
  `TypeError` for params that are not a floating array and a `ValueError` for params
  whose last axis is not `num_params`.

  Attributes:
    name: the family's name, as `get` takes it.
    num_params: length of the parameter vector.
    identity_params: the `num_params` floats giving the identity transform (a tuple,
      so that a Transform is hashable and can be a static argument of `jax.jit`).
    theta: `params [..., num_params] -> theta [..., 2 or 3, 3]` for matrix families,
      None for `tps`.
    grid: `(params, out_shape, *, align_corners=False) -> [..., Ho, Wo, 2]`.
    source_pixels: `(params, in_shape, out_shape, align_corners) -> (x, y[, z])`, the
      input pixel read by each output pixel, each `[..., *out_shape]` (used by `warp`).
    dims: the number of spatial dims it transforms: 2 for images, 3 for volumes (whose
      theta is `[..., 3, 4]` and grid `[..., Do, Ho, Wo, 3]`).

  Example:
    >>> import jax.numpy as jnp
    >>> family = get("translation")
    >>> family.name, family.num_params, family.identity_params, family.dims
    ('translation', 2, (0.0, 0.0), 2)
    >>> family.theta(jnp.array([0.5, -0.25])).tolist()
    [[1.0, 0.0, 0.5], [0.0, 1.0, -0.25]]
    >>> family.grid(jnp.zeros((3, 2)), (4, 5)).shape  # A batch of 3: [3, Ho, Wo, 2].
    (3, 4, 5, 2)
  """
  name: str
  num_params: int
  identity_params: tuple[float, ...]
  theta: Optional[Callable[[jax.Array], jax.Array]]
  grid: Callable[..., jax.Array]
  source_pixels: Callable[..., tuple[jax.Array, ...]]
  dims: int = 2


def _check_params(params, transform_name, num_params):
  if not hasattr(params, "shape") or not hasattr(params, "dtype"):
    raise TypeError(f"{transform_name} params must be an array [..., {num_params}], "
                    f"got {type(params).__name__}.")
  if params.ndim < 1 or params.shape[-1] != num_params:
    raise ValueError(f"{transform_name} params must have shape [..., {num_params}], "
                     f"got {tuple(params.shape)}.")
  if not jnp.issubdtype(jnp.dtype(params.dtype), jnp.floating):
    raise TypeError(f"{transform_name} params must be floating, got {jnp.dtype(params.dtype)}.")


def _matrix_family(name, identity_params, to_theta, dims=2):
  """A family whose params map to a `[..., 2 or 3, 3]` (in 3-D `[..., 3, 4]`) matrix."""
  num_params = len(identity_params)

  def theta(params):
    _check_params(params, name, num_params)
    return to_theta(params)

  def grid(params, out_shape, *, align_corners=False):
    return grid_lib.affine_grid(theta(params), out_shape, align_corners=align_corners)

  def source_pixels(params, in_shape, out_shape, align_corners):
    return grid_lib.source_pixels(theta(params), in_shape, out_shape, align_corners)

  return Transform(name, num_params, tuple(float(v) for v in identity_params), theta, grid,
                   source_pixels, dims)


def _rows(*rows):
  """Stacks rows of `[...]` entries into `[..., len(rows), len(row)]`."""
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


@functools.lru_cache(maxsize=None)
def affine() -> Transform:
  """General affine: params are theta's 6 entries, row-major.

  Returns:
    The "affine" `Transform`, with 6 params, identity `(1, 0, 0, 0, 1, 0)`, theta
    `[..., 2, 3]` in the params' dtype.
  """
  return _matrix_family("affine", [1, 0, 0, 0, 1, 0],
                        lambda p: p.reshape(p.shape[:-1] + (2, 3)))


@functools.lru_cache(maxsize=None)
def translation() -> Transform:
  """Translation: params `(tx, ty)` in normalized units.

  Returns:
    The "translation" `Transform`, with 2 params, identity `(0, 0)`, theta
    `[[1, 0, tx], [0, 1, ty]]`.
  """
  def to_theta(p):
    one, zero = jnp.ones_like(p[..., 0]), jnp.zeros_like(p[..., 0])
    return _rows((one, zero, p[..., 0]), (zero, one, p[..., 1]))
  return _matrix_family("translation", [0, 0], to_theta)


@functools.lru_cache(maxsize=None)
def scale_translation() -> Transform:
  """The paper's attention crop: params `(s, tx, ty)`, theta `[[s, 0, tx], [0, s, ty]]`.

  Returns:
    The "scale_translation" `Transform`, with 3 params, identity `(1, 0, 0)`. A scale
    `s < 1` zooms in on a glimpse of the input.

  Example:
    >>> import jax.numpy as jnp
    >>> family = scale_translation()
    >>> image = jnp.arange(8.0).reshape(1, 8, 1)
    >>> warp(family, jnp.array([0.5, 0.0, 0.0]), image, (1, 4))[..., 0].tolist()
    [[2.0, 3.0, 4.0, 5.0]]
  """
  def to_theta(p):
    zero = jnp.zeros_like(p[..., 0])
    return _rows((p[..., 0], zero, p[..., 1]), (zero, p[..., 0], p[..., 2]))
  return _matrix_family("scale_translation", [1, 0, 0], to_theta)


@functools.lru_cache(maxsize=None)
def similarity() -> Transform:
  """Rotation, isotropic scale and translation: params `(angle, log_scale, tx, ty)`.

  angle in radians; the scale is `exp(log_scale)`, so every vector is valid. The
  rotation is in normalized coordinates, so on a non-square image it does not keep
  right angles (`stnjax.rotation_matrix` rotates in pixels).

  Returns:
    The "similarity" `Transform`, with 4 params, identity `(0, 0, 0, 0)`, theta
    `[[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]`.
  """
  def to_theta(p):
    scale = jnp.exp(p[..., 1])
    cos, sin = scale * jnp.cos(p[..., 0]), scale * jnp.sin(p[..., 0])
    return _rows((cos, -sin, p[..., 2]), (sin, cos, p[..., 3]))
  return _matrix_family("similarity", [0, 0, 0, 0], to_theta)


@functools.lru_cache(maxsize=None)
def projective() -> Transform:
  """Homography: params are the first 8 entries of a `[3, 3]` theta whose last is 1.

  Returns:
    The "projective" `Transform`, with 8 params, identity `(1, 0, 0, 0, 1, 0, 0, 0)`, theta
    `[..., 3, 3]` (the perspective divide follows).
  """
  def to_theta(p):
    full = jnp.concatenate([p, jnp.ones_like(p[..., :1])], axis=-1)
    return full.reshape(p.shape[:-1] + (3, 3))
  return _matrix_family("projective", [1, 0, 0, 0, 1, 0, 0, 0], to_theta)


@functools.lru_cache(maxsize=None)
def affine_3d() -> Transform:
  """General 3-D affine: params are theta's 12 entries (`[3, 4]`), row-major.

  Returns:
    The "affine_3d" `Transform` for volumes, with 12 params, identity `eye(3, 4)`
    flattened, theta `[..., 3, 4]`.
  """
  return _matrix_family("affine_3d", [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
                        lambda p: p.reshape(p.shape[:-1] + (3, 4)), dims=3)


def _volume_theta(linear, shift):
  """theta `[..., 3, 4]` from a `[..., 3, 3]` linear part and a `[..., 3]` shift."""
  return jnp.concatenate([linear, shift[..., None]], axis=-1)


@functools.lru_cache(maxsize=None)
def translation_3d() -> Transform:
  """3-D translation: params `(tx, ty, tz)` in normalized units.

  Returns:
    The "translation_3d" `Transform` for volumes, with 3 params, identity `(0, 0, 0)`,
    theta `[..., 3, 4]`.
  """
  def to_theta(p):
    return _volume_theta(jnp.broadcast_to(jnp.eye(3, dtype=p.dtype), p.shape[:-1] + (3, 3)), p)
  return _matrix_family("translation_3d", [0, 0, 0], to_theta, dims=3)


@functools.lru_cache(maxsize=None)
def scale_translation_3d() -> Transform:
  """3-D attention crop: params `(s, tx, ty, tz)`, an isotropic scale and a translation.

  Returns:
    The "scale_translation_3d" `Transform` for volumes, with 4 params, identity
    `(1, 0, 0, 0)`, theta `[[s, 0, 0, tx], [0, s, 0, ty], [0, 0, s, tz]]`.
  """
  def to_theta(p):
    return _volume_theta(p[..., 0, None, None] * jnp.eye(3, dtype=p.dtype), p[..., 1:])
  return _matrix_family("scale_translation_3d", [1, 0, 0, 0], to_theta, dims=3)


def rotation_from_quaternion(quaternion: jax.Array) -> jax.Array:
  """The rotation matrix `[..., 3, 3]` of a quaternion `[..., 4]` `(w, x, y, z)`.

  The quaternion need not be normalized (it is divided by its norm), so every nonzero
  vector is valid and no rotation is singular: unlike Euler angles, there is no
  gimbal lock. `(1, 0, 0, 0)` is the identity.

  Args:
    quaternion: `[..., 4]` floating `(w, x, y, z)`, nonzero (a zero quaternion gives
      non-finite entries).

  Returns:
    `[..., 3, 3]` rotation matrices in the quaternion's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> rotation_from_quaternion(jnp.array([1.0, 0.0, 0.0, 1.0])).round(6).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
  """
  w, x, y, z = jnp.moveaxis(quaternion, -1, 0)
  # The squared norm divides every entry: the unit quaternion's matrix, without a sqrt.
  scale = 2 / (w * w + x * x + y * y + z * z)
  return _rows(
      (1 - scale * (y * y + z * z), scale * (x * y - w * z), scale * (x * z + w * y)),
      (scale * (x * y + w * z), 1 - scale * (x * x + z * z), scale * (y * z - w * x)),
      (scale * (x * z - w * y), scale * (y * z + w * x), 1 - scale * (x * x + y * y)))


@functools.lru_cache(maxsize=None)
def rigid_3d() -> Transform:
  """3-D rotation and translation: params `(qw, qx, qy, qz, tx, ty, tz)`.

  The rotation is the quaternion's (see `rotation_from_quaternion`: any nonzero vector,
  no gimbal lock); the translation is in normalized units.

  Returns:
    The "rigid_3d" `Transform` for volumes, with 7 params, identity
    `(1, 0, 0, 0, 0, 0, 0)`, theta `[..., 3, 4]`.
  """
  def to_theta(p):
    return _volume_theta(rotation_from_quaternion(p[..., :4]), p[..., 4:])
  return _matrix_family("rigid_3d", [1, 0, 0, 0, 0, 0, 0], to_theta, dims=3)


@functools.lru_cache(maxsize=None)
def similarity_3d() -> Transform:
  """3-D rotation, isotropic scale and translation: 8 params.

  Params are `(qw, qx, qy, qz, log_scale, tx, ty, tz)`: the rotation as in `rigid_3d`,
  the scale `exp(log_scale)`, the translation in normalized units.

  Returns:
    The "similarity_3d" `Transform` for volumes, with 8 params, identity
    `(1, 0, 0, 0, 0, 0, 0, 0)`, theta `[..., 3, 4]`.
  """
  def to_theta(p):
    scale = jnp.exp(p[..., 4])[..., None, None]
    return _volume_theta(scale * rotation_from_quaternion(p[..., :4]), p[..., 5:])
  return _matrix_family("similarity_3d", [1, 0, 0, 0, 0, 0, 0, 0], to_theta, dims=3)


def _control_points(lattice_shape):
  """Control points `[K, 2]` (x, y) on a rows x cols lattice over [-1, 1]^2, row-major."""
  rows, cols = lattice_shape
  y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
  return np.stack([x.ravel(), y.ravel()], axis=-1)


def _radial_basis(points, centres):
  """U(r) = r^2 log r^2 between `[N, 2]` points and `[K, 2]` centres: `[N, K]`."""
  squared = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(squared > 0, squared * np.log(squared), 0.0)


@functools.lru_cache(maxsize=64)
def _tps_interpolation(lattice_shape, out_shape, align_corners):
  """Fixed linear map from control-point offsets to grid offsets: float64 `[Ho * Wo, K]`.

  A thin-plate spline through the control points is linear in their source positions;
  it reproduces affine maps, so zero offsets give back the regular grid.
  """
  centres = _control_points(lattice_shape)
  num_points = len(centres)
  system = np.zeros((num_points + 3, num_points + 3))
  system[:num_points, :num_points] = _radial_basis(centres, centres)
  system[:num_points, num_points] = 1
  system[:num_points, num_points + 1:] = centres
  system[num_points, :num_points] = 1
  system[num_points + 1:, :num_points] = centres.T
  out_height, out_width = out_shape
  out_x = grid_lib.centred_pixels(out_width) * grid_lib.units_per_pixel(out_width, align_corners)
  out_y = grid_lib.centred_pixels(out_height) * grid_lib.units_per_pixel(out_height, align_corners)
  y, x = np.meshgrid(out_y, out_x, indexing="ij")
  points = np.stack([x.ravel(), y.ravel()], axis=-1)
  features = np.concatenate(
      [_radial_basis(points, centres), np.ones((len(points), 1)), points], axis=-1)
  # Only the first K columns of the inverse meet non-zero right-hand sides.
  return features @ np.linalg.inv(system)[:, :num_points]


def tps(lattice_shape=(4, 4)) -> Transform:
  """Thin-plate spline with control points on a regular lattice over the output.

  The paper's TPS uses a 4x4 lattice (16 points). Params are the `(dx, dy)` offsets of
  the control points' source positions, `[..., 2 * K]` as K pairs in row-major order;
  zero offsets are the identity. `theta` is None: use `grid` or `warp`. Its grid is
  computed in float32 whatever the params' dtype.

  Args:
    lattice_shape: `(rows, cols)` of the control-point lattice, each at least 2;
      K = rows * cols.

  Returns:
    The "tps" `Transform` with `2 * K` params. Equal lattices give the same (cached)
    object.

  Raises:
    ValueError: `lattice_shape` is not two ints, or has fewer than 2 rows or columns.

  Example:
    >>> import jax.numpy as jnp
    >>> tps().num_params, tps((2, 3)).num_params
    (32, 12)
    >>> tps().grid(jnp.zeros(32), (2, 2)).tolist()  # Zero offsets: the identity grid.
    [[[-0.5, -0.5], [0.5, -0.5]], [[-0.5, 0.5], [0.5, 0.5]]]
  """
  try:
    rows, cols = (int(n) for n in lattice_shape)
  except (TypeError, ValueError):
    raise ValueError(f"lattice_shape must be (rows, cols), got {lattice_shape!r}.") from None
  if rows < 2 or cols < 2:
    raise ValueError(f"lattice_shape needs at least 2 x 2 control points, got {lattice_shape!r}.")
  return _tps((rows, cols))


@functools.lru_cache(maxsize=None)
def _tps(lattice_shape):
  """The tps family for a checked (rows, cols); cached so equal lattices share one object."""
  rows, cols = lattice_shape
  num_params = 2 * rows * cols

  def offsets(params, out_shape, align_corners, x_scale, y_scale):
    _check_params(params, "tps", num_params)
    out_shape = _validation.check_size(out_shape, "out_shape")
    interpolation = _tps_interpolation(lattice_shape, out_shape, bool(align_corners))
    pairs = params.astype(jnp.float32).reshape(params.shape[:-1] + (rows * cols, 2))
    dx = pairs[..., 0] @ jnp.asarray((interpolation * x_scale).T, jnp.float32)
    dy = pairs[..., 1] @ jnp.asarray((interpolation * y_scale).T, jnp.float32)
    return dx.reshape(dx.shape[:-1] + out_shape), dy.reshape(dy.shape[:-1] + out_shape)

  def grid(params, out_shape, *, align_corners=False):
    dx, dy = offsets(params, out_shape, align_corners, 1.0, 1.0)
    base = grid_lib.affine_grid(jnp.eye(2, 3), out_shape, align_corners=align_corners)
    return base + jnp.stack([dx, dy], axis=-1)

  def source_pixels(params, in_shape, out_shape, align_corners):
    (in_height, in_width), (out_height, out_width) = in_shape, out_shape
    x_scale = grid_lib.pixels_per_unit(in_width, align_corners)
    y_scale = grid_lib.pixels_per_unit(in_height, align_corners)
    dx, dy = offsets(params, out_shape, align_corners, x_scale, y_scale)
    # Base positions in pixels, computed in float64: exact when in and out sizes agree.
    base_x = (in_width - 1) / 2 + x_scale * grid_lib.centred_pixels(out_width) * (
        grid_lib.units_per_pixel(out_width, align_corners))
    base_y = (in_height - 1) / 2 + y_scale * grid_lib.centred_pixels(out_height) * (
        grid_lib.units_per_pixel(out_height, align_corners))
    return (jnp.asarray(base_x, jnp.float32) + dx,
            jnp.asarray(base_y, jnp.float32)[:, None] + dy)

  return Transform("tps", num_params, (0.0,) * num_params, None, grid, source_pixels)


_FAMILIES = {
    "affine": affine,
    "translation": translation,
    "scale_translation": scale_translation,
    "similarity": similarity,
    "projective": projective,
    "tps": tps,
    "affine_3d": affine_3d,
    "translation_3d": translation_3d,
    "scale_translation_3d": scale_translation_3d,
    "rigid_3d": rigid_3d,
    "similarity_3d": similarity_3d,
}


def names(dims=None) -> tuple[str, ...]:
  """The names `get` accepts; with `dims` (2 or 3), those of the 2-D or 3-D families.

  Args:
    dims: None (every family), 2 (image families) or 3 (volume families).

  Returns:
    A tuple of family names.

  Example:
    >>> names(dims=3)
    ('affine_3d', 'translation_3d', 'scale_translation_3d', 'rigid_3d', 'similarity_3d')
  """
  if dims is None:
    return tuple(_FAMILIES)
  return tuple(name for name in _FAMILIES if name.endswith("_3d") == (dims == 3))


def get(name: str, **options) -> Transform:
  """The family called `name`; options go to its factory (e.g. `lattice_shape` for tps).

  Args:
    name: one of `names()`, e.g. "affine", "tps" or "rigid_3d".
    **options: keyword arguments of the family's factory; only `tps` takes one,
      `lattice_shape`.

  Returns:
    The `Transform`.

  Raises:
    ValueError: `name` is not a family's (the message lists them), or an option is
      invalid.
    TypeError: an option the factory does not take.

  Example:
    >>> get("affine").num_params
    6
    >>> get("tps", lattice_shape=(3, 3)).num_params
    18
  """
  if name not in _FAMILIES:
    raise ValueError(f"Unknown transform family {name!r}; expected one of {names()}.")
  return _FAMILIES[name](**options)


@functools.lru_cache(maxsize=None)
def _locator(transform: Transform) -> sampling.Locator:
  """The pipeline's view of a family: its params locate the pixels each output reads."""
  def check(params):
    _check_params(params, transform.name, transform.num_params)
    return transform.dims

  def source_jacobian(params, in_shape, out_shape, align_corners):
    return grid_lib.source_jacobian(transform.theta(params), in_shape, out_shape,
                                    align_corners)

  return sampling.Locator(
      name=f"{transform.name} params", check=check,
      layout=lambda dims: str(transform.num_params), rank=lambda dims: 1,
      source_pixels=transform.source_pixels,
      source_jacobian=None if transform.theta is None else source_jacobian)


def warp(transform: Transform, params: jax.Array, image: jax.Array, out_shape=None, *,
         method: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False,
         fill_value=None, implementation: str = "xla", antialias: bool = False) -> jax.Array:
  """Samples `image` with the transform given by `params`.

  The same checked, jitted pipeline as `stnjax.sample` and `stnjax.grid_sample`.

  Args:
    transform: a `Transform`, e.g. `get("tps")`.
    params: `[*batch, ..., num_params]`, floating; starts with the image's batch dims,
      extra dims are glimpses, as theta in `stnjax.sample`.
    image: `[*batch, H, W, C]`, or `[*batch, D, H, W, C]` for a 3-D family; float or
      integer.
    out_shape: `(Ho, Wo)` (or `(Do, Ho, Wo)`); defaults to the image's.
    method, padding_mode, align_corners, fill_value: as in `stnjax.sample`.
    implementation, antialias: as in `stnjax.sample`.

  Returns:
    `[*batch, ..., *out_shape, C]` in the image's dtype (float32 for integer images);
    identity params return the image exactly.

  Raises:
    TypeError: `transform` is not a `Transform`, `params` is not a floating array, or
      as in `stnjax.sample`.
    ValueError: `params`' last axis is not `transform.num_params`, or as in
      `stnjax.sample`.

  Example:
    >>> import jax.numpy as jnp
    >>> image = jnp.arange(8.0).reshape(1, 8, 1)
    >>> warp(get("translation"), jnp.array([0.25, 0.0]), image)[..., 0].tolist()
    [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0]]
  """
  if not isinstance(transform, Transform):
    raise TypeError(f"transform must be a stnjax.transforms.Transform (e.g. "
                    f"transforms.get('affine')), got {type(transform).__name__}.")
  return sampling.warp_with(_locator(transform), params, image, out_shape, method=method,
                            padding_mode=padding_mode, align_corners=align_corners,
                            implementation=implementation, fill_value=fill_value,
                            antialias=antialias)
