"""Builds the optional CPU kernel (stnjax/_native); everything else is in pyproject.toml.

The kernel is an XLA FFI handler compiled against the headers jaxlib ships. The
extension is optional: without a C++ compiler the install goes on, and stnjax computes
the same gradients with XLA's scatter-add.
"""

import os

import jaxlib
from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "stnjax._cpu_kernels",
        sources=["stnjax/_native/bilinear.cc"],
        depends=["stnjax/_native/parallel.h"],
        include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-g0", "-Wno-attributes"],
        optional=True,
    )
])
