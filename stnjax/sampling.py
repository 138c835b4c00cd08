"""Differentiable image sampling: `grid_sample` and the fused `sample(theta, image)`.

Images are `[..., H, W, C]` and volumes `[..., D, H, W, C]`, channels last;
coordinates follow `stnjax.grid`. Each output pixel reads the input at a fractional
pixel position (pull sampling), with PyTorch's `grid_sample` semantics for every
method, padding mode and `align_corners`.

Coordinates are float32 whatever the image dtype. Float images keep their dtype
(values are accumulated in float32, then cast); integer images are read as float32
and give a float32 result with the same value range.

Out-of-range and non-finite coordinates never index outside the image. A position
beyond the image reads the padding: zero (`"zeros"`), the nearest edge pixel
(`"border"`), the mirrored position (`"reflection"`) or `fill_value` (`"constant"`).
A NaN coordinate, hence a NaN theta, reads zero in every padding mode but
`"constant"`, where it reads `fill_value` (so does an infinite one with
`"reflection"`), and the forward pass stays finite; gradients at such points are not
meaningful.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from stnjax import _antialias
from stnjax import _cpu_kernel
from stnjax import _interpolation
from stnjax import _validation
from stnjax import grid as grid_lib

__all__ = ["Locator", "grid_sample", "has_cpu_kernel", "sample", "warp_with"]


class Locator(NamedTuple):
  """How a warp finds, for each output pixel, the input pixel it reads.

  Attributes:
    name: what the coordinates argument is called in error messages ("theta", ...).
    check: raises a clear error for a bad coordinates argument; returns the number of
      spatial dims it locates in, 2 or 3.
    layout: `dims -> ` its trailing dims in words, e.g. "2 or 3, 3".
    rank: `dims -> ` the number of those trailing dims.
    source_pixels: `(coords, in_shape, out_shape, align_corners) -> (x, y[, z])`,
      float32 input pixel positions `[..., *out_shape]`.
    source_jacobian: `(coords, in_shape, out_shape, align_corners) ->` the derivatives
      of those positions along the output axes where they are the same at every output
      pixel (an affine map), as `grid.source_jacobian` gives them, else None; or None
      for a locator that never has them. Antialiasing takes the footprint from it.
  """
  name: str
  check: Callable[[jax.Array], int]
  layout: Callable[[int], str]
  rank: Callable[[int], int]
  source_pixels: Callable[..., tuple[jax.Array, ...]]
  source_jacobian: Optional[Callable[..., Optional[tuple]]] = None


def _grid_source_pixels(grid, in_shape, out_shape, align_corners):
  del out_shape  # The grid's own.
  grid = grid.astype(jnp.float32)
  return tuple(grid_lib.unnormalize(grid[..., axis], size, align_corners)
               for axis, size in enumerate(in_shape[::-1]))


THETA = Locator(
    name="theta", check=_validation.check_theta,
    layout=lambda dims: "2 or 3, 3" if dims == 2 else "3 or 4, 4", rank=lambda dims: 2,
    source_pixels=grid_lib.source_pixels, source_jacobian=grid_lib.source_jacobian)
GRID = Locator(
    name="grid", check=_validation.check_grid,
    layout=lambda dims: f"{'Do, ' if dims == 3 else ''}Ho, Wo, {dims}",
    rank=lambda dims: dims + 1, source_pixels=_grid_source_pixels)


def _read(image, coords, method, padding_mode, align_corners, implementation, fill_value,
          antialias=False, jacobian=None):
  """image `[*batch, *spatial, C]` read at pixel coordinates `(x, y[, z])` `[*batch, ...]`
  (antialiased with the coordinates' Jacobian, where one is given)."""
  dims = len(coords)
  batch_shape = image.shape[:-dims - 1]
  batch_size = math.prod(batch_shape)
  per_example = coords[0].shape[len(batch_shape):]
  images = image.reshape((batch_size,) + image.shape[-dims - 1:])
  coords = [c.reshape((batch_size,) + per_example) for c in coords]
  if antialias:
    if jacobian is not None:
      jacobian = jax.tree.map(
          lambda d: d.reshape((batch_size,) + d.shape[len(batch_shape):]), jacobian)
    out = _antialias.read(images, coords, padding_mode, align_corners, implementation,
                          jacobian)
  else:
    out = _interpolation.read(images, coords, method, padding_mode, align_corners,
                              implementation)
  if padding_mode == "constant" and fill_value is not None:
    sizes = image.shape[-2:-dims - 2:-1]
    out = out + fill_value * _interpolation.outside_weight(coords, sizes, method)[..., None]
  out = out.reshape(batch_shape + out.shape[1:])
  out_dtype = image.dtype if jnp.issubdtype(image.dtype, jnp.floating) else jnp.float32
  return out.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("locator", "out_shape", "method", "padding_mode",
                                             "align_corners", "implementation", "antialias"))
