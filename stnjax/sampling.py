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

import jax
import jax.numpy as jnp

from stnjax import _bilinear
from stnjax import _cpu_kernel
from stnjax import _validation
from stnjax import grid as grid_lib

__all__ = ["grid_sample", "has_cpu_kernel", "sample"]

# PyTorch's bicubic convolution coefficient (Keys' kernel with a = -0.75).
_CUBIC_A = -0.75


def _clip_to_image(coord, size):
  # Explicit comparisons rather than jnp.clip: zero gradient on the border itself, as
  # in PyTorch, and NaN passes through to be masked later.
  return jnp.where(coord <= 0, 0.0, jnp.where(coord >= size - 1, size - 1.0, coord))


def _reflect(coord, twice_low, twice_high):
  """Mirrors coord into [twice_low / 2, twice_high / 2], as PyTorch's reflect_coordinates."""
  if twice_low == twice_high:
    return jnp.zeros_like(coord)
  low = twice_low / 2
  span = (twice_high - twice_low) / 2
  coord = coord - low
  coord = jnp.where(coord < 0, -coord, coord)
  extra = jnp.fmod(coord, span)
  flips = jnp.floor(coord / span)
  return jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _apply_padding(coord, size, padding_mode, align_corners):
  """Maps pixel coordinates into the image for border and reflection padding."""
  if padding_mode == "border":
    return _clip_to_image(coord, size)
  if padding_mode == "reflection":
    if align_corners:
      coord = _reflect(coord, 0, 2 * (size - 1))
    else:
      coord = _reflect(coord, -1, 2 * size - 1)
    return _clip_to_image(coord, size)
  return coord


class _Image:
  """One image `[H, W, C]` flattened to rows of channels, for gathers at (row, col)."""

  def __init__(self, image):
    self.height, self.width, self.channels = image.shape
    if not jnp.issubdtype(image.dtype, jnp.floating):
      image = image.astype(jnp.float32)
    self.pixels = image.reshape(self.height * self.width, self.channels)

  def read(self, row, col, inside, weight=None):
    """Pixels at integer (row, col) `[...]`, times weight, zero where not inside: `[..., C]`."""
    values = self.pixels[row * self.width + col]
    if weight is None:
      return jnp.where(inside[..., None], values, jnp.zeros((), values.dtype))
    return _scale_rows(jnp.where(inside, weight, 0.0), values)


def _scale_rows(weight, values):
  """weight `[...]` times values `[..., C]`, accumulated in float32.

  Few channels are multiplied one by one: the transpose (taken by autodiff for nearest
  and bicubic) is then elementwise, where a broadcast's transpose is a reduction over a
  short channel axis that XLA's CPU backend runs ~20x slower.
  """
  channels = values.shape[-1]
  if channels > _bilinear.UNROLLED_CHANNELS:
    return weight[..., None] * values
  return jnp.stack([weight * values[..., c] for c in range(channels)], axis=-1)


def _nearest(image, x, y):
  # jnp.round rounds half to even, as std::nearbyint in PyTorch.
  row, row_inside = _bilinear.index_and_mask(jnp.round(y), image.height)
  col, col_inside = _bilinear.index_and_mask(jnp.round(x), image.width)
  return image.read(row, col, row_inside & col_inside).astype(jnp.float32)


def _cubic_weights(t):
  """Weights of the taps at floor - 1, floor, floor + 1, floor + 2 for fraction t."""
  def near(s):  # |s| <= 1
    return ((_CUBIC_A + 2) * s - (_CUBIC_A + 3)) * s * s + 1

  def far(s):  # 1 < |s| < 2
    return ((_CUBIC_A * s - 5 * _CUBIC_A) * s + 8 * _CUBIC_A) * s - 4 * _CUBIC_A

  return far(t + 1), near(t), near(1 - t), far(2 - t)


def _bicubic(image, x, y, padding_mode, align_corners):
  # Padding applies to each tap, not to the sampling point, as in PyTorch.
  x_floor, y_floor = jnp.floor(x), jnp.floor(y)
  # inf - inf would poison the weights of taps that border padding keeps; any finite
  # fraction is right there, as the four weights sum to one.
  col_weights = _cubic_weights(jnp.where(jnp.isfinite(x), x - x_floor, 0.0))
  row_weights = _cubic_weights(jnp.where(jnp.isfinite(y), y - y_floor, 0.0))
  cols = [_bilinear.index_and_mask(_apply_padding(x_floor + offset, image.width, padding_mode,
                                         align_corners), image.width)
          for offset in (-1, 0, 1, 2)]
  out = 0.0
  for row_offset, row_weight in zip((-1, 0, 1, 2), row_weights):
    row, row_inside = _bilinear.index_and_mask(
        _apply_padding(y_floor + row_offset, image.height, padding_mode, align_corners),
        image.height)
    for (col, col_inside), col_weight in zip(cols, col_weights):
      out = out + image.read(row, col, row_inside & col_inside, row_weight * col_weight)
  return out


