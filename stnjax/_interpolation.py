"""Reading images at fractional pixel positions: padding and the three methods.

Images are `[B, H, W, C]` and points x, y `[B, ...]` in pixel coordinates (the centre
of pixel `(row, col)` is `(x, y) = (col, row)`), with PyTorch's `grid_sample`
semantics for every padding mode and method. Nearest and bicubic are plain JAX,
differentiated by autodiff; bilinear, the hot path, runs through the primitives of
`stnjax._bilinear`.
"""

import functools

import jax
import jax.numpy as jnp

from stnjax import _bilinear
from stnjax import _corners

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


def apply_padding(coord, size, padding_mode, align_corners):
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


def bilinear(images, x, y, implementation):
  """images `[B, H, W, C]` read at x, y `[B, ...]` (padding applied): float32 `[B, ..., C]`."""
  batch, height, width, channels = images.shape
  if batch * height * width >= 2**31:
    raise ValueError(f"bilinear sampling indexes pixels with int32: {batch} images of "
                     f"{height}x{width} exceed 2**31 pixels; split the batch.")
  points = x.shape[1:]
  out = _bilinear.read(images.astype(jnp.float32), x.reshape(batch, -1), y.reshape(batch, -1),
                       implementation)
  return out.reshape((batch,) + points + (channels,))


def _times_channels(weight, values):
  """weight `[...]` times values `[..., C]`.

  On the CPU, few channels are multiplied one by one, so that the weight's cotangent is
  a chain of elementwise adds: the transpose of a broadcast is a reduction over the
  short channel axis, which XLA:CPU runs many times slower. Other platforms broadcast.
  """
  def broadcast(weight, values):
    return weight[..., None] * values

  def per_channel(weight, values):
    return jnp.stack([weight * values[..., c] for c in range(values.shape[-1])], axis=-1)

  if values.shape[-1] > _corners.UNROLLED_CHANNELS:
    return broadcast(weight, values)
  return jax.lax.platform_dependent(weight, values, cpu=per_channel, default=broadcast)


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
    return _times_channels(jnp.where(inside, weight, 0.0), values.astype(jnp.float32))


def _nearest(image, x, y):
  # jnp.round rounds half to even, as std::nearbyint in PyTorch.
  row, row_inside = _corners.index_and_mask(jnp.round(y), image.height)
  col, col_inside = _corners.index_and_mask(jnp.round(x), image.width)
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
  cols = [_corners.index_and_mask(
      apply_padding(x_floor + offset, image.width, padding_mode, align_corners), image.width)
          for offset in (-1, 0, 1, 2)]
  out = 0.0
  for row_offset, row_weight in zip((-1, 0, 1, 2), row_weights):
    row, row_inside = _corners.index_and_mask(
        apply_padding(y_floor + row_offset, image.height, padding_mode, align_corners),
        image.height)
    for (col, col_inside), col_weight in zip(cols, col_weights):
      out = out + image.read(row, col, row_inside & col_inside, row_weight * col_weight)
  return out


def _read_one(image, x, y, method, padding_mode, align_corners):
  """One image `[H, W, C]` read at x, y `[...]` by nearest or bicubic: float32 `[..., C]`."""
  image = _Image(image)
  if method == "bicubic":
    return _bicubic(image, x, y, padding_mode, align_corners)
  x = apply_padding(x, image.width, padding_mode, align_corners)
  y = apply_padding(y, image.height, padding_mode, align_corners)
  return _nearest(image, x, y)


def read(images, x, y, method, padding_mode, align_corners, implementation):
  """images `[B, H, W, C]` read at pixel coordinates x, y `[B, ...]`: float32 `[B, ..., C]`."""
  if method == "bilinear":
    height, width = images.shape[1:3]
    return bilinear(images, apply_padding(x, width, padding_mode, align_corners),
                    apply_padding(y, height, padding_mode, align_corners), implementation)
  one = functools.partial(_read_one, method=method, padding_mode=padding_mode,
                          align_corners=align_corners)
  return jax.vmap(one)(images, x, y)