def _warp(locator, coords, image, fill_value, out_shape, method, padding_mode, align_corners,
          implementation, antialias):
  dims = locator.check(coords)
  _validation.check_image(image, dims=dims)
  _validation.check_options_for(dims, method, implementation)
  if antialias and dims == 3:
    raise ValueError("antialias=True samples 2-D images only; volumes take antialias=False.")
  batch_rank = image.ndim - dims - 1
  layout = locator.layout(dims)
  if coords.ndim < batch_rank + locator.rank(dims):
    raise ValueError(
        f"{locator.name} must have the image's batch dims then [..., {layout}]: "
        f"image shape {tuple(image.shape)} needs {locator.name} of rank >= "
        f"{batch_rank + locator.rank(dims)}, got shape {tuple(coords.shape)}.")
  _validation.check_batch_prefix(image.shape, coords.shape, locator.name, layout, dims)
  in_shape = image.shape[-dims - 1:-1]
  if out_shape is not None and len(out_shape) != dims:
    _validation.check_size(out_shape, "out_shape", dims)  # Raises: names the right size.
  if fill_value is not None:
    fill_value = _validation.check_fill_value(fill_value, padding_mode, image.shape[-1])
  jacobian = None
  if antialias and locator.source_jacobian is not None:
    jacobian = locator.source_jacobian(coords, in_shape, out_shape or in_shape, align_corners)
  coords = locator.source_pixels(coords, in_shape, out_shape or in_shape, align_corners)
  return _read(image, coords, method, padding_mode, align_corners, implementation, fill_value,
               antialias, jacobian)


def warp_with(locator: Locator, coords, image, out_shape=None, *, method="bilinear",
              padding_mode="zeros", align_corners=False, implementation="xla",
              fill_value=None, antialias=False):
  """The one checked, jitted path of every warp: `sample`, `grid_sample`, `warp_flow`
  and `transforms.warp`."""
  check_implementation(implementation)
  _validation.check_options(method, padding_mode)
  _validation.check_antialias(antialias, method, padding_mode)
  if out_shape is not None:
    out_shape = _validation.check_size(out_shape, "out_shape", None)
  if fill_value is not None:
    fill_value = _validation.check_fill_value(fill_value, padding_mode, None)
  return _warp(locator, coords, image, fill_value, out_shape, method, padding_mode,
               bool(align_corners), implementation, bool(antialias))


def check_implementation(implementation: str) -> None:
  """Raises for an unknown implementation, or for the CPU kernel where it is not built."""
  _validation.check_implementation(implementation)
  if implementation == "cpu_kernel" and not _cpu_kernel.AVAILABLE:
    raise ValueError("implementation='cpu_kernel' needs stnjax's compiled CPU kernel, which "
                     "is not built in this install (stnjax.has_cpu_kernel() is False). "
                     + _cpu_kernel.BUILD_HINT)


