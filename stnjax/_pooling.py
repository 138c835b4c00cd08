"""`max_pool`: Flax's `max_pool` with a fast path for non-overlapping windows.

XLA computes a max-pool gradient as a select-and-scatter, which XLA:CPU runs as a
scatter on one thread; in the tutorial classifier it cost as much as the convolutions.
For windows that tile the input (strides equal to the window, no padding) the pool
is a reshape and a max, and its gradient an elementwise select: both fuse into
XLA loops that run on every core.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def _window_views(x, window):
  """`[B, H, W, C]` -> `[B, Ho, kh, Wo, kw, C]`; rows and columns past the last whole
  window are dropped, as VALID pooling does."""
  batch, height, width, channels = x.shape
  (kernel_h, kernel_w), out_h, out_w = window, height // window[0], width // window[1]
  x = x[:, :out_h * kernel_h, :out_w * kernel_w]
  return x.reshape(batch, out_h, kernel_h, out_w, kernel_w, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x, window):
  return _window_views(x, window).max(axis=(2, 4))


def _tiled_max_pool_fwd(x, window):
  pooled = _tiled_max_pool(x, window)
  return pooled, (x, pooled)


def _tiled_max_pool_bwd(window, residuals, cotangent):
  """The whole cotangent of a window goes to its first maximum in row-major order (a
  NaN counts as the maximum), as in XLA's select-and-scatter and PyTorch."""
  x, pooled = residuals
  views = _window_views(x, window)
  taken = jnp.zeros(pooled.shape, bool)
  rows = []
  for i in range(window[0]):
    columns = []
    for j in range(window[1]):
      value = views[:, :, i, :, j, :]
      hit = (value == pooled) | jnp.isnan(value)
      columns.append(jnp.where(hit & ~taken, cotangent, 0).astype(x.dtype))
      taken = taken | hit
    rows.append(jnp.stack(columns, axis=3))  # [B, Ho, Wo, kw, C]
  grad = jnp.stack(rows, axis=2).reshape(
      x.shape[0], views.shape[1] * window[0], views.shape[3] * window[1], x.shape[3])
  return (jnp.pad(grad, ((0, 0), (0, x.shape[1] - grad.shape[1]),
                         (0, x.shape[2] - grad.shape[2]), (0, 0))),)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def _is_unpadded(padding):
  if isinstance(padding, str):
    return padding == "VALID"
  return all(tuple(pair) == (0, 0) for pair in padding)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
  """Max pooling over the spatial axes of `[B, H, W, C]`, as `flax.linen.max_pool`.

  Windows that tile the input (`strides == window_shape`, `padding="VALID"`) take the
  reshape-and-max path; every other call is `lax.reduce_window`, exactly as Flax does
  it. The gradient goes to the first maximum of each window, as in XLA and PyTorch.

  Args:
    inputs: `[..., H, W, C]` array.
    window_shape: `(kh, kw)`.
    strides: `(sh, sw)`; default `(1, 1)`, as in Flax.
    padding: "VALID", "SAME" or `((top, bottom), (left, right))`.
  """
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  if len(window_shape) != 2 or len(strides) != 2:
    raise ValueError(f"max_pool pools 2 spatial axes: window_shape and strides must have "
                     f"2 entries, got {window_shape} and {strides}.")
  if inputs.ndim < 3:
    raise ValueError(f"max_pool expects [..., H, W, C], got shape {tuple(inputs.shape)}.")
  if (strides == window_shape and _is_unpadded(padding) and inputs.ndim == 4
      and all(k <= n for k, n in zip(window_shape, inputs.shape[1:3]))):
    return _tiled_max_pool(inputs, window_shape)
  if not isinstance(padding, str):
    padding = ((0, 0),) * (inputs.ndim - 3) + tuple(map(tuple, padding)) + ((0, 0),)
  dims = (1,) * (inputs.ndim - 3) + window_shape + (1,)
  steps = (1,) * (inputs.ndim - 3) + strides + (1,)
  initial = -np.inf if jnp.issubdtype(inputs.dtype, jnp.floating) else jnp.iinfo(inputs.dtype).min
  # A concrete (NumPy) initial value lets JAX see a max-pool and differentiate it.
  return lax.reduce_window(inputs, np.array(initial, inputs.dtype), lax.max, dims, steps,
                           padding)
