"""Antialiased bilinear sampling: a prefiltered pyramid, read at each point's footprint.

Where a warp shrinks the image, an output pixel should show the average of the input
over its footprint (the image of the output pixel's square), not four input pixels.
Here each output pixel reads a pyramid of the image, each level half the size of the
one below, filtered with `[1, 3, 3, 1] / 8` along each axis, at a level chosen from the
footprint:

  * The footprint's sides are the singular values of the Jacobian
    `d(input pixel) / d(output pixel)`, taken from differences between the source
    positions of neighbouring output pixels, so they come from theta per point (the
    same over an image for an affine theta, per pixel for a projective one or a grid).
  * The box-filtered reference (the mean of bilinear reads over the footprint) has
    variance `long**2 / 12 + 1 / 6` along the long side: that is the read's target,
    plus some more where the plain read sits near a whole pixel (`_target_spread`).
  * Each level's read has a known variance: the cascaded filters' `(4**l - 1) / 4`
    plus the bilinear weights' own, `4**l * f * (1 - f)` for the fractional position
    `f` on that level. Two neighbouring levels are blended so that the read's variance
    is the target: continuous in theta, so values and gradients do not jump.

Where the transform does not shrink (long side <= 1: magnification, rotation, the
identity) the blend weight is exactly zero and the result is the plain bilinear read of
the image itself (the same primitive at the same coordinates). The filter is isotropic,
sized by the footprint's long side, so an anisotropic footprint is also blurred along
its short side.

The coarser levels are laid out in one image (an atlas), stacked, each with a ring of
zeros, so that one bilinear read with the clamped coordinates of any level sees exactly
that level with zero padding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stnjax import _interpolation

# The [1, 3, 3, 1] / 8 filter's variance, in pixels of the finer level.
_FILTER_VARIANCE = 0.75
# A read is plain bilinear where the squared stretch is at most this: exactly 1 would
# let float rounding of a rotation's differences blur it.
_PLAIN_STRETCH_SQUARED = 1 + 2**-10
# How much more a read at a whole pixel is blurred, in units of the footprint's short
# side's box variance (chosen on zone plates: benchmarks/antialias.py).
_WHOLE_PIXEL_EXTRA = 2.0


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
  """(h, w) of each level, from the image itself down to one pixel."""
  sizes = [(height, width)]
  while max(sizes[-1]) > 1:
    height, width = sizes[-1]
    sizes.append(((height + 1) // 2, (width + 1) // 2))
  return sizes


def _halve_axis(images, axis, padding_mode):
  """images filtered with [1, 3, 3, 1] / 8 along axis, every second pixel kept: pixel k
  of the result is centred between pixels 2k and 2k + 1.

  The image is extended at each end as the padding mode extends it (zeros, the edge
  pixel, or the mirror image); only the first and last results read beyond it, so they
  are written apart from the interior rather than padding a copy of the image.
  """
  def take(array, start, stop, step=1):
    return jax.lax.slice_in_dim(array, start, stop, step, axis)

  def beyond(edge):
    return jnp.zeros_like(edge) if padding_mode == "zeros" else edge

  size = images.shape[axis]
  # The pixel after the last one: mirrored, it is the one before the last; after an odd
  # size is made even with the edge pixel, it is that pixel's mirror, pixel size - 2.
  after = take(images, max(size - 2, 0), max(size - 1, 1)) if size % 2 else None
  if size % 2:
    images = jnp.concatenate([images, beyond(take(images, size - 1, size))], axis=axis)
    size += 1
  first, last = take(images, 0, 1), take(images, size - 1, size)
  after = after if padding_mode == "reflection" and after is not None else beyond(last)
  if size == 2:
    return (beyond(first) + 3 * (first + last) + after) * 0.125
  head = beyond(first) + 3 * (first + take(images, 1, 2)) + take(images, 2, 3)
  interior = (take(images, 1, size - 3, 2) + take(images, 4, size, 2)
              + 3 * (take(images, 2, size - 2, 2) + take(images, 3, size - 1, 2)))
  tail = take(images, size - 3, size - 2) + 3 * (take(images, size - 2, size - 1) + last) + after
  return jnp.concatenate([head, interior, tail], axis=axis) * 0.125


def level_table(height: int, width: int) -> np.ndarray:
  """Where `pyramid_atlas` puts each coarser level: float32 `[levels, 3]` of
  `(row, height, width)`, from level 1."""
  sizes = level_sizes(height, width)[1:]
  rows = np.cumsum([0] + [h + 1 for h, _ in sizes[:-1]])
  return np.asarray([(row, h, w) for row, (h, w) in zip(rows, sizes)], np.float32)


def pyramid_atlas(images, padding_mode):
  """The coarser levels of images `[B, H, W, C]` (all but the image itself) in one atlas
  `[B, Ha, Wa, C]`, stacked from the top as `level_table` says, each followed by a row of
  zeros and padded with zeros on the right."""
  levels = [images]
  for _ in level_sizes(*images.shape[1:3])[1:]:
    levels.append(_halve_axis(_halve_axis(levels[-1], 1, padding_mode), 2, padding_mode))
  width = levels[1].shape[2] + 1
  return jnp.concatenate(
      [jnp.pad(level, ((0, 0), (0, 1), (0, width - level.shape[2]), (0, 0)))
       for level in levels[1:]], axis=1)


def _derivatives(coord):
  """d coord / d(output column) and d coord / d(output row), `[..., Ho, Wo]`: differences
  between neighbouring output pixels (exact for an affine map), the last one repeated at
  the far edge; zero along an axis of one pixel."""
  derivatives = []
  for axis in (coord.ndim - 1, coord.ndim - 2):
    size = coord.shape[axis]
    if size == 1:
      derivatives.append(jnp.zeros_like(coord))
      continue
    steps = jnp.diff(coord, axis=axis)
    last = jax.lax.slice_in_dim(steps, size - 2, size - 1, axis=axis)
    derivatives.append(jnp.concatenate([steps, last], axis=axis))
  return derivatives


def _safe_sqrt(value):
  positive = value > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)


def squared_stretches(x, y):
  """The squared singular values of d(x, y) / d(output column, row), largest first: the
  footprint's squared long and short sides, each `[..., Ho, Wo]`."""
  (x_col, x_row), (y_col, y_row) = _derivatives(x), _derivatives(y)
  xx = x_col * x_col + x_row * x_row
  yy = y_col * y_col + y_row * y_row
  xy = x_col * y_col + x_row * y_row
  half_gap = (xx - yy) / 2
  root = _safe_sqrt(half_gap * half_gap + xy * xy)
  return (xx + yy) / 2 + root, jnp.maximum((xx + yy) / 2 - root, 0.0)