def has_cpu_kernel() -> bool:
  """Whether stnjax's compiled CPU kernel for the bilinear image gradient is built.

  `pip install` compiles it when a C++ compiler is present. It runs only where asked
  for, with `implementation="cpu_kernel"` in `sample`, `grid_sample`, `warp_flow`,
  `stnjax.transforms.warp` or the modules; where it is not built, those raise a
  `ValueError` that says how to build it.

  Returns:
    True if the kernel is built and registered with XLA, else False.

  Example:
    >>> implementation = "cpu_kernel" if has_cpu_kernel() else "xla"
  """
  return _cpu_kernel.AVAILABLE


def grid_sample(image: jax.Array, grid: jax.Array, *, method: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False,
                fill_value=None, implementation: str = "xla",
                antialias: bool = False) -> jax.Array:
  """Reads `image` at the normalized positions in `grid`, in 2-D or 3-D.

  Equals `torch.nn.functional.grid_sample(input, grid, mode, padding_mode,
  align_corners)` with `input` transposed from NCHW to NHWC (NCDHW to NDHWC).

  Args:
    image: `[*batch, H, W, C]`, or a volume `[*batch, D, H, W, C]`; float or integer.
    grid: `[*batch, ..., Ho, Wo, 2]` float array of `(x, y)` normalized coordinates,
      or `[*batch, ..., Do, Ho, Wo, 3]` of `(x, y, z)` for a volume. It starts with
      the image's batch dims; any extra dims (several grids per image) read the same
      image without copying it.
    method: `"bilinear"` (trilinear for volumes), `"nearest"` (ties round half to
      even) or `"bicubic"` (2-D only; coefficient -0.75; may overshoot the input's
      range).
    padding_mode: what a read beyond the image sees: `"zeros"`, `"border"` (the
      nearest edge pixel), `"reflection"` (the mirrored position), or `"constant"`
      (`fill_value`, as if the image were extended by it).
    align_corners: see `stnjax.grid`.
    fill_value: with `padding_mode="constant"`, a scalar or one value per channel
      `[C]` (default 0); an array, so it can be traced and differentiated. Reads
      wholly inside the image do not depend on it; a NaN coordinate reads it.
    implementation: how the bilinear image gradient is computed. `"xla"` (default):
      XLA's scatter-add, on every platform. `"cpu_kernel"`: stnjax's compiled CPU
      kernel for 2-D images (deterministic, multithreaded over the batch;
      `stnjax.has_cpu_kernel()` says whether it is built, and a `ValueError` says how
      to build it where it is not); XLA's scatter-add on other platforms. Values,
      every derivative and every transformation are the same either way; the forward
      pass and the other methods do not depend on it.
    antialias: with `method="bilinear"` on 2-D images, where the grid shrinks the image
      each output pixel reads a prefiltered pyramid at the scale of its footprint,
      which approximates the average of the input over it (the user guide's
      antialiasing page says how); where it does not shrink, the result is plain
      bilinear sampling exactly. The footprint is taken from differences between
      neighbouring grid points. Not with `padding_mode="constant"`.

  Returns:
    `[*batch, ..., Ho, Wo, C]` (or `[*batch, ..., Do, Ho, Wo, C]`) in the image's dtype
    (float32 for integer images).

  Raises:
    TypeError: `image` or `grid` is not an array, `grid` is not floating, `image` is
      neither float nor integer, `antialias` is not a bool, or `fill_value` is not
      numeric.
    ValueError: a shape does not fit (`grid` not `[..., 2]` or `[..., 3]`, an image of
      too low a rank, a `grid` that does not start with the image's batch dims, a
      `fill_value` that is neither a scalar nor `[C]`), an unknown option, or an
      option that does not apply (`"bicubic"` or `"cpu_kernel"` for volumes,
      `fill_value` without `padding_mode="constant"`, `antialias=True` with another
      method, with `"constant"` padding or on volumes, `"cpu_kernel"` where
      `has_cpu_kernel()` is False).

  Example:
    >>> import jax.numpy as jnp
    >>> image = jnp.arange(4.0).reshape(1, 4, 1)  # One row of four pixels.
    >>> # (x, y): pixel 0's centre; between pixels 1 and 2; the right edge, half zero padding.
    >>> grid = jnp.array([[[-0.75, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    >>> grid_sample(image, grid)[..., 0].tolist()
    [[0.0, 1.5, 1.5]]
  """
  return warp_with(GRID, grid, image, method=method, padding_mode=padding_mode,
                   align_corners=align_corners, implementation=implementation,
                   fill_value=fill_value, antialias=antialias)


