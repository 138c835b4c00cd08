"""Prints the max abs difference between stnjax and the stored PyTorch references.

    python scripts/parity_report.py

One row per method (images, then volumes), over every padding mode, align_corners
value and shape in tests/fixtures/torch_reference.npz (see scripts/make_reference_fixtures.py).
"""

import collections
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import stnjax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from conftest import REFERENCE_CASES  # noqa: E402  (the tests' fixture reader)

COLUMNS = ("out", "grad_image", "grad_theta", "out_grid", "grad_grid")


def errors(case):
  method, padding_mode, align_corners = (str(v) for v in case["options"])
  options = dict(method=method, padding_mode=padding_mode, align_corners=align_corners == "True")
  out_shape = tuple(int(v) for v in case["out_shape"])
  cotangent = jnp.asarray(case["cotangent"])
  out, vjp = jax.vjp(lambda t, i: stnjax.sample(t, i, out_shape, **options),
                     jnp.asarray(case["theta"]), jnp.asarray(case["image"]))
  grad_theta, grad_image = vjp(cotangent)
  out_grid, vjp = jax.vjp(lambda i, g: stnjax.grid_sample(i, g, **options),
                          jnp.asarray(case["image"]), jnp.asarray(case["grid"]))
  _, grad_grid = vjp(cotangent)
  actual = dict(out=out, grad_image=grad_image, grad_theta=grad_theta, out_grid=out_grid,
                grad_grid=grad_grid)
  row = method if len(out_shape) == 2 else (
      "trilinear" if method == "bilinear" else method) + " (volumes)"
  return row, (
      {k: float(np.abs(np.asarray(actual[k]) - case[k]).max()) for k in COLUMNS},
      {k: float(np.abs(case[k]).max()) for k in COLUMNS})


def main():
  worst = collections.defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
  largest = dict.fromkeys(COLUMNS, 0.0)
  with jax.disable_jit():
    for case in REFERENCE_CASES.values():
      row, (case_errors, magnitudes) = errors(case)
      for key in COLUMNS:
        worst[row][key] = max(worst[row][key], case_errors[key])
        largest[key] = max(largest[key], magnitudes[key])
  print(f"max abs difference vs PyTorch over {len(REFERENCE_CASES)} cases "
        "(values in [-1, 1]; sample = affine_grid + grid_sample fused)")
  print("| method | sample | d/image | d/theta | grid_sample | d/grid |")
  print("|---|---|---|---|---|---|")
  for name, row in worst.items():
    print(f"| {name} | " + " | ".join(f"{row[k]:.1e}" for k in COLUMNS) + " |")
  print("| largest reference value | " + " | ".join(f"{largest[k]:.1e}" for k in COLUMNS) + " |")


if __name__ == "__main__":
  main()
