"""Trace-time checks for the public functions: each names what it expected and what came."""

import jax.numpy as jnp
import numpy as np

METHODS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection", "constant")
IMPLEMENTATIONS = ("xla", "cpu_kernel")
_AXES = {2: "H, W", 3: "D, H, W"}
_SIZES = {2: "a pair (height, width)", 3: "a triple (depth, height, width)"}


def check_implementation(implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")


def check_options(method: str, padding_mode: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if padding_mode not in PADDING_MODES:
    raise ValueError(
        f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")


def check_antialias(antialias, method: str, padding_mode: str) -> None:
  if not isinstance(antialias, (bool, np.bool_)):
    raise TypeError(f"antialias must be True or False, got {antialias!r}.")
  if antialias and method != "bilinear":
    raise ValueError(f"antialias=True filters bilinear sampling only, got method={method!r}.")
  if antialias and padding_mode == "constant":
    raise ValueError("antialias=True takes padding_mode 'zeros', 'border' or 'reflection', "
                     "not 'constant'.")


def check_options_for(dims: int, method: str, implementation: str) -> None:
  """What 3-D sampling does not have: bicubic (nor has PyTorch) and the CPU kernel."""
  if dims == 3 and method == "bicubic":
    raise ValueError("method='bicubic' samples 2-D images only (as PyTorch's grid_sample); "
                     "volumes take 'bilinear' (trilinear) or 'nearest'.")
  if dims == 3 and implementation == "cpu_kernel":
    raise ValueError("implementation='cpu_kernel' serves 2-D images only; volumes take "
                     "implementation='xla'.")


def check_fill_value(fill_value, padding_mode: str, channels):
  """fill_value as a float32 `[]` or `[C]` array (0 for None); with channels None, only
  the mode and the type are checked, and the value comes back as an array."""
  if fill_value is None:
    return jnp.zeros((), jnp.float32)
  if padding_mode != "constant":
    raise ValueError(f"fill_value applies only with padding_mode='constant', got padding_mode="
                     f"{padding_mode!r}.")
  if not hasattr(fill_value, "dtype"):
    try:
      fill_value = jnp.asarray(fill_value)
    except (TypeError, ValueError):
      raise TypeError(f"fill_value must be a number or an array of numbers, got "
                      f"{fill_value!r}.") from None
  if channels is None:
    return fill_value
  if fill_value.shape not in ((), (channels,)):
    raise ValueError(f"fill_value must be a scalar or one value per channel (shape "
                     f"({channels},)), got shape {tuple(fill_value.shape)}.")
  if not (jnp.issubdtype(fill_value.dtype, jnp.floating)
          or jnp.issubdtype(fill_value.dtype, jnp.integer)):
    raise TypeError(f"fill_value must be a number or an array of numbers, got dtype "
                    f"{fill_value.dtype}.")
  return fill_value.astype(jnp.float32)


def check_image(image, name: str = "image", dims: int = 2) -> None:
  axes = _AXES[dims]
  if not hasattr(image, "shape") or not hasattr(image, "dtype"):
    raise TypeError(f"{name} must be an array [..., {axes}, C], got {type(image).__name__}.")
  if image.ndim < dims + 1:
    raise ValueError(
        f"{name} must have shape [..., {axes}, C] (rank >= {dims + 1}, channels last), "
        f"got shape {tuple(image.shape)}.")
  if min(image.shape[-dims - 1:-1]) < 1:
    raise ValueError(f"{name} must have {' >= 1 and '.join(axes.split(', '))} >= 1, "
                     f"got shape {tuple(image.shape)}.")
  dtype = jnp.dtype(image.dtype)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{name} must have a float or integer dtype, got {dtype}.")


THETA_SHAPES = "[..., 2, 3] or [..., 3, 3] (2-D), [..., 3, 4] or [..., 4, 4] (3-D)"


def check_theta(theta, name: str = "theta") -> int:
  """Returns the number of spatial dims theta transforms: 2 or 3."""
  if not hasattr(theta, "shape") or not hasattr(theta, "dtype"):
    raise TypeError(f"{name} must be an array {THETA_SHAPES}, got {type(theta).__name__}.")
  if theta.ndim < 2 or theta.shape[-1] not in (3, 4) or theta.shape[-2] not in (
      theta.shape[-1] - 1, theta.shape[-1]):
    raise ValueError(f"{name} must have shape {THETA_SHAPES} (affine or projective), "
                     f"got shape {tuple(theta.shape)}.")
  if not jnp.issubdtype(jnp.dtype(theta.dtype), jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {jnp.dtype(theta.dtype)}.")
  return theta.shape[-1] - 1


def check_grid(grid) -> int:
  """Returns the number of spatial dims of the grid: 2 or 3."""
  return check_vector_field(grid, "grid",
                            "[..., Ho, Wo, 2] (x, y) or [..., Do, Ho, Wo, 3] (x, y, z)")


def check_vector_field(field, name: str, layouts: str) -> int:
  """A float array of 2-D or 3-D vectors on a grid: returns their length, 2 or 3."""
  if not hasattr(field, "shape") or not hasattr(field, "dtype"):
    raise TypeError(f"{name} must be an array {layouts}, got {type(field).__name__}.")
  if field.ndim < 3 or field.shape[-1] not in (2, 3) or field.ndim < field.shape[-1] + 1:
    raise ValueError(f"{name} must have shape {layouts}, got shape {tuple(field.shape)}.")
  if not jnp.issubdtype(jnp.dtype(field.dtype), jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {jnp.dtype(field.dtype)}.")
  return field.shape[-1]


def check_size(size, name: str, dims=2) -> tuple[int, ...]:
  """Returns `size` as a tuple of `dims` positive ints (2 or 3 for dims=None)."""
  expected = " or ".join(_SIZES[d] for d in ((2, 3) if dims is None else (dims,)))
  try:
    sizes = tuple(int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be {expected} of ints, got {size!r}.") from None
  if (len(sizes) != dims if dims else len(sizes) not in (2, 3)):
    raise ValueError(f"{name} must be {expected} of ints, got {size!r}.")
  if min(sizes) < 1 or tuple(size) != sizes:
    raise ValueError(f"{name} must be {expected} of positive ints, got {size!r}.")
  return sizes


def check_batch_prefix(image_shape, other_shape, other_name: str, other_layout: str,
                       dims: int = 2) -> None:
  """The leading (batch) dims of `image` must start the shape of theta, grid or params.

  other_layout: the trailing dims in words, e.g. "2 or 3, 3".
  """
  batch = tuple(image_shape[:-dims - 1])
  if tuple(other_shape[:len(batch)]) != batch:
    expected = ", ".join([str(d) for d in batch] + ["...", other_layout])
    raise ValueError(
        f"{other_name} must start with the image's batch dims {batch}: expected "
        f"{other_name} shape [{expected}], got {tuple(other_shape)} for image shape "
        f"{tuple(image_shape)}.")
