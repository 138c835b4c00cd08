"""The paper's distorted-digit datasets, generated on the device with stnjax.

Each example's distortion comes from a key derived from the seed, the split and the
example's index: a distorted dataset is fixed for a seed (the same every epoch and in
every run) and does not depend on how examples are batched.

Distortions (Jaderberg et al. 2015, section 4.1):
  none  the 28x28 digit.
  r     rotation uniform in [-90, 90] degrees; 28x28.
  rts   rotation in [-45, 45] degrees, scale in [0.7, 1.2], placed at a random
        position on a 42x42 canvas.
  p     projective: the image scaled by 0.75 and its 4 corners moved by Gaussian noise
        (std 0.1 of the half-width); 28x28.
  e     elastic: a 16-point (4x4) thin-plate spline, control points displaced with
        std 1.5 pixels; 28x28.
  tc    translated and cluttered: the digit at a random place on a 60x60 canvas, plus 6
        random 6x6 crops of other digits.
"""

import jax
import jax.numpy as jnp
import numpy as np

import stnjax
from stnjax import transforms

KINDS = ("none", "r", "rts", "p", "e", "tc")
# Distortions that are one matrix, so `distortion_thetas` can say what each example got.
KNOWN_GEOMETRY = ("none", "r", "rts", "p")
OUT_SIZE = {"none": 28, "r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}
SPLIT_IDS = {"train": 0, "test": 1}


def out_shape(kind: str, image_size: int = 28) -> tuple[int, int, int]:
  if kind not in KINDS:
    raise ValueError(f"Unknown distortion {kind!r}; expected one of {KINDS}.")
  size = OUT_SIZE[kind] if image_size == 28 else image_size
  return (size, size, 1)


def _rotation_pull(angle, scale, in_centre, out_centre):
  """Pixel pull matrix: output pixel -> input pixel for a rotation by angle and a scale."""
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  linear = jnp.array([[cos, sin], [-sin, cos]])
  offset = in_centre - linear @ out_centre
  return jnp.concatenate([linear, offset[:, None]], axis=1)


def _homography(source, target):
  """3x3 H with H @ (source_k, 1) ~ (target_k, 1) for 4 point pairs `[4, 2]` (DLT)."""
  rows = []
  for (x, y), (u, v) in zip(source, target):
    rows.append(jnp.array([x, y, 1, 0, 0, 0, -u * x, -u * y]))
    rows.append(jnp.array([0, 0, 0, x, y, 1, -v * x, -v * y]))
  solution = jnp.linalg.solve(jnp.stack(rows), target.reshape(-1))
  return jnp.append(solution, 1.0).reshape(3, 3)


def _towards(undistorted, value, strength):
  """value at strength 1 (exactly: the full distortion), undistorted at 0, linear between."""
  if isinstance(strength, float) and strength == 1.0:
    return value
  return undistorted + (value - undistorted) * strength


def _distortion_theta(kind, key, strength=1.0):
  """The theta that distorts the digit (none, r, rts, p): `[2, 3]` affine or `[3, 3]`
  projective, taking normalized coordinates of the distorted image to the digit's."""
  size = OUT_SIZE[kind]
  if kind == "none":
    return jnp.eye(2, 3)
  if kind == "r":
    angle = jax.random.uniform(key, (), minval=-np.pi / 2, maxval=np.pi / 2)
    angle = _towards(0.0, angle, strength)
    return transforms.similarity().theta(jnp.stack([angle, 0.0, 0.0, 0.0]))
  if kind == "rts":
    angle_key, scale_key, place_key = jax.random.split(key, 3)
    angle = jax.random.uniform(angle_key, (), minval=-np.pi / 4, maxval=np.pi / 4)
    scale = jax.random.uniform(scale_key, (), minval=0.7, maxval=1.2)
    centre = jax.random.uniform(place_key, (2,), minval=size / 2 - 7.5, maxval=size / 2 + 6.5)
    angle, scale = _towards(0.0, angle, strength), _towards(1.0, scale, strength)
    centre = _towards(jnp.full((2,), (size - 1) / 2), centre, strength)
    pull = _rotation_pull(angle, scale, jnp.array([13.5, 13.5]), centre)
    return stnjax.theta_from_pixel_matrix(pull, (28, 28), (size, size), inverse_map=True)
  corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
  moved = corners / 0.75 + 0.1 * jax.random.normal(key, (4, 2))
  return _homography(corners, _towards(corners, moved, strength))


def _distort_one(kind, image, key, dataset, strength=1.0):
  """One image `[28, 28, 1]` float in [0, 1] -> the distorted `[S, S, 1]`."""
  size = OUT_SIZE[kind]
  if kind == "none":
    return image
  if kind in KNOWN_GEOMETRY:
    return stnjax.sample(_distortion_theta(kind, key, strength), image, (size, size))
  if kind == "e":
    family = transforms.tps((4, 4))
    offsets = 1.5 * (2 / 28) * jax.random.normal(key, (family.num_params,))
    return transforms.warp(family, _towards(0.0, offsets, strength), image, padding_mode="zeros")
  # tc: the digit somewhere on the canvas, then six 6x6 crops of other digits.
  place_key, clutter_key = jax.random.split(key)
  offset = jax.random.uniform(place_key, (2,), minval=0.0, maxval=size - 28.0).round()
  canvas = _translate(image, -offset, size, jnp.ones((size, size), bool))
  for piece_key in jax.random.split(clutter_key, 6):
    index_key, crop_key, spot_key = jax.random.split(piece_key, 3)
    other = dataset[jax.random.randint(index_key, (), 0, dataset.shape[0])]
    crop = jax.random.randint(crop_key, (2,), 0, 28 - 6 + 1).astype(jnp.float32)
    spot = jax.random.randint(spot_key, (2,), 0, size - 6 + 1).astype(jnp.float32)
    rows, cols = jnp.mgrid[0:size, 0:size]
    window = ((cols >= spot[0]) & (cols < spot[0] + 6) & (rows >= spot[1]) & (rows < spot[1] + 6))
    other = other.astype(jnp.float32)[..., None] / 255.0
    canvas = jnp.maximum(canvas, _translate(other, crop - spot, size, window))
  return canvas


def _translate(image, shift, size, window):
  """Canvas `[size, size, 1]` whose pixel p reads image pixel p + shift, zero off window."""
  pull = jnp.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
  theta = stnjax.theta_from_pixel_matrix(pull, (28, 28), (size, size), inverse_map=True)
  return jnp.where(window[..., None], stnjax.sample(theta, image, (size, size)), 0.0)


def _example_keys(indices, seed, split):
  """One key per example, from the seed, the split and the example's index."""
  base = jax.random.fold_in(jax.random.key(seed), SPLIT_IDS[split])
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


# Distortions that `strength` scales (a curriculum can grow them from nothing).
GRADED = ("r", "rts", "p", "e")


def distort(kind: str, dataset: jax.Array, indices: jax.Array, seed: int, split: str,
            strength=1.0):
  """Distorted examples `dataset[indices]`: float32 `[B, S, S, 1]` in [0, 1].

  Args:
    kind: one of KINDS.
    dataset: uint8 `[N, 28, 28]`, the whole split (clutter comes from other digits).
    indices: int `[B]` example indices.
    seed: the run's seed; with the split and the index it fixes each distortion.
    split: "train" or "test".
    strength: for the GRADED kinds, a scalar in [0, 1] (may be traced) that scales each
      example's distortion towards none: its angle, its scale's and its place's
      departures, its corner or control-point offsets. 1 (the default) is the
      distortion itself, bit for bit.
  """
  out_shape(kind)  # Validates kind.
  dataset = jnp.asarray(dataset)  # Clutter is read at traced indices.
  images = dataset[indices].astype(jnp.float32)[..., None] / 255.0
  keys = _example_keys(indices, seed, split)
  return jax.vmap(lambda image, key: _distort_one(kind, image, key, dataset, strength))(
      images, keys)


def distortion_thetas(kind: str, indices: jax.Array, seed: int, split: str) -> jax.Array:
  """The distortion each example of `distort` got, as float32 `[B, 3, 3]` thetas (the
  last row `(0, 0, 1)` for affine ones): they take normalized coordinates of the
  distorted image to those of the 28x28 digit. For the distortions in KNOWN_GEOMETRY.
  """
  if kind not in KNOWN_GEOMETRY:
    raise ValueError(f"distortion_thetas knows the distortions {KNOWN_GEOMETRY}, got "
                     f"{kind!r} (elastic and cluttered ones are not one matrix).")
  def one(key):
    theta = _distortion_theta(kind, key)
    return theta if theta.shape == (3, 3) else jnp.concatenate(
        [theta, jnp.array([[0.0, 0.0, 1.0]])], axis=0)
  return jax.vmap(one)(_example_keys(indices, seed, split)).astype(jnp.float32)
