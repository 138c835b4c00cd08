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


def _distort_one(kind, image, key, dataset):
  """One image `[28, 28, 1]` float in [0, 1] -> the distorted `[S, S, 1]`."""
  size = OUT_SIZE[kind]
  if kind == "none":
    return image
  if kind == "r":
    angle = jax.random.uniform(key, (), minval=-np.pi / 2, maxval=np.pi / 2)
    return transforms.warp(transforms.similarity(), jnp.stack([angle, 0.0, 0.0, 0.0]), image)
  if kind == "rts":
    angle_key, scale_key, place_key = jax.random.split(key, 3)
    angle = jax.random.uniform(angle_key, (), minval=-np.pi / 4, maxval=np.pi / 4)
    scale = jax.random.uniform(scale_key, (), minval=0.7, maxval=1.2)
    centre = jax.random.uniform(place_key, (2,), minval=size / 2 - 7.5, maxval=size / 2 + 6.5)
    pull = _rotation_pull(angle, scale, jnp.array([13.5, 13.5]), centre)
    theta = stnjax.theta_from_pixel_matrix(pull, (28, 28), (size, size), inverse_map=True)
    return stnjax.sample(theta, image, (size, size))
  if kind == "p":
    corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    moved = corners / 0.75 + 0.1 * jax.random.normal(key, (4, 2))
    return stnjax.sample(_homography(corners, moved), image)
  if kind == "e":
    family = transforms.tps((4, 4))
    offsets = 1.5 * (2 / 28) * jax.random.normal(key, (family.num_params,))
    return transforms.warp(family, offsets, image, padding_mode="zeros")
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


def distort(kind: str, dataset: jax.Array, indices: jax.Array, seed: int, split: str):
  """Distorted examples `dataset[indices]`: float32 `[B, S, S, 1]` in [0, 1].

  Args:
    kind: one of KINDS.
    dataset: uint8 `[N, 28, 28]`, the whole split (clutter comes from other digits).
    indices: int `[B]` example indices.
    seed: the run's seed; with the split and the index it fixes each distortion.
    split: "train" or "test".
  """
  out_shape(kind)  # Validates kind.
  dataset = jnp.asarray(dataset)  # Clutter is read at traced indices.
  base = jax.random.fold_in(jax.random.key(seed), SPLIT_IDS[split])
  images = dataset[indices].astype(jnp.float32)[..., None] / 255.0
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
  return jax.vmap(lambda image, key: _distort_one(kind, image, key, dataset))(images, keys)
