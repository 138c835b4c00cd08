"""The residual geometry of known distortions (train/canonicalization.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stnjax
from train import canonicalization
from train.data import distortions

INDICES = jnp.arange(64)


def identity_grid(kind):
  size = distortions.OUT_SIZE[kind]
  return stnjax.affine_grid(jnp.broadcast_to(jnp.eye(2, 3), (len(INDICES), 2, 3)), (size, size))


def test_the_thetas_are_the_distortions_that_were_drawn():
  """Sampling the digits with the reported thetas gives the distorted images."""
  digits = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
  for kind in ("r", "rts", "p"):
    size = distortions.OUT_SIZE[kind]
    thetas = distortions.distortion_thetas(kind, INDICES, 5, "test")
    resampled = stnjax.sample(thetas, jnp.asarray(digits[..., None] / 255.0, jnp.float32),
                              (size, size))
    expected = distortions.distort(kind, digits, INDICES, 5, "test")
    np.testing.assert_allclose(resampled, expected, atol=1e-5, err_msg=kind)


def test_input_spread_of_r_is_that_of_uniform_rotations():
  thetas = distortions.distortion_thetas("r", INDICES, 0, "test")
  geometry = canonicalization.residual_geometry(identity_grid("r"), thetas)
  angles = np.arctan2(thetas[:, 1, 0], thetas[:, 0, 0])
  np.testing.assert_allclose(geometry["rotation"], angles, atol=1e-5)
  np.testing.assert_allclose(geometry["log_scale"], 0, atol=1e-5)
  np.testing.assert_allclose(geometry["position"], 13.5, atol=1e-4)
  spreads = canonicalization.spreads(geometry)
  assert spreads["log_scale"] < 1e-5 and spreads["translation_px"] < 1e-4
  # Uniform on [-90, 90] degrees: mean resultant length 2 / pi.
  uniform = math.degrees(math.sqrt(-2 * math.log(2 / math.pi)))
  many = canonicalization.spreads(
      {"rotation": np.linspace(-np.pi / 2, np.pi / 2, 10001), "log_scale": np.zeros(3),
       "position": np.zeros((3, 2))})
  assert abs(many["rotation_deg"] - uniform) < 0.01
  assert 40 < spreads["rotation_deg"] < 70


@pytest.mark.parametrize("kind", ["r", "rts", "p"])
def test_a_transformer_that_undoes_the_distortion_leaves_no_spread(kind):
  thetas = distortions.distortion_thetas(kind, INDICES, 1, "test")
  size = distortions.OUT_SIZE[kind]
  # The inverse distortion, then one fixed similarity: every digit comes out the same way.
  fixed = jnp.array([[0.8, -0.3, 0.1], [0.3, 0.8, -0.05], [0.0, 0.0, 1.0]])
  undo = jnp.linalg.inv(thetas) @ fixed
  if kind != "p":
    undo = undo[:, :2]
  grid = stnjax.affine_grid(undo, (size, size))
  before = canonicalization.spreads(canonicalization.residual_geometry(identity_grid(kind), thetas))
  after = canonicalization.spreads(canonicalization.residual_geometry(grid, thetas))
  assert before["rotation_deg"] > 1  # P turns digits least: about 2 degrees.
  assert after["rotation_deg"] < 1e-2 and after["log_scale"] < 1e-4
  assert after["translation_px"] < 1e-3
  if kind == "rts":
    assert before["log_scale"] > 0.05 and before["translation_px"] > 2


def test_the_residual_rotation_is_the_one_left_over():
  """A transformer that turns every digit by half its rotation leaves half."""
  thetas = distortions.distortion_thetas("r", INDICES, 2, "test")
  angles = np.arctan2(thetas[:, 1, 0], thetas[:, 0, 0])
  half = jax.vmap(lambda a: jnp.array([[jnp.cos(a), jnp.sin(a), 0.0],
                                       [-jnp.sin(a), jnp.cos(a), 0.0]]))(angles / 2)
  geometry = canonicalization.residual_geometry(stnjax.affine_grid(half, (28, 28)), thetas)
  np.testing.assert_allclose(geometry["rotation"], angles / 2, atol=1e-5)


def test_residual_by_input_angle_shows_where_rotations_are_left():
  """Rotations within 45 degrees undone, larger ones halved: the table says so per bin."""
  angles = np.radians(np.linspace(-89.5, 89.5, 180))
  left = np.where(np.abs(angles) < np.radians(45), 0.0, angles / 2)
  geometry = lambda rotation: {"rotation": rotation, "log_scale": np.zeros(180),
                               "position": np.zeros((180, 2))}
  rows = canonicalization.rotation_by_input_angle(geometry(angles), geometry(left), 15)
  assert [row["input_deg"] for row in rows] == [[a, a + 15.0] for a in range(-90, 90, 15)]
  assert sum(row["count"] for row in rows) == 180
  for row in rows:
    centre = np.mean(row["input_deg"])
    expected = 0.0 if abs(centre) < 45 else centre / 2
    assert abs(row["residual_deg"] - expected) < 0.01, row
    assert abs(row["abs_residual_deg"] - abs(expected)) < 0.01, row


def test_unknown_distortions_are_refused():
  with pytest.raises(ValueError, match="elastic and cluttered"):
    distortions.distortion_thetas("tc", INDICES, 0, "test")


def test_histogram_picture(tmp_path):
  thetas = distortions.distortion_thetas("rts", INDICES, 0, "test")
  geometry = canonicalization.residual_geometry(identity_grid("rts"), thetas)
  path = tmp_path / "pictures" / "canonicalization.png"
  canonicalization.save_histograms(path, geometry, geometry)
  assert path.stat().st_size > 1000