def _sample_pixels(image, x, y, method, padding_mode, align_corners):
  """One image `[H, W, C]` read at pixel coordinates x, y `[...]`: float32 `[..., C]`."""
  image = _Image(image)
  if method == "bicubic":
    return _bicubic(image, x, y, padding_mode, align_corners)
  x = _apply_padding(x, image.width, padding_mode, align_corners)
  y = _apply_padding(y, image.height, padding_mode, align_corners)
  return _nearest(image, x, y)


def sample_pixels(image, x, y, method, padding_mode, align_corners, implementation="auto"):
  """Reads image `[*batch, H, W, C]` at pixel coordinates x, y `[*batch, ...]`.

  Unchecked building block of the public functions. Returns `[*batch, ..., C]` in the
  image's dtype (float32 for integer images).
  """
  batch_shape = image.shape[:-3]
  batch_size = math.prod(batch_shape)
  per_example = x.shape[len(batch_shape):]
  images = image.reshape((batch_size,) + image.shape[-3:])
  x, y = x.reshape((batch_size,) + per_example), y.reshape((batch_size,) + per_example)
  if method == "bilinear":
    height, width = image.shape[-3:-1]
    out = _bilinear.bilinear(images, _apply_padding(x, width, padding_mode, align_corners),
                             _apply_padding(y, height, padding_mode, align_corners),
                             implementation)
  else:
    read = functools.partial(_sample_pixels, method=method, padding_mode=padding_mode,
                             align_corners=align_corners)
    out = jax.vmap(read)(images, x, y)
  out = out.reshape(batch_shape + out.shape[1:])
  out_dtype = image.dtype if jnp.issubdtype(image.dtype, jnp.floating) else jnp.float32
  return out.astype(out_dtype)


def has_cpu_kernel() -> bool:
  """Whether stnjax's compiled CPU kernels are built: the bilinear image gradient and
  the small convolutions of `stnjax.conv_general_dilated`.

  `pip install` compiles them when a C++ compiler is present; without them,
  `implementation="auto"` uses XLA's scatter-add on the CPU too and
  `conv_general_dilated` is `lax.conv_general_dilated` (same results).
  """
  return _cpu_kernel.AVAILABLE


@functools.partial(jax.jit, static_argnames=("method", "padding_mode", "align_corners",
                                             "implementation"))
def _grid_sample(image, grid, method, padding_mode, align_corners, implementation):
  _validation.check_image(image)
  _validation.check_grid(grid)
  if grid.ndim < image.ndim:
    raise ValueError(
        f"grid must have the image's batch dims then [..., Ho, Wo, 2]: image shape "
        f"{tuple(image.shape)} needs a grid of rank >= {image.ndim}, got shape {tuple(grid.shape)}.")
  _validation.check_batch_prefix(image.shape, grid.shape, "grid", "Ho, Wo, 2")
  height, width = image.shape[-3:-1]
  grid = grid.astype(jnp.float32)
  x = grid_lib.unnormalize(grid[..., 0], width, align_corners)
  y = grid_lib.unnormalize(grid[..., 1], height, align_corners)
  return sample_pixels(image, x, y, method, padding_mode, align_corners, implementation)


def grid_sample(image: jax.Array, grid: jax.Array, *, method: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False,
                implementation: str = "auto") -> jax.Array:
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
    implementation: how the bilinear image gradient is computed. `"auto"`: on the CPU
      with stnjax's compiled kernel when it is built (`stnjax.has_cpu_kernel()`;
      deterministic, multithreaded over the batch, but not differentiable again, so
      use `"xla"` for second derivatives with respect to the image or coordinates),
      elsewhere with XLA's scatter-add. `"xla"`: XLA's scatter-add everywhere. The
      forward pass and the other methods are the same either way.

  Returns:
    `[*batch, ..., Ho, Wo, C]` in the image's dtype (float32 for integer images).
  """
  _validation.check_options(method, padding_mode, implementation)
  return _grid_sample(image, grid, method, padding_mode, bool(align_corners), implementation)


@functools.partial(jax.jit, static_argnames=("out_shape", "method", "padding_mode",
                                             "align_corners", "implementation"))
def _sample(theta, image, out_shape, method, padding_mode, align_corners, implementation):
  _validation.check_image(image)
  _validation.check_theta(theta)
  if theta.ndim < image.ndim - 1:
    raise ValueError(
        f"theta must have the image's batch dims then [..., 2, 3] or [..., 3, 3]: image shape "
        f"{tuple(image.shape)} needs theta of rank >= {image.ndim - 1}, "
        f"got shape {tuple(theta.shape)}.")
  _validation.check_batch_prefix(image.shape, theta.shape, "theta", "2 or 3, 3")
  in_shape = image.shape[-3:-1]
  x, y = grid_lib.source_pixels(theta, in_shape, out_shape or in_shape, align_corners)
  return sample_pixels(image, x, y, method, padding_mode, align_corners, implementation)


def sample(theta: jax.Array, image: jax.Array, out_shape=None, *, method: str = "bilinear",
           padding_mode: str = "zeros", align_corners: bool = False,
           implementation: str = "auto") -> jax.Array:
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
  _validation.check_options(method, padding_mode, implementation)
  if out_shape is not None:
    out_shape = _validation.check_size(out_shape, "out_shape")
  return _sample(theta, image, out_shape, method, padding_mode, bool(align_corners),
                 implementation)
