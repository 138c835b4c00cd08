"""Differentiable image sampling: `grid_sample` and the fused `sample(theta, image)`.

Images are `[..., H, W, C]`, channels last; coordinates follow `stnjax.grid`. Each
output pixel reads the input at a fractional pixel position (pull sampling), with
PyTorch's `grid_sample` semantics for every method, padding mode and `align_corners`.

Coordinates are float32 whatever the image dtype. Float images keep their dtype
(values are accumulated in float32, then cast); integer images are read as float32
and give a float32 result with the same value range.

Out-of-range and non-finite coordinates never index outside the image. A position
beyond the image reads the padding: zero (`"zeros"`), the nearest edge pixel
(`"border"`), or the mirrored position (`"reflection"`). A NaN coordinate, hence a
NaN theta, reads zero in every padding mode (so does an infinite one with
`"reflection"`), and the forward pass stays finite; gradients at such points are not
meaningful.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from stnjax import _cpu_kernel
from stnjax import _interpolation
from stnjax import _validation
from stnjax import grid as grid_lib

__all__ = ["Locator", "grid_sample", "has_cpu_kernel", "sample", "warp_with"]


class Locator(NamedTuple):
  """How a warp finds, for each output pixel, the input pixel it reads.

  Attributes:
    name: what the coordinates argument is called in error messages ("theta", ...).
    layout: its trailing dims in words, e.g. "2 or 3, 3".
    rank: the number of those trailing dims.
    check: raises a clear error for a bad coordinates argument.
    source_pixels: `(coords, in_shape, out_shape, align_corners) -> (x, y)`, float32
      input pixel positions `[..., Ho, Wo]`.
  """
  name: str
  layout: str
  rank: int
  check: Callable[[jax.Array], None]
  source_pixels: Callable[..., tuple[jax.Array, jax.Array]]


def _grid_source_pixels(grid, in_shape, out_shape, align_corners):
  del out_shape  # The grid's own.
  height, width = in_shape
  grid = grid.astype(jnp.float32)
  return (grid_lib.unnormalize(grid[..., 0], width, align_corners),
          grid_lib.unnormalize(grid[..., 1], height, align_corners))


THETA = Locator("theta", "2 or 3, 3", 2, _validation.check_theta, grid_lib.source_pixels)
GRID = Locator("grid", "Ho, Wo, 2", 3, _validation.check_grid, _grid_source_pixels)


def _read(image, x, y, method, padding_mode, align_corners, implementation):
  """image `[*batch, H, W, C]` read at pixel coordinates x, y `[*batch, ...]`."""
  batch_shape = image.shape[:-3]
  batch_size = math.prod(batch_shape)
  per_example = x.shape[len(batch_shape):]
  images = image.reshape((batch_size,) + image.shape[-3:])
  x, y = x.reshape((batch_size,) + per_example), y.reshape((batch_size,) + per_example)
  out = _interpolation.read(images, x, y, method, padding_mode, align_corners, implementation)
  out = out.reshape(batch_shape + out.shape[1:])
  out_dtype = image.dtype if jnp.issubdtype(image.dtype, jnp.floating) else jnp.float32
  return out.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("locator", "out_shape", "method", "padding_mode",
                                             "align_corners", "implementation"))
def _warp(locator, coords, image, out_shape, method, padding_mode, align_corners,
          implementation):
  _validation.check_image(image)
  locator.check(coords)
  batch_rank = image.ndim - 3
  if coords.ndim < batch_rank + locator.rank:
    raise ValueError(
        f"{locator.name} must have the image's batch dims then [..., {locator.layout}]: "
        f"image shape {tuple(image.shape)} needs {locator.name} of rank >= "
        f"{batch_rank + locator.rank}, got shape {tuple(coords.shape)}.")
  _validation.check_batch_prefix(image.shape, coords.shape, locator.name, locator.layout)
  in_shape = image.shape[-3:-1]
  x, y = locator.source_pixels(coords, in_shape, out_shape or in_shape, align_corners)
  return _read(image, x, y, method, padding_mode, align_corners, implementation)


def warp_with(locator: Locator, coords, image, out_shape=None, *, method="bilinear",
              padding_mode="zeros", align_corners=False, implementation="xla"):
  """The one checked, jitted path of `sample`, `grid_sample` and `transforms.warp`."""
  check_implementation(implementation)
  _validation.check_options(method, padding_mode)
  if out_shape is not None:
    out_shape = _validation.check_size(out_shape, "out_shape")
  return _warp(locator, coords, image, out_shape, method, padding_mode, bool(align_corners),
               implementation)


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
  for, with `implementation="cpu_kernel"`.
  """
  return _cpu_kernel.AVAILABLE


