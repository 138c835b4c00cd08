"""The compiled CPU kernels (when built): the image gradient of bilinear sampling, and
a direct convolution with its kernel gradient for small layers.

`pip install` compiles `stnjax/_native/*.cc` into `stnjax._cpu_kernels` when a C++
compiler is present; without one the build goes on and stnjax uses XLA's scatter-add
and convolutions everywhere. The library is loaded with ctypes (it is an XLA FFI handler,
not a Python module) and registered with XLA for the CPU platform.
"""

import ctypes
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "stnjax_bilinear_image_grad"
CONV_TARGET = "stnjax_conv2d"
CONV_KERNEL_GRAD_TARGET = "stnjax_conv2d_kernel_grad"


def _register():
  if not hasattr(jax, "ffi"):  # An older jax without the FFI API: XLA scatter-add.
    return False
  spec = importlib.util.find_spec("stnjax._cpu_kernels")
  if spec is None or spec.origin is None:
    return False
  library = ctypes.CDLL(spec.origin)
  symbols = {TARGET: "StnjaxBilinearImageGrad", CONV_TARGET: "StnjaxConv2dForward",
             CONV_KERNEL_GRAD_TARGET: "StnjaxConv2dKernelGrad"}
  # A library built from older sources lacks some handlers: use none of them (the
  # XLA paths) rather than fail on import; reinstalling rebuilds it.
  if not all(hasattr(library, name) for name in symbols.values()):
    return False
  for target, name in symbols.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, name)),
                                platform="cpu")
  return True


AVAILABLE = _register()


def bilinear_image_grad(x, y, cotangent, height, width):
  """Image gradient of bilinear sampling with zeros outside the image.

  Args:
    x, y: `[B, ...]` pixel coordinates (padding already applied).
    cotangent: `[B, ..., C]`, the output's cotangent.
    height, width: the image size.

  Returns:
    float32 `[B, H, W, C]`: for each image, the sum over its points of each corner's
    bilinear weight times the point's cotangent, accumulated in a fixed order
    (deterministic).
  """
  batch, channels = x.shape[0], cotangent.shape[-1]
  grad = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((batch, height, width, channels),
                                                       jnp.float32),
                          vmap_method="broadcast_all")
  return grad(x.reshape(batch, -1).astype(jnp.float32), y.reshape(batch, -1).astype(jnp.float32),
              cotangent.reshape(batch, -1, channels).astype(jnp.float32))


def _padding_attributes(padding):
  (top, bottom), (left, right) = padding
  return dict(pad_top=np.int64(top), pad_bottom=np.int64(bottom), pad_left=np.int64(left),
              pad_right=np.int64(right))


# vmap of a convolution is rare (Flax folds extra batch dims into one): "sequential"
# runs the kernel once per mapped slice instead of teaching it extra leading dims.


def conv2d(x, kernel, padding):
  """float32 `[B, H, W, Ci]` * `[kh, kw, Ci, Co]`, stride 1, with `padding`
  `((top, bottom), (left, right))` (non-negative): `[B, Ho, Wo, Co]`."""
  (top, bottom), (left, right) = padding
  batch, height, width, _ = x.shape
  kernel_h, kernel_w, _, out_channels = kernel.shape
  out = jax.ShapeDtypeStruct((batch, height + top + bottom - kernel_h + 1,
                              width + left + right - kernel_w + 1, out_channels), jnp.float32)
  return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method="sequential")(
      x, kernel, **_padding_attributes(padding))


def conv2d_kernel_grad(x, cotangent, padding):
  """The kernel gradient of `conv2d(x, kernel, padding)` for the output cotangent,
  summed over the batch in a fixed order (deterministic): `[kh, kw, Ci, Co]`."""
  (top, bottom), (left, right) = padding
  _, height, width, in_channels = x.shape
  _, out_h, out_w, out_channels = cotangent.shape
  out = jax.ShapeDtypeStruct((height + top + bottom - out_h + 1,
                              width + left + right - out_w + 1, in_channels, out_channels),
                             jnp.float32)
  return jax.ffi.ffi_call(CONV_KERNEL_GRAD_TARGET, out, vmap_method="sequential")(
      x, cotangent, **_padding_attributes(padding))
