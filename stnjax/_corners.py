"""Bilinear sampling in plain JAX: the reference math behind the primitives of `_bilinear`.

Images `[B, H, W, C]` are flattened to rows `[B * H * W, C]` and read at pixel
coordinates x, y `[B, ...]` (padding already applied), the batch folded into the row
indices, so that one gather per corner serves every image. Corners are taken in the
order top-left, top-right, bottom-left, bottom-right; the sampler reads `floor` and
`floor + 1`, never `ceil`, so the gradient at whole-pixel positions is one-sided, as
in PyTorch.
"""

import jax
import jax.numpy as jnp

# Up to this many channels, XLA:CPU gets per-channel sums and products written out
# (see _channel_sum); above it, reductions and broadcasts.
UNROLLED_CHANNELS = 16


def index_and_mask(coord, size):
  """Integer index (always inside the axis) and in-bounds mask of integral float coordinates."""
  inside = (coord >= 0) & (coord <= size - 1)  # False for NaN.
  # Replace out-of-range values before the integer cast: huge or NaN never cast.
  index = jnp.where(inside, coord, 0.0).astype(jnp.int32)
  return index, inside


def corners(x, y, height, width):
  """The 4 corners of points x, y `[B, ...]` in images `[B, H, W]` flattened to rows.

  Returns:
    `(corners, right, bottom)`: corners is a list of `(row_index, inside)` (indices
    always valid, `inside` False where the corner is off the image or the point is
    NaN); right and bottom are the fractional parts of x and y.
  """
  x_left, y_top = jnp.floor(x), jnp.floor(y)
  image_start = (jnp.arange(x.shape[0], dtype=jnp.int32) * (height * width)).reshape(
      (-1,) + (1,) * (x.ndim - 1))
  found = []
  for row_coord in (y_top, y_top + 1):
    row, row_inside = index_and_mask(row_coord, height)
    for col_coord in (x_left, x_left + 1):
      col, col_inside = index_and_mask(col_coord, width)
      found.append((image_start + row * width + col, row_inside & col_inside))
  return found, x - x_left, y - y_top


def weights(right, bottom):
  """Each corner's bilinear weight."""
  return ((1 - right) * (1 - bottom), right * (1 - bottom), (1 - right) * bottom,
          right * bottom)


def slopes(right, bottom):
  """d(weight)/dx and d(weight)/dy of each corner."""
  return ((bottom - 1, 1 - bottom, -bottom, bottom),
          (right - 1, -right, 1 - right, right))


def gather(rows, found, corner_weights):
  """Sum over corners of weight * row (zero off the image): float32 `[..., C]`.

  One expression for all four reads, so that XLA fuses the gathers and the index
  arithmetic into one loop. Linear in rows; JAX transposes it to four scatter-adds.
  """
  out = 0.0
  for (index, inside), weight in zip(found, corner_weights):
    out = out + jnp.where(inside, weight, 0.0)[..., None] * rows[index]
  return out


def _rows(images):
  batch, height, width, channels = images.shape
  return images.astype(jnp.float32).reshape(batch * height * width, channels)


def read(images, x, y):
  """images `[B, H, W, C]` read at x, y `[B, ...]`: float32 `[B, ..., C]`."""
  found, right, bottom = corners(x, y, *images.shape[1:3])
  return gather(_rows(images), found, weights(right, bottom))


def image_gradient(cotangent, x, y, height, width):
  """The transpose of `read` in the images: float32 `[B, H, W, C]` from the cotangent
  `[B, ..., C]` of the reads at x, y `[B, ...]` (XLA's scatter-add)."""
  batch, channels = x.shape[0], cotangent.shape[-1]
  found, right, bottom = corners(x, y, height, width)
  grad = jnp.zeros((batch * height * width, channels), jnp.float32)
  for (index, inside), weight in zip(found, weights(right, bottom)):
    grad = grad.at[index].add(jnp.where(inside, weight, 0.0)[..., None] * cotangent,
                              mode="promise_in_bounds")
  return grad.reshape(batch, height, width, channels)


def coordinate_tangent(tangent_x, tangent_y, images, x, y):
  """The change of `read(images, x, y)` along tangents of x and y `[B, ...]`: `[B, ..., C]`.

  Each corner is read once, times its weight's change along the tangent.
  """
  found, right, bottom = corners(x, y, *images.shape[1:3])
  x_slopes, y_slopes = slopes(right, bottom)
  changes = [tangent_x * x_slope + tangent_y * y_slope
             for x_slope, y_slope in zip(x_slopes, y_slopes)]
  return gather(_rows(images), found, changes)


def _channel_sum(values, unrolled):
  """Sum over the last axis; with `unrolled` and few channels, as written-out adds
  (XLA:CPU reduces a short axis of gathered values several times slower)."""
  if not unrolled or values.shape[-1] > UNROLLED_CHANNELS:
    return values.sum(-1)
  return sum(values[..., c] for c in range(values.shape[-1]))


def coordinate_cotangent(cotangent, images, x, y, unrolled=False):
  """The transpose of `coordinate_tangent` in its tangents: the cotangents of x and y,
  each `[B, ...]`, from the cotangent `[B, ..., C]` of the reads."""
  found, right, bottom = corners(x, y, *images.shape[1:3])
  rows = _rows(images)
  # Each corner's read meets the cotangent once (a gather with one consumer fuses into
  # it); the weights' slopes then combine the four products.
  products = [jnp.where(inside, _channel_sum(cotangent * rows[index], unrolled), 0.0)
              for index, inside in found]
  return tuple(sum(slope * product for slope, product in zip(corner_slopes, products))
               for corner_slopes in slopes(right, bottom))


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
