"""The prefiltered pyramid of an image, laid out in one atlas, as a pair of primitives.

Each level is half the size of the one below, filtered with `[1, 3, 3, 1] / 8` along each
axis (`_halve_axis`); the coarser levels (all but the image itself) are stacked in one
image, each in a ring of zeros, with room enough that every corner of a bilinear read
anywhere on a level or on its ring lies inside the flattened atlas (`level_table`; below
2**24 rows and columns, where float32 places it exactly).

The atlas is linear in the image. `atlas_p` builds it and `atlas_transpose_p` is its
transpose, written out (`_expand_axis`): plain autodiff of the filters' strided slices and
concatenations transposes into a zero-padded copy of every level per slice, which XLA
materializes, many times the forward's work and memory. Each primitive is the other's
transpose and its own JVP, so derivatives of every order and mode hold; batching folds the
mapped axis into the image batch, and binding goes through `_bilinear.bind` (shard_map,
explicit sharding), as the bilinear primitives do.
"""

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np

from stnjax import _bilinear

atlas_p = Primitive("stnjax_pyramid_atlas")
atlas_transpose_p = Primitive("stnjax_pyramid_atlas_transpose")


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


def _expand_axis(cotangent, axis, size, padding_mode):
  """The transpose of `_halve_axis` along axis of an image `size` pixels long: the
  cotangent `(size + 1) // 2` long along axis spread back over the image's pixels.

  Pixel 2i meets result i with weight 3 and result i - 1 with weight 1; pixel 2i + 1
  meets result i with 3 and result i + 1 with 1. The pixels the image was extended with
  (`_halve_axis`) pass theirs to the pixels they copy. Even and odd pixels are computed
  side by side and interleaved.
  """
  def take(array, start, stop):
    return jax.lax.slice_in_dim(array, start, stop, axis=axis)

  def placed(piece, position, length):  # piece (one long along axis) at position, zeros around
    config = [(0, 0, 0)] * piece.ndim
    config[axis] = (position, length - position - 1, 0)
    return jax.lax.pad(piece, jnp.zeros((), piece.dtype), config)

  half = cotangent.shape[axis]
  copies = padding_mode != "zeros"
  first, last = take(cotangent, 0, 1), take(cotangent, half - 1, half)
  none = jnp.zeros_like(first)
  # Before pixel 0: a copy of it (border, reflection). After the last pixel of an even
  # image: a copy of it; after an odd image's last pixel, a copy of it and then the last
  # pixel again (border) or the one before it (reflection).
  before = jnp.concatenate([first if copies else none, take(cotangent, 0, half - 1)], axis)
  after = jnp.concatenate([take(cotangent, 1, half),
                           last if copies and size % 2 == 0 else none], axis)
  even, odd = 3 * cotangent + before, 3 * cotangent + after
  if copies and size % 2:
    last_again = padding_mode == "border" or size == 1
    even = even + placed((4 if last_again else 3) * last, half - 1, half)
    if not last_again:
      odd = odd + placed(last, half - 2, half)
  pairs = jnp.stack([even, odd], axis=axis + 1)
  spread = pairs.reshape(cotangent.shape[:axis] + (2 * half,) + cotangent.shape[axis + 1:])
  return take(spread, 0, size) * 0.125


# Each level's first column in the atlas: column 0 is zeros.
LEVEL_COLUMN = 1


def level_table(height: int, width: int) -> np.ndarray:
  """Where `atlas` puts each coarser level: int64 `[levels, 3]` of `(row, height, width)`,
  from level 1, each level's first column `LEVEL_COLUMN`. Row 0 is zeros, two zero rows
  follow each level (three the last), and a zero column is on either side of level 1
  (the widest). A bilinear read anywhere on a level or its ring of zeros then reads only
  that level and zeros, at indices inside the flattened atlas: a corner one column right
  of level 1's ring (or of any level as wide) is the next row's first pixel (zero; for
  the last level, in the third row after it). With float32 coordinates this holds while
  the atlas's place arithmetic is exact, for atlases under 2**24 rows and columns."""
  sizes = level_sizes(height, width)[1:]
  rows = 1 + np.cumsum([0] + [h + 2 for h, _ in sizes[:-1]])
  return np.asarray([(row, h, w) for row, (h, w) in zip(rows, sizes)], np.int64)


