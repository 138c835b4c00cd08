"""Antialiased bilinear sampling: a prefiltered pyramid, read at each point's footprint.

Where a warp shrinks the image, an output pixel should show the average of the input
over its footprint (the image of the output pixel's square), not four input pixels.
Here each output pixel reads a pyramid of the image, each level half the size of the
one below, filtered with `[1, 3, 3, 1] / 8` along each axis, at a level chosen from the
footprint:

  * The footprint's sides are the singular values of the Jacobian
    `d(input pixel) / d(output pixel)`: from an affine theta once per image, otherwise
    (a projective theta, a grid, a thin-plate spline) from differences between the
    source positions of neighbouring output pixels, per point.
  * The box-filtered reference (the mean of bilinear reads over the footprint) has
    variance `long**2 / 12 + 1 / 6` along the long side: that is the read's target,
    plus some more where the plain read sits near a whole pixel, and at least level
    1's largest spread where the footprint's short side exceeds about 3.2 pixels
    (`_target_spread`).
  * Each level's read has a known variance: the cascaded filters' `(4**l - 1) / 4`
    plus the bilinear weights' own, `4**l * f * (1 - f)` for the fractional position
    `f` on that level. Two neighbouring levels are blended so that the read's variance
    is the target: continuous in theta, so values and gradients do not jump.

Where the transform does not shrink (long side <= 1: magnification, rotation, the
identity) the blend weight is exactly zero and the result is the plain bilinear read of
the image itself (the same primitive at the same coordinates). The filter is isotropic,
sized by the footprint's long side, so an anisotropic footprint is also blurred along
its short side.

The coarser levels are laid out in one image (an atlas, `stnjax._pyramid`, whose
transpose is written out), stacked, each with a ring of zeros, so that one bilinear read
with the clamped coordinates of any level sees exactly that level with zero padding,
and every corner it reads is inside the flattened atlas (so the reads check no bounds,
for atlases under 2**24 rows and columns, where float32 coordinates place it exactly).
Each point then needs two reads: the image and level 1, or two neighbouring coarser
levels. All points make the same three (the image, and two of
the atlas); the image read is skipped where no point of the batch needs it (every
point shrinks by more than about 3.2x), the atlas and both its reads where none does,
the second atlas read where only it is not needed. A read a point does not need goes
to a fixed pixel, which stays in cache, and is selected away rather than weighted by
zero, so that an inf or NaN it meets reaches neither the value nor the gradient. The
per-point level arithmetic uses the bits of float32 (exact powers of two and floor log2),
finds the neighbouring level's positions from the candidate level's, and stores its
results for the atlas reads once before them (`_materialized`; on the CPU also its
intermediate stages); the image read recomputes its points, the padded coordinates.
"""

import functools

import jax
import jax.numpy as jnp

from stnjax import _corners
from stnjax import _interpolation
from stnjax import _pyramid

# float32 holds every integer up to this exactly.
_EXACT_FLOAT32_INTEGERS = 2**24
# The [1, 3, 3, 1] / 8 filter's variance, in pixels of the finer level.
_FILTER_VARIANCE = 0.75
# A read is plain bilinear where the squared stretch is at most this: exactly 1 would
# let float rounding of a rotation's differences blur it.
_PLAIN_STRETCH_SQUARED = 1 + 2**-10
# How much more a read at a whole pixel is blurred, in units of the footprint's short
# side's box variance (chosen on zone plates: benchmarks/antialias.py).
_WHOLE_PIXEL_EXTRA = 2.0
# Level 1's largest spread: its filters' 0.75 plus the bilinear weights' 1 at worst.
_LEVEL_ONE_MOST_SPREAD = _FILTER_VARIANCE + 1.0
# Between these squared short sides (2.4 and 3.2 pixels) the target is raised to at
# least level 1's largest spread, so that beyond them no read touches the image itself
# (chosen on zone plates: benchmarks/antialias.py).
_PYRAMID_ONLY_SHORT_SQUARED = (6.0, 10.0)


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


def pointwise_jacobian(x, y):
  """d(x, y) / d(output column, row) at each output pixel, `((x_col, x_row), (y_col,
  y_row))`, from differences between neighbouring output pixels."""
  return _derivatives(x), _derivatives(y)


