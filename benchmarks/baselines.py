"""Reference samplers the benchmark compares stnjax with, all with zeros padding,
bilinear interpolation and align_corners=False semantics, written in plain JAX.

`textbook_sample` is the sampler STN tutorials write: build a batch of base grids,
transform them with a batched matmul, then gather the four neighbours per output pixel
from `[B, H, W, C]` with advanced indexing.
"""

import jax
import jax.numpy as jnp
import numpy as np

import stnjax


def textbook_sample(theta, image, out_shape):
  """theta `[B, 2, 3]`, image `[B, H, W, C]` -> `[B, Ho, Wo, C]`."""
  batch, height, width, _ = image.shape
  out_height, out_width = out_shape
  xs = jnp.linspace(-1, 1, out_width) * (out_width - 1) / out_width
  ys = jnp.linspace(-1, 1, out_height) * (out_height - 1) / out_height
  grid_x, grid_y = jnp.meshgrid(xs, ys)
  base = jnp.stack([grid_x.ravel(), grid_y.ravel(), jnp.ones(grid_x.size)])  # [3, Ho*Wo]
  base = jnp.broadcast_to(base, (batch,) + base.shape)
  source = theta @ base  # [B, 2, Ho*Wo]
  x = ((source[:, 0] + 1) * width - 1) / 2
  y = ((source[:, 1] + 1) * height - 1) / 2
  x0, y0 = jnp.floor(x), jnp.floor(y)
  batch_index = jnp.arange(batch)[:, None]
  out = 0.0
  for corner_y, weight_y in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
    for corner_x, weight_x in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
      inside = (corner_x >= 0) & (corner_x <= width - 1) & (corner_y >= 0) & (corner_y <= height - 1)
      col = jnp.clip(corner_x, 0, width - 1).astype(jnp.int32)
      row = jnp.clip(corner_y, 0, height - 1).astype(jnp.int32)
      values = image[batch_index, row, col]  # [B, Ho*Wo, C]
      out = out + jnp.where(inside, weight_x * weight_y, 0.0)[..., None] * values
  return out.reshape((batch, out_height, out_width, image.shape[-1]))


def map_coordinates_sample(theta, image, out_shape):
  """`jax.scipy.ndimage.map_coordinates` (order 1) per channel, vmapped over the batch."""
  grid = stnjax.affine_grid(theta, out_shape)
  pixels = stnjax.normalized_to_pixel(grid, image.shape[1:3])  # [B, Ho, Wo, (x, y)]

  def one_channel(channel, pixels):
    return jax.scipy.ndimage.map_coordinates(channel, [pixels[..., 1], pixels[..., 0]],
                                             order=1, mode="constant", cval=0.0)

  per_channel = jax.vmap(one_channel, in_axes=(-1, None), out_axes=-1)
  return jax.vmap(per_channel)(image, pixels)


def dm_pix_sample(theta, image, out_shape):
  """dm-pix's `affine_transform` (order 1, constant zero padding), vmapped over the batch.

  Same work per pixel; at the edges dm-pix gives zero for points beyond the outer pixel
  centres, where zeros padding blends towards zero over half a pixel.
  """
  import dm_pix  # Optional peer: imported only when benchmarked.

  pull = stnjax.pixel_matrix_from_theta(theta, image.shape[1:3], out_shape, inverse_map=True)
  # dm-pix indexes (row, col, channel) and reads the output's size from the input.
  if tuple(out_shape) != tuple(image.shape[1:3]):
    raise ValueError("dm-pix affine_transform keeps the input size")

  def one(image, pull):
    matrix = jnp.array([[pull[1, 1], pull[1, 0], 0.0], [pull[0, 1], pull[0, 0], 0.0],
                        [0.0, 0.0, 1.0]])
    offset = jnp.array([pull[1, 2], pull[0, 2], 0.0])
    return dm_pix.affine_transform(image, matrix, offset=offset, order=1, mode="constant",
                                   cval=0.0)

  return jax.vmap(one)(image, pull)


def random_volume_theta(batch, seed=0):
  """3-D thetas `[batch, 3, 4]`: a rotation about each axis, scales and shifts around
  the identity."""
  rng = np.random.default_rng(seed)
  theta = np.zeros((batch, 3, 4))
  for b in range(batch):
    linear = np.eye(3) * rng.uniform(0.8, 1.2)
    for axis in range(3):
      angle = rng.uniform(-0.3, 0.3)
      i, j = [a for a in range(3) if a != axis]
      rotation = np.eye(3)
      rotation[[i, i, j, j], [i, j, i, j]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
      linear = rotation @ linear
    theta[b, :, :3] = linear
    theta[b, :, 3] = rng.uniform(-0.2, 0.2, 3)
  return theta.astype(np.float32)


def random_theta(batch, seed=0):
  """Rotations, scales and shifts around the identity, as an STN meets them in training."""
  rng = np.random.default_rng(seed)
  angle = rng.uniform(-0.5, 0.5, batch)
  scale = rng.uniform(0.8, 1.2, batch)
  shift = rng.uniform(-0.2, 0.2, (batch, 2))
  theta = np.stack([
      np.stack([scale * np.cos(angle), -scale * np.sin(angle), shift[:, 0]], -1),
      np.stack([scale * np.sin(angle), scale * np.cos(angle), shift[:, 1]], -1)], 1)
  return theta.astype(np.float32)