def _bilinear_spread(coord):
  """Variance of the two bilinear weights along an axis at coord: f * (1 - f)."""
  fraction = coord - jnp.floor(coord)
  return fraction * (1 - fraction)


def _spread(at_x, at_y, scale):
  """Variance of a read at level coordinates (at_x, at_y) on the level of `scale = 2**-l`."""
  inverse_area = 1 / (scale * scale)  # 4**l
  return (_FILTER_VARIANCE * (inverse_area - 1) / 3
          + inverse_area * (_bilinear_spread(at_x) + _bilinear_spread(at_y)) / 2)


def _on_level(x, y, level, table, padding_mode):
  """Coordinates on a coarser level (`level` >= 1, int32, the shape of x) of image pixel
  positions (x, y), clamped to the level and moved to its place in the atlas."""
  scale = jnp.exp2(-level.astype(jnp.float32))
  at_x, at_y = x * scale + (scale - 1) / 2, y * scale + (scale - 1) / 2
  # The level's place and size, from the table by comparisons (cheaper than a gather).
  row, height, width = (
      functools.reduce(jnp.add, [jnp.where(level >= l + 1, float(step), 0.0)
                                 for l, step in enumerate(np.diff(table[:, i], prepend=0))])
      for i in range(3))
  if padding_mode == "zeros":  # The zero ring, or zeros beyond the atlas.
    low, high_x, high_y = -1.0, width, height
  else:
    low, high_x, high_y = 0.0, width - 1, height - 1
  at_x = jnp.where(at_x <= low, low, jnp.where(at_x >= high_x, high_x, at_x))
  at_y = jnp.where(at_y <= low, low, jnp.where(at_y >= high_y, high_y, at_y))
  return at_x, at_y + row


