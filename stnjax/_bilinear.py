"""Bilinear sampling with a hand-written VJP: the hot path of `stnjax.sample`.

Images are flattened to rows `[B * H * W, C]` and read at pixel coordinates x, y
`[B, ...]` (padding already applied), the batch folded into the row indices, so one
gather per corner serves every image. Autodiff of the same forward code is 5-20x
slower on XLA's CPU backend, so the backward pass is written out:

  * the four corner reads are recomputed, not stored;
  * the coordinate gradient is cotangent . sum_k slope_k * value_k, where slope_k is
    d(weight_k)/dx (or dy): one fused loop per axis, like the forward pass;
  * the image gradient scatters weight_k * cotangent into each corner's row: on the
    CPU with stnjax's compiled kernel when it is built (`_cpu_kernel`), elsewhere with
    XLA's scatter-add. XLA:CPU runs the scatter on one thread, and its temporaries
    (~60 MB at 16x224x224x3) are freshly mapped and page-faulted on every call;
    the kernel writes straight into the result, one image per task;
  * the rest runs over two halves of the batch in a loop: the loop boundary makes
    XLA materialize the coordinates, where otherwise every gather re-derives them.
"""

import functools

import jax
import jax.numpy as jnp

from stnjax import _cpu_kernel

# Few channels are summed with written-out adds rather than a reduction (see
# _channel_sum); more than this many use the reduction.
UNROLLED_CHANNELS = 16


def index_and_mask(coord, size):
  """Integer index (always inside the axis) and in-bounds mask of integral float coordinates."""
  inside = (coord >= 0) & (coord <= size - 1)  # False for NaN.
  # Replace out-of-range values before the integer cast: huge or NaN never cast.
  index = jnp.where(inside, coord, 0.0).astype(jnp.int32)
  return index, inside


def _channel_sum(values):
  """Sum over the last axis `[..., C] -> [...]`, written out for few channels: XLA:CPU
  reduces a short axis of gathered values ~20x slower than these elementwise adds."""
  channels = values.shape[-1]
  if channels > UNROLLED_CHANNELS:
    return values.sum(-1)
  return sum(values[..., c] for c in range(channels))


def _bilinear_corners(x, y, height, width):
  """The 4 corners of points x, y `[B, ...]` in images `[B, H, W]` flattened to rows.

  Returns:
    `(corners, right, bottom)`: corners is a list of `(row_index, inside)` for the
    top-left, top-right, bottom-left and bottom-right corners (indices always valid,
    `inside` False where the corner is off the image or the point is NaN); right and
    bottom are the fractional parts of x and y.
  """
  x_left, y_top = jnp.floor(x), jnp.floor(y)  # floor and floor + 1: never ceil.
  image_start = (jnp.arange(x.shape[0], dtype=jnp.int32) * (height * width)).reshape(
      (-1,) + (1,) * (x.ndim - 1))
  corners = []
  for row_coord in (y_top, y_top + 1):
    row, row_inside = index_and_mask(row_coord, height)
    for col_coord in (x_left, x_left + 1):
      col, col_inside = index_and_mask(col_coord, width)
      corners.append((image_start + row * width + col, row_inside & col_inside))
  return corners, x - x_left, y - y_top


def _corner_weights(right, bottom):
  return ((1 - right) * (1 - bottom), right * (1 - bottom), (1 - right) * bottom,
          right * bottom)


def _corner_slopes(right, bottom):
  """d(weight)/dx and d(weight)/dy of each corner."""
  # Corners in the order top-left, top-right, bottom-left, bottom-right.
  return ((bottom - 1, 1 - bottom, -bottom, bottom),
          (right - 1, -right, 1 - right, right))


def _weighted_corner_sum(rows, corners, weights):
  """Sum over corners of weight * value (zero off the image): `[..., C]` float32.

  One expression for all four reads, so that XLA fuses the gathers and the index
  arithmetic into a single loop.
  """
  out = 0.0
  for (index, inside), weight in zip(corners, weights):
    out = out + jnp.where(inside, weight, 0.0)[..., None] * rows[index]
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _bilinear_rows(rows, x, y, height, width, implementation):
  """Images flattened to rows `[B * H * W, C]` read at x, y `[B, ...]`: float32 `[B, ..., C]`.

  The custom VJP recomputes the four corner reads instead of storing them, gets the
  coordinate gradient from two more weighted corner sums (with the weights' slopes),
  and scatters `weight * cotangent` per corner into the image gradient. Autodiff of
  the same code is 5-20x slower on XLA's CPU backend: it splits the reads into
  separate gathers that each redo the index arithmetic.
  """
  del implementation  # Only the backward pass differs.
  corners, right, bottom = _bilinear_corners(x, y, height, width)
  return _weighted_corner_sum(rows, corners, _corner_weights(right, bottom))