def squared_stretches(jacobian):
  """The squared singular values of the Jacobian `((x_col, x_row), (y_col, y_row))`,
  largest first: the footprint's squared long and short sides, each of the entries'
  shape."""
  (x_col, x_row), (y_col, y_row) = jacobian
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


def _spread(at_x, at_y, area):
  """Variance of a read at level coordinates (at_x, at_y) on the level of `area = 4**l`:
  the cascaded filters' `(4**l - 1) / 4` plus the bilinear weights' own."""
  # On the image itself (area 1) exactly the bilinear weights' variance, however XLA
  # contracts the products: the plain read's spread, which its target is compared with.
  return (_FILTER_VARIANCE * (area - 1) / 3
          + area * (_bilinear_spread(at_x) + _bilinear_spread(at_y)) / 2)


def _power_of_two(exponent):
  """`2.0 ** exponent` for int32 exponents in [-126, 127], exactly, from the bits (cheaper
  than exp2, and exact)."""
  return jax.lax.bitcast_convert_type((exponent + 127) << 23, jnp.float32)


def _floor_log2(value):
  """`floor(log2(value))` for finite float32 `value >= 1`, from the exponent bits."""
  return (jax.lax.bitcast_convert_type(value, jnp.int32) >> 23) - 127


def _halvings_sum(n):
  """`sum over k >= 1 of n // 2**k` for int32 `n >= 0`: `n - popcount(n)`."""
  return n - jax.lax.population_count(n)


def _place(level, height, width):
  """Row, height and width in the atlas of coarser level `level` (int32 >= 1) of an image
  `height x width`, as `_pyramid.level_table` lays them out, computed rather than looked
  up: level `k` is `((size - 1) >> k) + 1` pixels along an axis, and the rows above level
  `l` are a zero row and levels 1 to `l - 1`, each followed by two zero rows."""
  rows_above = (_halvings_sum(height - 1) - _halvings_sum((height - 1) >> (level - 1))
                + 3 * (level - 1) + 1)
  return [a.astype(jnp.float32)
          for a in (rows_above, ((height - 1) >> level) + 1, ((width - 1) >> level) + 1)]


def _level_coords(x, y, level):
  """Image pixel positions (x, y) on level `level` (int32, the shape of x), and that
  level's area `4**level` (exact powers of two)."""
  scale = _power_of_two(-level)
  return x * scale + (scale - 1) / 2, y * scale + (scale - 1) / 2, _power_of_two(2 * level)


def _in_atlas(at_x, at_y, level, image_size, padding_mode):
  """Coordinates (at_x, at_y) on coarser level `level` (>= 1) clamped to the level (and
  its zero ring for zeros padding) and moved to its place in the atlas, where every
  corner is inside the flattened atlas (`_pyramid.level_table`); NaN to the low end."""
  row, height, width = _place(level, *image_size)
  if padding_mode == "zeros":
    low, high_x, high_y = -1.0, width, height
  else:
    low, high_x, high_y = 0.0, width - 1, height - 1

  def clamp(coord, high):  # Zero gradient at either end, as the plain read's padding.
    return jnp.where(coord > low, jnp.where(coord < high, coord, high), low)

  return clamp(at_x, high_x) + _pyramid.LEVEL_COLUMN, clamp(at_y, high_y) + row