def sample(theta: jax.Array, image: jax.Array, out_shape=None, *, method: str = "bilinear",
           padding_mode: str = "zeros", align_corners: bool = False, fill_value=None,
           implementation: str = "xla", antialias: bool = False) -> jax.Array:
  """Warps `image` with theta: the fused `grid_sample(image, affine_grid(theta, ...))`.

  Works on separable row and column terms, so no batch of base grids is built, and
  an identity theta returns the input exactly.

  Args:
    theta: `[*batch, ..., 2, 3]` affine or `[*batch, ..., 3, 3]` projective (or, for a
      volume, `[*batch, ..., 3, 4]` or `[*batch, ..., 4, 4]`), any float dtype,
      mapping output to input normalized coordinates. It starts with the image's batch
      dims; extra dims are glimpses of the same image (not copied).
    image: `[*batch, H, W, C]`, or a volume `[*batch, D, H, W, C]` for a 3-D theta;
      float or integer.
    out_shape: `(Ho, Wo)` (or `(Do, Ho, Wo)`), positive ints; defaults to the image's.
    method: `"bilinear"` (default), `"nearest"` or `"bicubic"`, as in `grid_sample`.
    padding_mode: `"zeros"` (default), `"border"`, `"reflection"` or `"constant"`,
      as in `grid_sample`.
    align_corners: see `stnjax.grid`; default False.
    fill_value, implementation: as in `grid_sample`.
    antialias: filter where theta shrinks the image, as in `grid_sample`; the
      footprint comes from theta (per image for an affine theta, per pixel for a
      projective one), so it works with traced thetas. Plain bilinear sampling, bit
      for bit, where theta does not shrink.

  Returns:
    `[*batch, ..., Ho, Wo, C]` in the image's dtype (float32 for integer images).
    A single image `[H, W, C]` with theta `[2, 3]` gives `[Ho, Wo, C]`; `[B, H, W, C]`
    with `[B, 2, 3]` gives `[B, Ho, Wo, C]`; `[B, K, 2, 3]` gives `[B, K, Ho, Wo, C]`;
    a volume `[B, D, H, W, C]` with `[B, 3, 4]` gives `[B, Do, Ho, Wo, C]`.

  Raises:
    TypeError: `theta` or `image` is not an array, `theta` is not floating, `image` is
      neither float nor integer, or `antialias` is not a bool.
    ValueError: a shape does not fit (theta not one of the four matrix shapes, a
      theta that does not start with the image's batch dims, an `out_shape` of the
      wrong length), or an option is unknown or does not apply, as in `grid_sample`.

  Example:
    >>> import jax.numpy as jnp
    >>> image = jnp.arange(6.0).reshape(2, 3, 1)
    >>> bool((sample(jnp.eye(2, 3), image) == image).all())  # The identity: an exact copy.
    True
    >>> zoom = jnp.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])  # Reads the middle half.
    >>> sample(zoom, jnp.arange(4.0).reshape(1, 4, 1), (1, 2))[..., 0].tolist()
    [[1.0, 2.0]]
    >>> volume = jnp.arange(24.0).reshape(2, 3, 4, 1)
    >>> bool((sample(jnp.eye(3, 4), volume) == volume).all())
    True
  """
  return warp_with(THETA, theta, image, out_shape, method=method, padding_mode=padding_mode,
                   align_corners=align_corners, implementation=implementation,
                   fill_value=fill_value, antialias=antialias)