def _bilinear_rows_forward(rows, x, y, height, width, implementation):
  return _bilinear_rows(rows, x, y, height, width, implementation), (rows, x, y)


def _bilinear_rows_backward(height, width, implementation, residuals, cotangent):
  rows, x, y = residuals

  def with_xla_scatter(rows, x, y, cotangent):
    return _backward_in_chunks(rows, x, y, cotangent, height, width, scatter=True)

  def with_cpu_kernel(rows, x, y, cotangent):
    grad_x, grad_y = _backward_in_chunks(rows, x, y, cotangent, height, width, scatter=False)
    grad_image = _cpu_kernel.bilinear_image_grad(x, y, cotangent, height, width)
    return grad_image.reshape(rows.shape), grad_x, grad_y

  if implementation == "auto" and _cpu_kernel.AVAILABLE:
    grads = jax.lax.platform_dependent(rows, x, y, cotangent, cpu=with_cpu_kernel,
                                       default=with_xla_scatter)
  else:
    grads = with_xla_scatter(rows, x, y, cotangent)
  return tuple(grad.astype(primal.dtype) for grad, primal in zip(grads, (rows, x, y)))


def _backward_in_chunks(rows, x, y, cotangent, height, width, scatter):
  """Gradients of (image rows, x, y) with `scatter`, else of (x, y) only."""
  batch = x.shape[0]
  # Two chunks of the batch in a loop: the loop boundary makes XLA materialize the
  # coordinates, so the gathers inside do only cheap index arithmetic.
  chunks = 2 if batch % 2 == 0 else 1
  per_chunk = lambda a: a.reshape((chunks, a.shape[0] // chunks) + a.shape[1:])
  merge = lambda a: a.reshape((-1,) + a.shape[2:])
  grads = jax.lax.map(
      lambda args: _backward_chunk(*args, height, width, scatter),
      (per_chunk(rows), per_chunk(x), per_chunk(y), per_chunk(cotangent)))
  return tuple(merge(grad) for grad in grads)


def _backward_chunk(rows, x, y, cotangent, height, width, scatter):
  corners, right, bottom = _bilinear_corners(x, y, height, width)
  x_slopes, y_slopes = _corner_slopes(right, bottom)
  grad_x = _channel_sum(cotangent * _weighted_corner_sum(rows, corners, x_slopes))
  grad_y = _channel_sum(cotangent * _weighted_corner_sum(rows, corners, y_slopes))
  if not scatter:
    return grad_x, grad_y
  grad_rows = jnp.zeros(rows.shape, jnp.float32)
  for (index, inside), weight in zip(corners, _corner_weights(right, bottom)):
    grad_rows = grad_rows.at[index].add(jnp.where(inside, weight, 0.0)[..., None] * cotangent,
                                        mode="promise_in_bounds")
  return grad_rows, grad_x, grad_y


_bilinear_rows.defvjp(_bilinear_rows_forward, _bilinear_rows_backward)


def bilinear(images, x, y, implementation="auto"):
  """images `[B, H, W, C]` read at x, y `[B, ...]` (padding applied): float32 `[B, ..., C]`.

  The batch is folded into flat row indices: one gather per corner for all images.
  `implementation` picks how the image gradient is computed: `"auto"` uses the
  compiled CPU kernel on the CPU when it is built and XLA's scatter-add elsewhere;
  `"xla"` always uses XLA's scatter-add.
  """
  batch, height, width, channels = images.shape
  if batch * height * width >= 2**31:
    raise ValueError(f"bilinear sampling indexes pixels with int32: {batch} images of "
                     f"{height}x{width} exceed 2**31 pixels; split the batch.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  return _bilinear_rows(images.reshape(batch * height * width, channels), x, y, height, width,
                        implementation)
