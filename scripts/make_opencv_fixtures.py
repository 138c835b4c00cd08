"""Writes tests/fixtures/opencv_reference.npz: OpenCV's matrices for stnjax.geometry.

The test suite compares `stnjax.geometry` against these stored values and never
imports cv2. Regenerate after changing the cases below (needs
`pip install opencv-python-headless`):

    python scripts/make_opencv_fixtures.py

Inputs are float32 values (OpenCV reads the centre and the points as float32 anyway,
and stnjax computes in float32), so the stored float64 results are OpenCV's answer
for exactly the inputs the tests pass.

Stored arrays (N cases each):
  rotation/centre [N, 2], rotation/angle [N], rotation/scale [N],
  rotation/matrix [N, 2, 3]: `cv2.getRotationMatrix2D(centre, angle, scale)`.
  perspective/source [N, 4, 2], perspective/target [N, 4, 2],
  perspective/matrix [N, 3, 3]: `cv2.getPerspectiveTransform(source, target)`.
  invert_affine/matrix [N, 2, 3], invert_affine/inverse [N, 2, 3]:
  `cv2.invertAffineTransform(matrix)`.
"""

import argparse
import pathlib

import cv2
import numpy as np

# (centre (x, y), angle in degrees, scale): negative, large and quarter-turn angles,
# non-unit and negative scales, centres off the image and at half pixels.
ROTATIONS = (
    ((0.0, 0.0), 30.0, 1.0),
    ((3.0, 2.0), 90.0, 1.0),
    ((3.5, 2.0), -45.0, 1.0),
    ((63.5, 31.5), 180.0, 1.0),
    ((10.25, -4.75), 12.5, 0.75),
    ((100.0, 200.0), -137.25, 1.5),
    ((511.5, 383.5), 725.0, 2.0),
    ((-20.0, 7.0), 270.0, -0.5),
    ((6.0, 4.0), 0.0, 3.0),
    ((1000.0, 750.0), -1.0, 1.0),
)
NUM_PERSPECTIVE = 8
# Random affine matrices for invertAffineTransform, plus these exact ones.
FIXED_AFFINE = (
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    ((2.0, 0.0, -3.0), (0.0, 0.5, 4.0)),
    ((0.0, -1.0, 6.0), (1.0, 0.0, -2.0)),
)
NUM_RANDOM_AFFINE = 4


def rotation_cases():
  centres = np.array([c for c, _, _ in ROTATIONS], np.float32)
  angles = np.array([a for _, a, _ in ROTATIONS], np.float64)
  scales = np.array([s for _, _, s in ROTATIONS], np.float64)
  matrices = np.stack([cv2.getRotationMatrix2D(tuple(map(float, c)), float(a), float(s))
                       for c, a, s in zip(centres, angles, scales)])
  return {"rotation/centre": centres, "rotation/angle": angles, "rotation/scale": scales,
          "rotation/matrix": matrices}


def is_convex(quad, margin):
  """Whether the quad turns the same way at every corner, each by more than `margin`."""
  edges = np.roll(quad, -1, axis=0) - quad
  next_edges = np.roll(edges, -1, axis=0)
  turns = edges[:, 0] * next_edges[:, 1] - edges[:, 1] * next_edges[:, 0]
  return bool(np.all(turns > margin) or np.all(turns < -margin))


def random_quad(rng, width, height, jitter):
  """An image's corners, each moved by up to `jitter` of the image size, kept convex."""
  corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
  while True:
    quad = corners + rng.uniform(-jitter, jitter, (4, 2)) * [width, height]
    quad = quad.astype(np.float32)
    if is_convex(quad.astype(np.float64), 0.1 * width * height):
      return quad


def perspective_cases(rng):
  sources, targets = [], []
  for i in range(NUM_PERSPECTIVE):
    # Image-sized coordinates from a few pixels to about a thousand.
    width, height = rng.uniform(4, 1200), rng.uniform(4, 900)
    jitter = 0.0 if i == 0 else 0.2  # Case 0: the exact image corners to a quad.
    sources.append(random_quad(rng, width, height, jitter))
    targets.append(random_quad(rng, rng.uniform(4, 1200), rng.uniform(4, 900), 0.25)
                   + rng.uniform(-50, 50, 2).astype(np.float32))
  sources, targets = np.stack(sources), np.stack(targets).astype(np.float32)
  matrices = np.stack([cv2.getPerspectiveTransform(s, t) for s, t in zip(sources, targets)])
  return {"perspective/source": sources, "perspective/target": targets,
          "perspective/matrix": matrices}


def invert_affine_cases(rng):
  random = [rng.uniform(-2, 2, (2, 2)) for _ in range(NUM_RANDOM_AFFINE)]
  random = [np.concatenate([m + 1.5 * np.eye(2), rng.uniform(-100, 100, (2, 1))], axis=1)
            for m in random]
  matrices = np.concatenate([np.array(FIXED_AFFINE), np.stack(random)])
  matrices = matrices.astype(np.float32).astype(np.float64)  # Values stnjax sees exactly.
  inverses = np.stack([cv2.invertAffineTransform(m) for m in matrices])
  return {"invert_affine/matrix": matrices, "invert_affine/inverse": inverses}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/opencv_reference.npz"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  arrays = {**rotation_cases(), **perspective_cases(rng), **invert_affine_cases(rng)}
  arrays["opencv_version"] = np.array(cv2.__version__)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {len(arrays) - 1} arrays to {args.out} "
        f"({args.out.stat().st_size / 1024:.1f} KiB) with OpenCV {cv2.__version__}")


if __name__ == "__main__":
  main()
