"""Shared fixtures: the stored PyTorch reference outputs; a compilation cache for the run."""

import atexit
import contextlib
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest

FIXTURE_PATH = pathlib.Path(__file__).parent / "fixtures" / "torch_reference.npz"


def _share_compiled_programs():
  """One JAX compilation cache for this test run, for all its programs: its xdist
  workers and the training programs the tests start as subprocesses (several compile
  the same train step) reuse each other's compiled programs. Made by the first
  process, which removes it at exit; a cache the caller chose is left alone."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    folder = tempfile.mkdtemp(prefix="stnjax-test-compile-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    # Every program, however quick to compile: the parity tests run op by op, and each
    # worker would otherwise compile each operation's shapes again. JAX reads the
    # variable at import (the workers and subprocesses); this process has imported it.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


_share_compiled_programs()


@contextlib.contextmanager
def _cheap_compiles():
  """XLA's cheap compile mode (`jax_disable_most_optimizations`, as JAX's own tests run),
  here and in the programs started meanwhile (they read the variable at import).
  Graph-level rewrites still run; the machine code is less optimized."""
  previous = jax.config.read("jax_disable_most_optimizations")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
      yield
    finally:
      jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def fast_compiles():
  """`_cheap_compiles` for tests that compile many programs and compare them to
  tolerances. Tests of exact equality and of speed keep the compiler's defaults, and so
  do comparisons of two programs to a few roundings (atol 1e-6): one of them may come
  from JAX's in-memory cache, compiled in the other mode, and the two modes round
  differently. (The identity and bit-for-bit tests also pass with the cheap mode forced
  on the whole process, so a cheaply compiled program reused from the cache does not
  break them.)"""
  with _cheap_compiles():
    yield


@pytest.fixture(scope="module")
def fast_training_compiles():
  """`_cheap_compiles` for a module of training runs or benchmark scripts (checked for
  what they report, not timed), whose time is mostly compiling; the runs a test compares
  with each other (a resume, a second process) compile alike. JAX's in-memory caches do
  not key on the mode (the persistent cache's key includes it): they are cleared
  before, so that the module reuses no program compiled with the defaults, and after,
  so that no later test reuses one from here."""
  jax.clear_caches()
  with _cheap_compiles():
    yield
  jax.clear_caches()


def load_reference_cases():
  """{case name: {array name: array}} from the stored PyTorch outputs."""
  with np.load(FIXTURE_PATH) as data:
    cases = {}
    for key in data.files:
      if "/" in key:
        case, field = key.split("/")
        cases.setdefault(case, {})[field] = data[key]
  return cases


REFERENCE_CASES = load_reference_cases()


# Every case runs op by op (no compile per shape: seconds instead of minutes); the
# projective cases, which cover every method, padding mode and align_corners, also
# run jitted as users run them.
_CASE_PARAMS = [
    pytest.param((name, execution), id=f"{name}-{execution}")
    for name in sorted(REFERENCE_CASES)
    for execution in ("eager", "jit")
    if execution == "eager" or name.startswith("projective")
]


@pytest.fixture(params=_CASE_PARAMS)
def reference_case(request, fast_compiles):
  """One stored case, with `jax.disable_jit()` in force for the eager runs (compiled
  ones compare to tolerances: `fast_compiles`)."""
  name, execution = request.param
  case = dict(REFERENCE_CASES[name])
  method, padding_mode, align_corners = (str(v) for v in case.pop("options"))
  case["options"] = dict(method=method, padding_mode=padding_mode,
                         align_corners=align_corners == "True")
  case["out_shape"] = tuple(int(v) for v in case["out_shape"])
  if execution == "eager":
    with jax.disable_jit():
      yield case
  else:
    yield case
