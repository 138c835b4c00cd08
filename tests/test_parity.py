"""stnjax against PyTorch's affine_grid + grid_sample, from stored reference outputs:
images (PyTorch's 4-D inputs) and volumes (its 5-D ones).

The fixtures come from scripts/make_reference_fixtures.py (forward and gradients in
float64 for float32 inputs); tolerances are a few float32 roundings of the values.
"""

import jax
import jax.numpy as jnp
import numpy as np

import stnjax


def assert_close(actual, expected, name, rtol=2e-5):
  """Max abs error within rtol of the expected values' scale (at least 1)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  scale = max(1.0, float(np.abs(expected).max()))
  error = float(np.abs(actual - expected).max())
  assert error <= rtol * scale, f"{name}: max abs error {error:.3g} > {rtol * scale:.3g}"


def test_affine_grid_matches_torch(reference_case):
  grid = stnjax.affine_grid(jnp.asarray(reference_case["theta"]), reference_case["out_shape"],
                            align_corners=reference_case["options"]["align_corners"])
  assert grid.dtype == jnp.float32
  assert_close(grid, reference_case["grid_from_theta"], "grid")


def test_sample_forward_and_gradients_match_torch(reference_case):
  case = reference_case

  def warp(theta, image):
    return stnjax.sample(theta, image, case["out_shape"], **case["options"])

  out, vjp = jax.vjp(warp, jnp.asarray(case["theta"]), jnp.asarray(case["image"]))
  grad_theta, grad_image = vjp(jnp.asarray(case["cotangent"]))
  assert_close(out, case["out"], "out")
  assert_close(grad_image, case["grad_image"], "grad_image")
  assert_close(grad_theta, case["grad_theta"], "grad_theta")


def test_grid_sample_forward_and_gradients_match_torch(reference_case):
  case = reference_case

  def read(image, grid):
    return stnjax.grid_sample(image, grid, **case["options"])

  out, vjp = jax.vjp(read, jnp.asarray(case["image"]), jnp.asarray(case["grid"]))
  grad_image, grad_grid = vjp(jnp.asarray(case["cotangent"]))
  assert_close(out, case["out_grid"], "out")
  assert_close(grad_image, case["grad_image_grid"], "grad_image")
  assert_close(grad_grid, case["grad_grid"], "grad_grid")


def test_fixtures_cover_every_option():
  from conftest import REFERENCE_CASES
  seen = {(len(case["out_shape"]),) + tuple(str(v) for v in case["options"])
          for case in REFERENCE_CASES.values()}
  expected = {(dims, m, p, a) for dims in (2, 3) for m in ("bilinear", "nearest", "bicubic")
              for p in ("zeros", "border", "reflection") for a in ("False", "True")
              if (dims, m) != (3, "bicubic")}
  assert seen == expected


def test_volume_fixtures_cover_projective_and_other_output_sizes():
  from conftest import REFERENCE_CASES
  volumes = [case for case in REFERENCE_CASES.values() if len(case["out_shape"]) == 3]
  assert any(case["theta"].shape[-2:] == (4, 4) for case in volumes)
  assert any(tuple(case["out_shape"]) != case["image"].shape[1:4] for case in volumes)
