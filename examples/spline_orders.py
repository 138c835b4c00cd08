"""Enlarges one small picture with stnjax.map_coordinates at orders 0-5 and writes a PNG.

    python examples/spline_orders.py --out outputs/spline_orders.png

The picture (16 x 16: a bright pixel, a diagonal edge, a ramp) is read at a 12x finer
grid of points, in mode "mirror", by each order, side by side: nearest, linear, and
the quadratic to quintic B-splines (with scipy's prefilter, so each passes through the
picture's pixels).
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import stnjax

SIZE = 16
ZOOM = 12
GAP = 6


def test_picture(size=SIZE):
  """A float image in [0, 1]: a ramp, a diagonal edge and one bright pixel."""
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
  picture = 0.25 * cols / (size - 1)
  picture = np.where(rows + cols > size + 2, 0.55, picture)
  picture[size // 4, size // 4] = 1.0
  picture[size // 4 + 1, size // 4 + 4:size // 4 + 7] = 0.8
  return picture.astype(np.float32)


@jax.jit
def enlarged(picture):
  """The picture at every order, `[6, SIZE * ZOOM, SIZE * ZOOM]`, clipped to [0, 1]."""
  axis = (jnp.arange(SIZE * ZOOM) + 0.5) / ZOOM - 0.5  # Display pixel centres.
  coords = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"))
  return jnp.stack([jnp.clip(stnjax.map_coordinates(picture, coords, order, "mirror"), 0, 1)
                    for order in range(6)])


def strip(views):
  """The views side by side, grey gaps between them, as 8-bit pixels."""
  count, side = views.shape[0], views.shape[1]
  out = np.full((side, count * side + (count - 1) * GAP), 0.5, np.float32)
  for k, view in enumerate(views):
    out[:, k * (side + GAP):k * (side + GAP) + side] = view
  return (out * 255 + 0.5).astype(np.uint8)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("outputs/spline_orders.png"))
  args = parser.parse_args()
  if args.out.suffix.lower() != ".png":
    parser.error(f"--out must name a .png file, got {str(args.out)!r}.")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(strip(np.asarray(enlarged(jnp.asarray(test_picture()))))).save(args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
