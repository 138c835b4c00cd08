"""Dense displacement warps, the spatial transformer of learned image registration.

`warp_flow(image, flow)` moves every pixel by its own vector, in pixels; it is
VoxelMorph's `SpatialTransformer` layer, in 2-D and 3-D. `integrate_velocity` turns a
stationary velocity field into a displacement by scaling and squaring, as VoxelMorph's
`VecInt`, which keeps the warp smooth and (nearly) invertible.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np

from stnjax import _validation
from stnjax import sampling

__all__ = ["integrate_velocity", "warp_flow"]


def _check_flow(flow) -> int:
  return _validation.check_vector_field(
      flow, "flow", "[..., H, W, 2] (x, y) or [..., D, H, W, 3] (x, y, z)")


def _flow_source_pixels(flow, in_shape, out_shape, align_corners):
  del out_shape, align_corners  # The image's own; pixel units.
  dims = len(in_shape)
  if tuple(flow.shape[-dims - 1:-1]) != tuple(in_shape):
    raise ValueError(f"flow must have the image's spatial shape {tuple(in_shape)} before its "
                     f"last axis, got flow shape {tuple(flow.shape)}.")
  flow = flow.astype(jnp.float32)
  coords = []
  for axis, size in enumerate(in_shape[::-1]):
    shape = [1] * dims
    shape[dims - 1 - axis] = size
    coords.append(np.arange(size, dtype=np.float32).reshape(shape) + flow[..., axis])
  return tuple(coords)


FLOW = sampling.Locator(
    name="flow", check=_check_flow,
    layout=lambda dims: ("D, H, W, 3" if dims == 3 else "H, W, 2"),
    rank=lambda dims: dims + 1, source_pixels=_flow_source_pixels)


def warp_flow(image: jax.Array, flow: jax.Array, *, method: str = "bilinear",
              padding_mode: str = "zeros", align_corners: bool = False, fill_value=None,
              implementation: str = "xla") -> jax.Array:
  """Warps `image` by a dense displacement field: output pixel `p` reads `p + flow[p]`.

  Args:
    image: `[*batch, H, W, C]`, or a volume `[*batch, D, H, W, C]`.
    flow: `[*batch, ..., H, W, 2]` displacements `(x, y)` in pixels (or
      `[*batch, ..., D, H, W, 3]`, `(x, y, z)`), of the image's spatial size. Pixel
      centres are at whole numbers, so a zero flow returns the image exactly. Extra
      dims after the batch are several fields for the same image.
    method: `"bilinear"` (default; trilinear for volumes) or `"nearest"`
      (`"bicubic"` in 2-D).
    padding_mode: `"zeros"` (default, as VoxelMorph), `"border"`, `"reflection"` or
      `"constant"` with `fill_value`, as in `stnjax.grid_sample`.
    align_corners: only changes where `"reflection"` mirrors: about the edge pixels'
      outer edges (False) or their centres (True).
    fill_value, implementation: as in `stnjax.grid_sample`.

  Returns:
    `[*batch, ..., H, W, C]` (or `[*batch, ..., D, H, W, C]`) in the image's dtype
    (float32 for integer images).

  Raises:
    TypeError: `image` or `flow` is not an array, `flow` is not floating, or `image` is
      neither float nor integer.
    ValueError: `flow` is not `[..., H, W, 2]` or `[..., D, H, W, 3]` with the image's
      spatial shape and batch dims, or an option is unknown or does not apply (as in
      `stnjax.grid_sample`).

  Example:
    >>> import jax.numpy as jnp
    >>> image = jnp.arange(4.0).reshape(1, 4, 1)
    >>> flow = jnp.zeros((1, 4, 2)).at[..., 0].set(1.0)  # Each pixel reads its right neighbour.
    >>> warp_flow(image, flow)[..., 0].tolist()
    [[1.0, 2.0, 3.0, 0.0]]
  """
  return sampling.warp_with(FLOW, flow, image, method=method, padding_mode=padding_mode,
                            align_corners=align_corners, implementation=implementation,
                            fill_value=fill_value)


def integrate_velocity(velocity: jax.Array, num_steps: int = 7, *,
                       padding_mode: str = "zeros", implementation: str = "xla") -> jax.Array:
  """The displacement field of a stationary velocity field, by scaling and squaring.

  The velocity is divided by `2 ** num_steps`, then the displacement is composed with
  itself `num_steps` times, `u <- u + warp_flow(u, u)`, with bilinear reads: the
  flow of the velocity over unit time, as VoxelMorph's `VecInt` layer computes it.

  Args:
    velocity: `[*batch, H, W, 2]` `(x, y)` or `[*batch, D, H, W, 3]` `(x, y, z)`, in
      pixels.
    num_steps: squarings, a non-negative int (VoxelMorph's default, 7); 0 returns the
      velocity itself.
    padding_mode: what the field reads beyond its border: `"zeros"` (default, as
      VoxelMorph) or `"border"`.
    implementation: as in `stnjax.grid_sample`.

  Returns:
    The displacement, the velocity's shape and float dtype, for `warp_flow`.

  Raises:
    TypeError: `velocity` is not a floating array, or `num_steps` is not an int.
    ValueError: `velocity` is not `[..., H, W, 2]` or `[..., D, H, W, 3]`, `num_steps`
      is negative, or `padding_mode` is neither `"zeros"` nor `"border"`.

  Example:
    >>> import jax.numpy as jnp
    >>> velocity = jnp.full((3, 4, 2), 0.5)  # A uniform field: the flow is a shift.
    >>> bool((integrate_velocity(velocity, padding_mode="border") == velocity).all())
    True
  """
  _check_flow(velocity)
  try:
    if isinstance(num_steps, bool):
      raise TypeError
    num_steps = operator.index(num_steps)
  except TypeError:
    raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}.") from None
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
  if padding_mode not in ("zeros", "border"):
    raise ValueError(f"integrate_velocity's padding_mode must be 'zeros' or 'border', got "
                     f"{padding_mode!r}.")
  displacement = velocity / 2**num_steps  # A Python int keeps the velocity's dtype.
  for _ in range(num_steps):
    displacement = displacement + warp_flow(displacement, displacement,
                                            padding_mode=padding_mode,
                                            implementation=implementation)
  return displacement
