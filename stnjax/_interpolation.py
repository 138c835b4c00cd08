"""Reading images at fractional pixel positions: padding and the three methods.

Images are `[B, *spatial, C]` (spatial `(H, W)` or `(D, H, W)`) and points
`(x, y[, z])` `[B, ...]` in pixel coordinates (the centre of pixel `(row, col)` is
`(x, y) = (col, row)`), with PyTorch's `grid_sample` semantics for every padding mode
and method (bicubic in 2-D only, as in PyTorch). Nearest and bicubic are plain JAX,
differentiated by autodiff; bilinear (trilinear in 3-D), the hot path, runs through the
primitives of `stnjax._bilinear`.
"""

import functools
import math
import operator

import jax
import jax.numpy as jnp

from stnjax import _bilinear
from stnjax import _corners

# PyTorch's bicubic convolution coefficient (Keys' kernel with a = -0.75).
_CUBIC_A = -0.75
_CUBIC_OFFSETS = (-1, 0, 1, 2)
_LINEAR_NAMES = {2: "bilinear", 3: "trilinear"}


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
  """Maps pixel coordinates into the image for border and reflection padding (zeros and
  constant padding read beyond it)."""
  if padding_mode == "border":
    return _clip_to_image(coord, size)
  if padding_mode == "reflection":
    if align_corners:
      coord = _reflect(coord, 0, 2 * (size - 1))
    else:
      coord = _reflect(coord, -1, 2 * size - 1)
    return _clip_to_image(coord, size)
  return coord


def bilinear(images, coords, implementation, unchecked=False):
  """images `[B, *spatial, C]` read at coords `[B, ...]` (padding applied): float32 `[B, ..., C]`.
  `unchecked`: no bounds checks; the caller promises every corner's index in the
  flattened batch inside it (`_corners.corners`)."""
  batch, spatial, channels = images.shape[0], images.shape[1:-1], images.shape[-1]
  if batch * math.prod(spatial) >= 2**31:
    raise ValueError(f"{_LINEAR_NAMES[len(spatial)]} sampling indexes pixels with int32: "
                     f"{batch} images of {'x'.join(map(str, spatial))} exceed 2**31 pixels; "
                     "split the batch.")
  points = coords[0].shape[1:]
  out = _bilinear.read(images.astype(jnp.float32), [c.reshape(batch, -1) for c in coords],
                       implementation, unchecked)
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
  """One image `[*spatial, C]` flattened to rows of channels, for gathers at whole pixels."""

  def __init__(self, image):
    self.spatial, self.channels = image.shape[:-1], image.shape[-1]
    self.sizes = self.spatial[::-1]  # Along x, y, z.
    if not jnp.issubdtype(image.dtype, jnp.floating):
      image = image.astype(jnp.float32)
    self.pixels = image.reshape(-1, self.channels)

  def read(self, indices, inside, weight=None):
    """Pixels at integer indices `(col, row[, slice])` `[...]`, times weight, zero where not
    inside: `[..., C]`."""
    flat = indices[-1]
    for index, size in zip(indices[-2::-1], self.sizes[-2::-1]):
      flat = flat * size + index
    values = _corners.take_rows(self.pixels, flat)
    if weight is None:
      return jnp.where(inside[..., None], values, jnp.zeros((), values.dtype))
    # Selected away off the image, not weighted by zero: an inf or NaN at the pixel read
    # in a tap's place stays out, as in PyTorch (no measurable cost for bicubic).
    values = jnp.where(inside[..., None], values.astype(jnp.float32), 0.0)
    return _times_channels(weight, values)


def _nearest(image, coords):
  # jnp.round rounds half to even, as std::nearbyint in PyTorch.
  found = [_corners.index_and_mask(jnp.round(c), size) for c, size in zip(coords, image.sizes)]
  inside = functools.reduce(operator.and_, [mask for _, mask in found])
  return image.read([index for index, _ in found], inside).astype(jnp.float32)


