"""The compiled CPU kernel for the image gradient of bilinear sampling (when built).

`pip install` compiles `stnjax/_native/bilinear.cc` into `stnjax._cpu_kernels` when a
C++ compiler is present; without one the build goes on and stnjax uses its XLA
scatter-add everywhere. The library is loaded with ctypes (it is an XLA FFI handler,
not a Python module) and registered with XLA for the CPU platform.
"""

import ctypes
import importlib.util

import jax
import jax.numpy as jnp

TARGET = "stnjax_bilinear_image_grad"


def _register():
  if not hasattr(jax, "ffi"):  # An older jax without the FFI API: XLA scatter-add.
    return False
  spec = importlib.util.find_spec("stnjax._cpu_kernels")
  if spec is None or spec.origin is None:
    return False
  library = ctypes.CDLL(spec.origin)
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.StnjaxBilinearImageGrad),
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
