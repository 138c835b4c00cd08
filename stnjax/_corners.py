"""Bilinear and trilinear sampling in plain JAX: the reference math behind `_bilinear`.

Images `[B, *spatial, C]` (spatial `(H, W)` or `(D, H, W)`) are flattened to rows
`[B * prod(spatial), C]` and read at pixel coordinates `coords`, a tuple `(x, y)` or
`(x, y, z)` of `[B, ...]` arrays (padding already applied; x runs along the last
spatial axis), the batch folded into the row indices, so that one gather per corner
serves every image. Corners are taken with x varying fastest (top-left, top-right,
bottom-left, bottom-right in 2-D); the sampler reads `floor` and `floor + 1`, never
`ceil`, so the gradient at whole-pixel positions is one-sided, as in PyTorch.
"""

import functools
import itertools
import math
import operator

import jax
import jax.numpy as jnp

from stnjax import _jax_private

# Up to this many channels, XLA:CPU gets per-channel sums and products written out
# (see _channel_sum); above it, reductions and broadcasts.
UNROLLED_CHANNELS = 16


def index_and_mask(coord, size):
  """Integer index (always inside the axis) and in-bounds mask of integral float coordinates."""
  inside = (coord >= 0) & (coord <= size - 1)  # False for NaN.
  # Replace out-of-range values before the integer cast: huge or NaN never cast.
  index = jnp.where(inside, coord, 0.0).astype(jnp.int32)
  return index, inside


def _offsets(dims):
  """Each corner's (x, y[, z]) offsets in {0, 1}, x varying fastest."""
  return [offset[::-1] for offset in itertools.product((0, 1), repeat=dims)]


def corners(coords, spatial, unchecked=False):
  """The corners of points `coords` `[B, ...]` in images `[B, *spatial]` flattened to rows.

  `unchecked`: no bounds are checked. Each corner is read at its index in the
  flattened batch, `(image * H + row) * W + column` in 2-D, which the caller promises
  lies in the batch for every corner of every point (so no NaN either): a corner one
  column off the image reads the last pixel of the row above or the first of the row
  below.

  Returns:
    `(corners, fractions)`: corners is a list of `(row_index, inside)` (indices always
    valid, or promised to be when unchecked; `inside` False where the corner is off the
    image or the point is NaN, None when unchecked); fractions are the fractional parts
    of the coordinates, in the order of `coords`.
  """
  floors = [jnp.floor(c) for c in coords]
  batch = coords[0].shape[0]
  image_start = (jnp.arange(batch, dtype=jnp.int32) * math.prod(spatial)).reshape(
      (-1,) + (1,) * (coords[0].ndim - 1))
  sizes = spatial[::-1]  # Along x, y, z.
  strides = [math.prod(sizes[:axis]) for axis in range(len(sizes))]
  fractions = [c - f for c, f in zip(coords, floors)]
  if unchecked:  # One index, and each corner at a fixed step from it.
    first = image_start + sum(f.astype(jnp.int32) * stride for f, stride in zip(floors, strides))
    return [(first + sum(o * stride for o, stride in zip(offset, strides)), None)
            for offset in _offsets(len(coords))], fractions
  axis_corners = [[index_and_mask(floor + offset, size) for offset in (0, 1)]
                  for floor, size in zip(floors, sizes)]
  found = []
  for offset in _offsets(len(coords)):
    picked = [axis_corners[axis][o] for axis, o in enumerate(offset)]
    index, inside = image_start, None
    # Summed from the slowest axis down: in 2-D, start + row * width + col.
    for axis in reversed(range(len(coords))):
      axis_index, axis_inside = picked[axis]
      index = index + (axis_index * strides[axis] if strides[axis] != 1 else axis_index)
      inside = axis_inside if inside is None else inside & axis_inside
    found.append((index, inside))
  return found, fractions


def take_rows(rows, index):
  """`rows[index]` for int32 indices known to be inside `rows`: without the wrap of
  negative indices that jnp's indexing adds to every gather."""
  return rows.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)


def _factor(fraction, offset):
  return fraction if offset else 1 - fraction


def _product(values):
  return functools.reduce(operator.mul, values)


def _total(values):
  return functools.reduce(operator.add, values)


def weights(fractions):
  """Each corner's weight: the product of its axes' linear weights, x first."""
  return [_product([_factor(f, o) for f, o in zip(fractions, offset)])
          for offset in _offsets(len(fractions))]