def _target_spread(plain_spread, long_squared, short_squared):
  """The variance a read should have: the box-filtered reference's along the footprint's
  long side, `long_squared / 12 + 1 / 6` (the box, and the bilinear weights within it), and
  more where the plain read sits near a whole pixel (`plain_spread` near 0): there its
  taps pass frequencies up to Nyquist that the box removes, and the part of the blend
  left on it keeps them. That extra is in proportion to the short side, so it does not
  blur anisotropic footprints further. Ramped in from no shrinking (exactly the plain
  read) to a stretch of 2."""
  ramp = jnp.clip((long_squared - _PLAIN_STRETCH_SQUARED) / (4 - _PLAIN_STRETCH_SQUARED), 0, 1)
  reference = long_squared / 12 + 1 / 6
  extra = _WHOLE_PIXEL_EXTRA * (1 - 4 * plain_spread) * short_squared / 12
  return plain_spread + ramp * jnp.maximum(reference - plain_spread + extra, 0.0)


def read(images, coords, padding_mode, align_corners, implementation):
  """images `[B, H, W, C]` read, antialiased, at pixel coordinates `(x, y)` `[B, ..., Ho, Wo]`
  (padding not applied): float32 `[B, ..., Ho, Wo, C]`. Padding modes zeros, border and
  reflection."""
  images = images.astype(jnp.float32)
  sizes = level_sizes(*images.shape[1:3])
  x, y = coords
  on_image = _interpolation.read(images, coords, "bilinear", padding_mode, align_corners,
                                 implementation)  # Level 0: the plain read itself.
  if len(sizes) == 1:  # One pixel: nothing to filter.
    return on_image
  long_squared, short_squared = squared_stretches(x, y)
  if padding_mode == "reflection":  # Mirrored once, on the image itself.
    x, y = [_interpolation.apply_padding(c, size, padding_mode, align_corners)
            for c, size in zip((x, y), sizes[0][::-1])]
  target = _target_spread(_spread(x, y, 1.0), long_squared, short_squared)

  # The lower of the two levels whose spreads bracket the target. Level l's spread lies
  # in [(4**l - 1) / 4, (2 * 4**l - 1) / 4]: the last level whose least spread is within
  # the target is the lower one or the one above it.
  top = len(sizes) - 2
  candidate = jnp.floor(jnp.log2(3 * target / _FILTER_VARIANCE + 1) / 2)
  candidate = jnp.clip(jnp.where(jnp.isfinite(candidate), candidate, 0), 0, top).astype(jnp.int32)

  def spread_at(level):
    scale = jnp.exp2(-level.astype(jnp.float32))
    return _spread(x * scale + (scale - 1) / 2, y * scale + (scale - 1) / 2, scale)

  lower = jnp.where((candidate > 0) & (spread_at(candidate) > target), candidate - 1, candidate)
  lower_spread, upper_spread = spread_at(lower), spread_at(lower + 1)
  blend = jnp.clip((target - lower_spread) / (upper_spread - lower_spread), 0.0, 1.0)
  blend = jnp.where(jnp.isfinite(blend), blend, 0.0)

  atlas = pyramid_atlas(images, padding_mode)
  table = level_table(*images.shape[1:3])
  # Materialized: otherwise XLA recomputes the level arithmetic for every corner read.
  levels = jax.lax.optimization_barrier([_on_level(x, y, level, table, padding_mode)
                                         for level in (jnp.maximum(lower, 1), lower + 1)])
  coarse = [_interpolation.bilinear(atlas, coords, implementation) for coords in levels]
  on_image_weight = jnp.where(lower == 0, 1 - blend, 0.0)[..., None]
  first_weight = jnp.where(lower == 0, blend, 1 - blend)[..., None]
  second_weight = jnp.where(lower == 0, 0.0, blend)[..., None]
  return on_image_weight * on_image + first_weight * coarse[0] + second_weight * coarse[1]
