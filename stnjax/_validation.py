"""Trace-time checks for the public functions: each names what it expected and what came."""

import jax.numpy as jnp

METHODS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
IMPLEMENTATIONS = ("xla", "cpu_kernel")


def check_implementation(implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")


def check_options(method: str, padding_mode: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if padding_mode not in PADDING_MODES:
    raise ValueError(
        f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")


def check_image(image, name: str = "image") -> None:
  if not hasattr(image, "shape") or not hasattr(image, "dtype"):
    raise TypeError(f"{name} must be an array [..., H, W, C], got {type(image).__name__}.")
  if image.ndim < 3:
    raise ValueError(
        f"{name} must have shape [..., H, W, C] (rank >= 3, channels last), "
        f"got shape {tuple(image.shape)}.")
  if image.shape[-3] < 1 or image.shape[-2] < 1:
    raise ValueError(f"{name} must have H >= 1 and W >= 1, got shape {tuple(image.shape)}.")
  dtype = jnp.dtype(image.dtype)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{name} must have a float or integer dtype, got {dtype}.")


def check_theta(theta) -> None:
  if not hasattr(theta, "shape") or not hasattr(theta, "dtype"):
    raise TypeError(f"theta must be an array [..., 2, 3] or [..., 3, 3], got {type(theta).__name__}.")
  if theta.ndim < 2 or theta.shape[-1] != 3 or theta.shape[-2] not in (2, 3):
    raise ValueError(
        "theta must have shape [..., 2, 3] (affine) or [..., 3, 3] (projective), "
        f"got shape {tuple(theta.shape)}.")
  if not jnp.issubdtype(jnp.dtype(theta.dtype), jnp.floating):
    raise TypeError(f"theta must have a floating dtype, got {jnp.dtype(theta.dtype)}.")


def check_grid(grid) -> None:
  if not hasattr(grid, "shape") or not hasattr(grid, "dtype"):
    raise TypeError(f"grid must be an array [..., Ho, Wo, 2], got {type(grid).__name__}.")
  if grid.ndim < 3 or grid.shape[-1] != 2:
    raise ValueError(
        "grid must have shape [..., Ho, Wo, 2] with the last axis (x, y), "
        f"got shape {tuple(grid.shape)}.")
  if not jnp.issubdtype(jnp.dtype(grid.dtype), jnp.floating):
    raise TypeError(f"grid must have a floating dtype, got {jnp.dtype(grid.dtype)}.")


def check_size(size, name: str) -> tuple[int, int]:
  """Returns `size` as a (height, width) tuple of positive ints."""
  try:
    height, width = (int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (height, width) of ints, got {size!r}.") from None
  if height < 1 or width < 1 or tuple(size) != (height, width):
    raise ValueError(f"{name} must be a pair (height, width) of positive ints, got {size!r}.")
  return height, width


def check_batch_prefix(image_shape, other_shape, other_name: str, other_layout: str) -> None:
  """The leading (batch) dims of `image` must start the shape of theta, grid or params.

  other_layout: the trailing dims in words, e.g. "2 or 3, 3".
  """
  batch = tuple(image_shape[:-3])
  if tuple(other_shape[:len(batch)]) != batch:
    expected = ", ".join([str(d) for d in batch] + ["...", other_layout])
    raise ValueError(
        f"{other_name} must start with the image's batch dims {batch}: expected "
        f"{other_name} shape [{expected}], got {tuple(other_shape)} for image shape "
        f"{tuple(image_shape)}.")