def grid_sample(image: jax.Array, grid: jax.Array, *, method: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False,
                implementation: str = "xla") -> jax.Array:
  """Reads `image` at the normalized positions in `grid`.

  Equals `torch.nn.functional.grid_sample(input, grid, mode, padding_mode,
  align_corners)` with `input` transposed from NCHW to NHWC.

  Args:
    image: `[*batch, H, W, C]`, float or integer dtype.
    grid: `[*batch, ..., Ho, Wo, 2]` float array of `(x, y)` normalized coordinates.
      It starts with the image's batch dims; any extra dims (several grids per
      image) read the same image without copying it.
    method: `"bilinear"`, `"nearest"` (ties round half to even) or `"bicubic"`
      (coefficient -0.75; may overshoot the input's range).
    padding_mode: `"zeros"`, `"border"` or `"reflection"`.
    align_corners: see `stnjax.grid`.
    implementation: how the bilinear image gradient is computed. `"xla"` (default):
      XLA's scatter-add, on every platform. `"cpu_kernel"`: stnjax's compiled CPU
      kernel (deterministic, multithreaded over the batch; `stnjax.has_cpu_kernel()`
      says whether it is built, and a `ValueError` says how to build it where it is
      not); XLA's scatter-add on other platforms. Values, every derivative and every
      transformation are the same either way; the forward pass and the other methods
      do not depend on it.

  Returns:
    `[*batch, ..., Ho, Wo, C]` in the image's dtype (float32 for integer images).
  """
  return warp_with(GRID, grid, image, method=method, padding_mode=padding_mode,
                   align_corners=align_corners, implementation=implementation)


def sample(theta: jax.Array, image: jax.Array, out_shape=None, *, method: str = "bilinear",
           padding_mode: str = "zeros", align_corners: bool = False,
           implementation: str = "xla") -> jax.Array:
  """Warps `image` with theta: the fused `grid_sample(image, affine_grid(theta, ...))`.

  Works on separable row and column terms, so no batch of base grids is built, and
  an identity theta returns the input exactly.

  Args:
    theta: `[*batch, ..., 2, 3]` affine or `[*batch, ..., 3, 3]` projective, any
      float dtype, mapping output to input normalized coordinates. It starts with the
      image's batch dims; extra dims are glimpses of the same image (not copied).
    image: `[*batch, H, W, C]`.
    out_shape: `(Ho, Wo)`; defaults to `(H, W)`.
    method, padding_mode, align_corners, implementation: as in `grid_sample`.

  Returns:
    `[*batch, ..., Ho, Wo, C]` in the image's dtype (float32 for integer images).
    A single image `[H, W, C]` with theta `[2, 3]` gives `[Ho, Wo, C]`; `[B, H, W, C]`
    with `[B, 2, 3]` gives `[B, Ho, Wo, C]`; `[B, K, 2, 3]` gives `[B, K, Ho, Wo, C]`.

  >>> import jax.numpy as jnp
  >>> image = jnp.arange(6.0).reshape(2, 3, 1)
  >>> bool((sample(jnp.eye(2, 3), image) == image).all())
  True
  """
  return warp_with(THETA, theta, image, out_shape, method=method, padding_mode=padding_mode,
                   align_corners=align_corners, implementation=implementation)