def _target_spread(plain_spread, long_squared, short_squared):
  """The variance a read should have: the box-filtered reference's along the footprint's
  long side, `long_squared / 12 + 1 / 6` (the box, and the bilinear weights within it), and
  more where the plain read sits near a whole pixel (`plain_spread` near 0): there its
  taps pass frequencies up to Nyquist that the box removes, and the part of the blend
  left on it keeps them. That extra is in proportion to the short side, so it does not
  blur anisotropic footprints further. Ramped in from no shrinking (exactly the plain
  read) to a stretch of 2.

  Where the footprint's short side exceeds about 3.2 pixels, the target is at least level
  1's largest spread, so that every read is of the pyramid: the image, unfiltered, holds
  frequencies that alias at that shrinking, and a blend that keeps some of it is further
  from the box average than level 1 alone (on zone plates; it also spares the image
  read). Ramped in from a short side of about 2.4 pixels, so the target stays continuous."""
  ramp = jnp.clip((long_squared - _PLAIN_STRETCH_SQUARED) / (4 - _PLAIN_STRETCH_SQUARED), 0, 1)
  reference = long_squared / 12 + 1 / 6
  extra = _WHOLE_PIXEL_EXTRA * (1 - 4 * plain_spread) * short_squared / 12
  target = plain_spread + ramp * jnp.maximum(reference - plain_spread + extra, 0.0)
  start, full = _PYRAMID_ONLY_SHORT_SQUARED
  least = _LEVEL_ONE_MOST_SPREAD * jnp.clip((short_squared - start) / (full - start), 0, 1)
  return jnp.maximum(target, least)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _materialized(arrays, on_every_platform=True):
  """`arrays` (float32, of one shape), computed once and stored, so that XLA does not fuse
  their arithmetic into each consumer: into every corner of every read and, on the CPU,
  once per channel. XLA:CPU drops `optimization_barrier`; there they are the results of
  one loop (`_corners.in_one_loop`). With `on_every_platform=False`, only on the CPU,
  where XLA otherwise splits the level arithmetic into loops that recompute it."""
  default = (lambda *a: tuple(jax.lax.optimization_barrier(a))) if on_every_platform else (
      lambda *a: a)
  return jax.lax.platform_dependent(
      *arrays, cpu=lambda *a: _corners.in_one_loop(a), default=default)


@_materialized.defjvp
def _materialized_jvp(on_every_platform, primals, tangents):
  return _materialized(primals[0], on_every_platform), tangents[0]