def slopes(fractions):
  """For each axis, d(weight)/d(coordinate) of each corner."""
  per_axis = []
  for axis in range(len(fractions)):
    axis_slopes = []
    for offset in _offsets(len(fractions)):
      others = [_factor(f, o) for a, (f, o) in enumerate(zip(fractions, offset)) if a != axis]
      product = _product(others)
      axis_slopes.append(product if offset[axis] else -product)
    per_axis.append(axis_slopes)
  return per_axis


def _where_inside(inside, value):
  """value where the corner is on the image, else zero (inside None: on it everywhere)."""
  return value if inside is None else jnp.where(inside, value, 0.0)


def gather(rows, found, corner_weights, select=False):
  """Sum over corners of weight * row (zero off the image): float32 `[..., C]`.

  One expression for all reads, so that XLA fuses the gathers and the index
  arithmetic into one loop. Linear in rows; JAX transposes it to scatter-adds.
  A corner off the image reads a pixel at index 0 along the axis it is off; with
  `select`, its term is selected away rather than weighted by zero, which keeps an inf
  or NaN there out of the sum (as in PyTorch, which does not read it) and costs more.
  """
  out = 0.0
  for (index, inside), weight in zip(found, corner_weights):
    if select and inside is not None:
      out = out + jnp.where(inside[..., None], weight[..., None] * take_rows(rows, index), 0.0)
    else:
      out = out + _where_inside(inside, weight)[..., None] * take_rows(rows, index)
  return out


def _stand_ins_finite(images):
  """Whether every pixel that a corner off the image reads in its place (index 0 along
  some spatial axis) is finite: a few rows' worth of pixels."""
  faces = [jax.lax.slice_in_dim(images, 0, 1, axis=axis) for axis in range(1, images.ndim - 1)]
  return functools.reduce(operator.and_, [jnp.all(jnp.isfinite(face)) for face in faces])


def with_finite_stand_ins(images, gathering, unchecked=False):
  """`gathering(select)`, exact for any pixel values: selecting costs nothing measurable
  with one channel; with more, XLA:CPU's loop over `[..., C]` pays for it (2-3x), so on
  the CPU it selects only where a pixel that corners off the image read in their place
  is not finite (elsewhere zero times it is zero). Other platforms always select (no
  branch, whose predicate a GPU would wait for). Unchecked reads have no stand-ins."""
  if images.shape[-1] == 1 or unchecked:
    return gathering(True)

  def checked():
    return jax.lax.cond(_stand_ins_finite(images), lambda: gathering(False),
                        lambda: gathering(True))

  return jax.lax.platform_dependent(cpu=checked, default=lambda: gathering(True))


def _rows(images):
  return images.astype(jnp.float32).reshape(-1, images.shape[-1])


def read(images, *coords, unchecked=False):
  """images `[B, *spatial, C]` read at coords `[B, ...]`: float32 `[B, ..., C]`.
  `unchecked`: no bounds checks, as `corners` takes it (here and below)."""
  def gathering(select):
    found, fractions = corners(coords, images.shape[1:-1], unchecked)
    return gather(_rows(images), found, weights(fractions), select)

  return with_finite_stand_ins(images, gathering, unchecked)


def image_gradient(cotangent, *coords, spatial, unchecked=False):
  """The transpose of `read` in the images: float32 `[B, *spatial, C]` from the
  cotangent `[B, ..., C]` of the reads at coords `[B, ...]` (XLA's scatter-add)."""
  batch, channels = coords[0].shape[0], cotangent.shape[-1]
  found, fractions = corners(coords, spatial, unchecked)
  grad = jnp.zeros((batch * math.prod(spatial), channels), jnp.float32)
  for (index, inside), weight in zip(found, weights(fractions)):
    grad = grad.at[index].add(_where_inside(inside, weight)[..., None] * cotangent,
                              mode="promise_in_bounds", wrap_negative_indices=False)
  return grad.reshape((batch,) + tuple(spatial) + (channels,))


def coordinate_tangent(*args, unchecked=False):
  """`coordinate_tangent(*tangents, images, *coords)`: the change of
  `read(images, *coords)` along tangents of the coordinates `[B, ...]`: `[B, ..., C]`.

  Each corner is read once, times its weight's change along the tangent.
  """
  dims = (len(args) - 1) // 2
  tangents, images, coords = args[:dims], args[dims], args[dims + 1:]

  def gathering(select):
    found, fractions = corners(coords, images.shape[1:-1], unchecked)
    changes = [_total([t * s for t, s in zip(tangents, corner_slopes)])
               for corner_slopes in zip(*slopes(fractions))]
    return gather(_rows(images), found, changes, select)

  return with_finite_stand_ins(images, gathering, unchecked)


