"""The optional compiled CPU kernel for the bilinear image gradient.

`pip install` compiles `stnjax/_native/bilinear.cc` into `stnjax._cpu_kernels` when a
C++ compiler is present. It is an XLA FFI handler (loaded with ctypes, not a Python
module) that accumulates each image's gradient straight into the result, one image
per task on XLA's thread pool, in a fixed order: deterministic. `stnjax._bilinear`
lowers its image-gradient primitive to it on the CPU for `implementation="cpu_kernel"`.
"""

import ctypes
import importlib.util

import jax

TARGET = "stnjax_bilinear_image_grad"

BUILD_HINT = ("Reinstall stnjax where a C++ compiler is present (apt-get install g++, then "
              "pip install --force-reinstall --no-deps -e . from the source tree) to build "
              "it, or use implementation='xla'.")


def _register():
  spec = importlib.util.find_spec("stnjax._cpu_kernels")
  if not hasattr(jax, "ffi") or spec is None or spec.origin is None:
    return False
  library = ctypes.CDLL(spec.origin)
  if not hasattr(library, "StnjaxBilinearImageGrad"):
    return False
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.StnjaxBilinearImageGrad),
                              platform="cpu")
  return True


AVAILABLE = _register()