def read(images, coords, padding_mode, align_corners, implementation, jacobian=None):
  """images `[B, H, W, C]` read, antialiased, at pixel coordinates `(x, y)` `[B, ..., Ho, Wo]`
  (padding not applied): float32 `[B, ..., Ho, Wo, C]`. Padding modes zeros, border and
  reflection. jacobian: d(x, y) / d(output column, row) as `grid.source_jacobian` gives
  it, `[B, ..., 1, 1]` for an affine map; None takes it from the points' differences."""
  images = images.astype(jnp.float32)
  sizes = _pyramid.level_sizes(*images.shape[1:3])
  x, y = coords
  padded = [_interpolation.apply_padding(c, size, padding_mode, align_corners)
            for c, size in zip(coords, sizes[0][::-1])]
  if len(sizes) == 1:  # One pixel: nothing to filter.
    return _interpolation.bilinear(images, padded, implementation)
  long_squared, short_squared = squared_stretches(
      pointwise_jacobian(x, y) if jacobian is None else jacobian)
  if padding_mode == "reflection":  # Mirrored once, on the image itself.
    x, y = [_interpolation.apply_padding(c, size, padding_mode, align_corners)
            for c, size in zip((x, y), sizes[0][::-1])]
  target = _target_spread(_spread(x, y, 1.0), long_squared, short_squared)

  # The lower of the two levels whose spreads bracket the target. Level l's spread lies
  # in [(4**l - 1) / 4, (2 * 4**l - 1) / 4]: the last level whose least spread is within
  # the target, floor(log2(4 * target + 1) / 2), is the lower one or the one above it.
  top = len(sizes) - 2
  # >> 1 is floor division by 2 (jnp's // adds a sign correction for negative numbers).
  candidate = jnp.clip(_floor_log2(3 / _FILTER_VARIANCE * target + 1) >> 1, 0, top)
  candidate = jnp.where(jnp.isfinite(target), candidate, 0)
  # On the CPU, stored once each (here and below) rather than recomputed by every
  # later loop that reads them.
  target, candidate = _materialized((target, candidate.astype(jnp.float32)), False)
  candidate = candidate.astype(jnp.int32)
  candidate_x, candidate_y, candidate_area = _level_coords(x, y, candidate)
  candidate_spread = _spread(candidate_x, candidate_y, candidate_area)
  down = (candidate > 0) & (candidate_spread > target)
  candidate_x, candidate_y, candidate_spread, down = _materialized(
      (candidate_x, candidate_y, candidate_spread, down.astype(jnp.float32)), False)
  down = down > 0
  other = jnp.where(down, candidate - 1, candidate + 1)
  # The neighbouring level's positions from the candidate's: x on level l + 1 is
  # (x on level l - 1 / 2) / 2.
  other_x, other_y = [jnp.where(down, 2 * c + 0.5, 0.5 * c - 0.25)
                      for c in (candidate_x, candidate_y)]
  other_spread = _spread(other_x, other_y, _power_of_two(2 * other))
  lower = jnp.where(down, other, candidate)
  lower_spread = jnp.where(down, other_spread, candidate_spread)
  upper_spread = jnp.where(down, candidate_spread, other_spread)
  blend = jnp.clip((target - lower_spread) / (upper_spread - lower_spread), 0.0, 1.0)
  blend = jnp.where(jnp.isfinite(blend), blend, 0.0)

  # The two coarser reads: levels lower and lower + 1, or level 1 (and none) where lower
  # is the image itself.
  def pick(on_lower, on_upper):
    return jnp.where(down, on_upper, on_lower), jnp.where(down, on_lower, on_upper)

  (lower_x, upper_x), (lower_y, upper_y) = pick(candidate_x, other_x), pick(candidate_y, other_y)
  first = (jnp.where(lower == 0, upper_x, lower_x), jnp.where(lower == 0, upper_y, lower_y),
           jnp.maximum(lower, 1))
  image_size = sizes[0]
  on_image_used = lower == 0
  coarse_used = (lower > 0) | (blend > 0)
  second_used = (lower > 0) & (blend > 0)

  def where_used(used, point):
    return [jnp.where(used, c, 0.0) for c in point]

  per_point = _materialized((
      *where_used(coarse_used, _in_atlas(*first, image_size, padding_mode)),
      *where_used(second_used, _in_atlas(upper_x, upper_y, lower + 1, image_size, padding_mode)),
      blend, on_image_used.astype(jnp.float32)))
  blend, on_image_used = per_point[4], per_point[5] > 0
  # The image's points: the padded coordinates, cheap to recompute in the read.
  # Whether some point of the batch needs each read, from the least and the greatest of
  # one code (reductions that a sharded batch also runs across its devices): 0 or 1 on
  # the image, 2 or 3 off it, plus 1 where a second read is blended in.
  mixing = blend > 0
  reads = jnp.where(on_image_used, 0, 2) + mixing.astype(jnp.int32)
  least, most = jnp.min(reads, initial=3), jnp.max(reads, initial=0)
  image_needed, coarse_needed, second_needed = least < 2, most > 0, most > 2

  def zeros():
    # Zeros that vary across a shard_map mesh as the reads do (lax.cond's branches must
    # agree): from the points and the images, not a constant; made in the branch that
    # returns them.
    return (jnp.zeros_like(blend)[..., None]
            + jnp.zeros_like(images[:, 0, 0]).reshape(
                images.shape[:1] + (1,) * (blend.ndim - 1) + images.shape[-1:]))

  # A read no point of the batch needs is skipped (the image where every point's
  # footprint has a short side over about 3.2 pixels or a long one over 4.4, sqrt(19);
  # the pyramid where no point's exceeds 1); under vmap both branches run, as a select.
  def read_if(needed, array, points, unchecked=False):
    return jax.lax.cond(needed, lambda: _interpolation.bilinear(
        array, points(), implementation, unchecked), zeros)

  # Every corner of an atlas read is inside the atlas where float32 places points
  # exactly in it (`_pyramid.level_table`); beyond, the reads check bounds.
  unchecked = max(_pyramid.atlas_shape(images.shape)[1:3]) < _EXACT_FLOAT32_INTEGERS

  def coarse():
    atlas = _pyramid.atlas(images, padding_mode)
    return [_interpolation.bilinear(atlas, per_point[0:2], implementation, unchecked),
            read_if(second_needed, atlas, lambda: per_point[2:4], unchecked)]

  on_image_read = read_if(image_needed, images, lambda: where_used(on_image_used, padded))
  first_read, second_read = jax.lax.cond(coarse_needed, coarse, lambda: [zeros(), zeros()])
  low = jnp.where(on_image_used[..., None], on_image_read, first_read)
  high = jnp.where(on_image_used[..., None], first_read, second_read)
  # Where nothing is blended, neither the value nor the gradient sees the unused read.
  mixing = mixing[..., None]
  mixed_low, mixed_high = jnp.where(mixing, low, 0.0), jnp.where(mixing, high, 0.0)
  blend = blend[..., None]
  return jnp.where(mixing, (1 - blend) * mixed_low + blend * mixed_high, low)