def _channel_sum(values, unrolled):
  """Sum over the last axis; with `unrolled` and few channels, as written-out adds
  (XLA:CPU reduces a short axis of gathered values several times slower)."""
  if not unrolled or values.shape[-1] > UNROLLED_CHANNELS:
    return values.sum(-1)
  return sum(values[..., c] for c in range(values.shape[-1]))


def coordinate_cotangent(cotangent, images, *coords, unchecked=False, unrolled=False,
                         one_loop=False):
  """The transpose of `coordinate_tangent` in its tangents: the cotangents of the
  coordinates, each `[B, ...]`, from the cotangent `[B, ..., C]` of the reads.

  `unrolled`: channel sums written out (`_channel_sum`); `one_loop`: the components
  computed together (`in_one_loop`). Both for XLA:CPU.
  """
  found, fractions = corners(coords, images.shape[1:-1], unchecked)
  rows = _rows(images)
  # Each corner's read meets the cotangent once (a gather with one consumer fuses into
  # it); the weights' slopes then combine the products.
  products = [_where_inside(inside, _channel_sum(cotangent * take_rows(rows, index), unrolled))
              for index, inside in found]
  cotangents = tuple(sum(slope * product for slope, product in zip(axis_slopes, products))
                     for axis_slopes in slopes(fractions))
  return in_one_loop(cotangents) if one_loop else cotangents


def in_one_loop(arrays):
  """`arrays` (of one shape) computed in one XLA loop, as the results of one reduction.

  XLA:CPU gives each separate result its own loop, and the gathered values they share
  are then written to memory and read back by each; a variadic reduction computes all
  of its results at each point. The reduced axis has length 2 (a zero pads it): XLA
  turns a reduction over a single element into a reshape.
  """
  padded = tuple(jnp.stack([a, jnp.zeros_like(a)], axis=-1) for a in arrays)
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return jax.lax.reduce(padded, zeros,
                        lambda x, y: tuple(a + b for a, b in zip(x, y)), (arrays[0].ndim,))


def in_two_chunks(function, *arrays):
  """`function(*arrays)` over two halves of the batch (axis 0) in a loop.

  For XLA:CPU: the loop's inputs are computed once, where otherwise every gather or
  scatter fused with the coordinates' producer re-derives them per element (2-3x
  slower backward passes). One chunk for an odd batch.
  """
  chunks = 2 if arrays[0].shape[0] % 2 == 0 else 1
  if chunks == 1:
    return function(*arrays)
  split = lambda a: a.reshape((chunks, a.shape[0] // chunks) + a.shape[1:])
  merge = lambda a: a.reshape((-1,) + a.shape[2:])
  out = jax.lax.map(lambda args: function(*args), tuple(split(a) for a in arrays))
  return jax.tree.map(merge, out)


def vary_alike(args):
  """The arrays made to vary over the same manual mesh axes (as JAX does for its own
  primitives' operands): inside `shard_map`, the union of theirs."""
  varying = [_jax_private.varying_axes(a) for a in args]
  every = frozenset().union(*varying)
  return [a if axes == every else jax.lax.pcast(a, tuple(sorted(every - axes)), to="varying")
          for a, axes in zip(args, varying)]


def in_chunks(function, *arrays, max_images):
  """`function(*arrays)`, one array, over chunks of the batch (axis 0) in a loop: at
  least two chunks of at most `max_images` images, as even as the batch allows.

  For XLA:CPU's scatter-adds, which land several times faster in an image gradient
  small enough to stay in cache (and the loop's inputs are computed once, as in
  `in_two_chunks`). Each chunk's result is written into the whole; where the batch
  does not divide, the last chunk starts earlier and writes some images again (an
  image's result depends on its own points only).
  """
  batch = arrays[0].shape[0]
  chunks = max(2, -(-batch // max(1, max_images)))
  size = -(-batch // chunks)
  if size >= batch:
    return function(*arrays)

  def body(i, whole):
    start = jnp.minimum(i * size, batch - size)
    chunk = function(*(jax.lax.dynamic_slice_in_dim(a, start, size) for a in arrays))
    return jax.lax.dynamic_update_slice_in_dim(whole, chunk, start, 0)

  result = jax.eval_shape(function, *(a[:size] for a in arrays))
  # The loop's carry varies as its results do.
  whole = vary_alike([jnp.zeros((batch,) + result.shape[1:], result.dtype), *arrays])[0]
  return jax.lax.fori_loop(0, -(-batch // size), body, whole)
