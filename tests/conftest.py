"""Shared fixtures: the stored PyTorch reference outputs; a compilation cache for the run."""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest

FIXTURE_PATH = pathlib.Path(__file__).parent / "fixtures" / "torch_reference.npz"


def _share_compiled_programs():
  """One JAX compilation cache for this test run: its xdist workers and the training
  programs the tests start as subprocesses (several compile the same train step)
  reuse each other's compiled programs. Made by the first process, which removes it at
  exit; a cache the caller chose is left alone."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    folder = tempfile.mkdtemp(prefix="stnjax-test-compile-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


_share_compiled_programs()


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
def reference_case(request):
  """One stored case, with `jax.disable_jit()` in force for the eager runs."""
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