def _atlas_reference(images, padding_mode):
  """`atlas`'s computation: level 1 padded to the atlas, each coarser level written in."""
  table = level_table(*images.shape[1:3])
  rows = atlas_shape(images.shape)[1]
  atlas = None
  level = images
  for row in table[:, 0]:
    level = _halve_axis(_halve_axis(level, 1, padding_mode), 2, padding_mode)
    if atlas is None:  # Level 1 padded to the atlas.
      atlas = jnp.pad(level, ((0, 0), (row, rows - row - level.shape[1]), (LEVEL_COLUMN, 1),
                              (0, 0)))
    else:  # Written in place: no padded copies of each level to concatenate.
      atlas = jax.lax.dynamic_update_slice(atlas, level, (0, row, LEVEL_COLUMN, 0))
  return atlas


def _atlas_transpose_reference(cotangent, padding_mode, spatial):
  """The transpose of `_atlas_reference` for images `[B, *spatial, C]`: from the coarsest
  level down, each level's cotangent (its block of the atlas's, plus the coarser level's
  spread back) is spread back over the level below."""
  sizes = level_sizes(*spatial)
  below = None
  for (row, height, width), finer in zip(level_table(*spatial)[::-1], sizes[-2::-1]):
    level = jax.lax.slice(cotangent, (0, row, LEVEL_COLUMN, 0),
                          (cotangent.shape[0], row + height, LEVEL_COLUMN + width,
                           cotangent.shape[3]))
    if below is not None:
      level = level + below
    below = _expand_axis(_expand_axis(level, 2, finer[1], padding_mode), 1, finer[0],
                         padding_mode)
  return below


def atlas(images, padding_mode):
  """The coarser levels of images `[B, H, W, C]` (all but the image itself) in one atlas
  `[B, Ha, Wa, C]`, stacked from the top as `level_table` says, zeros around them.
  float32."""
  return _bilinear.bind(atlas_p, images.astype(jnp.float32), padding_mode=padding_mode)


def atlas_shape(shape):
  """The atlas's shape for images of shape `[B, H, W, C]`."""
  table = level_table(*shape[1:3])
  return (shape[0], int(table[-1, 0] + table[-1, 1] + 3), int(LEVEL_COLUMN + table[0, 2] + 1),
          shape[3])


atlas_p.def_abstract_eval(
    lambda images, **_: images.update(shape=atlas_shape(images.shape), dtype=jnp.float32))
atlas_transpose_p.def_abstract_eval(
    lambda cotangent, *, spatial, **_: cotangent.update(
        shape=cotangent.shape[:1] + spatial + cotangent.shape[3:], dtype=jnp.float32))

for _primitive, _reference in ((atlas_p, _atlas_reference),
                               (atlas_transpose_p, _atlas_transpose_reference)):
  _primitive.def_impl(_bilinear.compiled_impl(_primitive))
  mlir.register_lowering(_primitive, mlir.lower_fun(_reference, multiple_results=False))
  batching.primitive_batchers[_primitive] = _bilinear.batch_rule(_primitive)

ad.deflinear2(atlas_p, lambda cotangent, images, *, padding_mode: [_bilinear.bind(
    atlas_transpose_p, cotangent, padding_mode=padding_mode,
    spatial=tuple(images.aval.shape[1:3]))])
ad.deflinear2(atlas_transpose_p, lambda cotangent, _, *, padding_mode, spatial: [
    _bilinear.bind(atlas_p, cotangent, padding_mode=padding_mode)])