def _cubic_weights(t):
  """Weights of the taps at floor - 1, floor, floor + 1, floor + 2 for fraction t."""
  def near(s):  # |s| <= 1
    return ((_CUBIC_A + 2) * s - (_CUBIC_A + 3)) * s * s + 1

  def far(s):  # 1 < |s| < 2
    return ((_CUBIC_A * s - 5 * _CUBIC_A) * s + 8 * _CUBIC_A) * s - 4 * _CUBIC_A

  return far(t + 1), near(t), near(1 - t), far(2 - t)


def _bicubic(image, coords, padding_mode, align_corners):
  # Padding applies to each tap, not to the sampling point, as in PyTorch.
  x, y = coords
  width, height = image.sizes
  x_floor, y_floor = jnp.floor(x), jnp.floor(y)
  # inf - inf would poison the weights of taps that border padding keeps; any finite
  # fraction is right there, as the four weights sum to one.
  col_weights = _cubic_weights(jnp.where(jnp.isfinite(x), x - x_floor, 0.0))
  row_weights = _cubic_weights(jnp.where(jnp.isfinite(y), y - y_floor, 0.0))
  cols = [_corners.index_and_mask(
      apply_padding(x_floor + offset, width, padding_mode, align_corners), width)
          for offset in _CUBIC_OFFSETS]
  out = 0.0
  for row_offset, row_weight in zip(_CUBIC_OFFSETS, row_weights):
    row, row_inside = _corners.index_and_mask(
        apply_padding(y_floor + row_offset, height, padding_mode, align_corners), height)
    for (col, col_inside), col_weight in zip(cols, col_weights):
      out = out + image.read((col, row), row_inside & col_inside, row_weight * col_weight)
  return out


def _read_one(image, coords, method, padding_mode, align_corners):
  """One image `[*spatial, C]` read at coords `[...]` by nearest or bicubic: float32 `[..., C]`."""
  image = _Image(image)
  if method == "bicubic":
    return _bicubic(image, coords, padding_mode, align_corners)
  coords = [apply_padding(c, size, padding_mode, align_corners)
            for c, size in zip(coords, image.sizes)]
  return _nearest(image, coords)


def outside_weight(coords, sizes, method):
  """How much of each read falls beyond the image: the total weight of the taps off it.

  Exactly 0 where every tap is inside (so reads there do not change), 1 for NaN.
  sizes: the image's sizes along x, y[, z].
  """
  if method == "nearest":
    inside = [_corners.index_and_mask(jnp.round(c), size)[1] for c, size in zip(coords, sizes)]
    return jnp.where(functools.reduce(operator.and_, inside), 0.0, 1.0)
  coverage, all_inside = 1.0, True
  for coord, size in zip(coords, sizes):
    floor = jnp.floor(coord)
    if method == "bicubic":
      offsets = _CUBIC_OFFSETS
      taps = _cubic_weights(jnp.where(jnp.isfinite(coord), coord - floor, 0.0))
    else:
      offsets, taps = (0, 1), (1 - (coord - floor), coord - floor)
    masks = [_corners.index_and_mask(floor + offset, size)[1] for offset in offsets]
    coverage = coverage * sum(jnp.where(mask, tap, 0.0) for mask, tap in zip(masks, taps))
    all_inside = all_inside & functools.reduce(operator.and_, masks)
  return jnp.where(all_inside, 0.0, 1 - coverage)


def read(images, coords, method, padding_mode, align_corners, implementation):
  """images `[B, *spatial, C]` read at pixel coordinates `(x, y[, z])` `[B, ...]`:
  float32 `[B, ..., C]`. Constant padding reads zero outside; see `outside_weight`."""
  sizes = images.shape[-2:0:-1]
  if method == "bilinear":
    coords = [apply_padding(c, size, padding_mode, align_corners)
              for c, size in zip(coords, sizes)]
    return bilinear(images, coords, implementation)
  one = functools.partial(_read_one, method=method, padding_mode=padding_mode,
                          align_corners=align_corners)
  return jax.vmap(one)(images, coords)
