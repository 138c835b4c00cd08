"""Registers a distorted picture back onto the original by optimizing a velocity field.

    python examples/register_velocity.py --out outputs/register_velocity.png

The fixed image is a Fashion-MNIST test image (`--index`; a synthetic picture when the
data are not installed). The moving image is the fixed one warped by a random smooth
deformation (`--seed`). A stationary velocity field `v` [H, W, 2] is then fitted with
Adam so that `warp_flow(moving, integrate_velocity(v))` matches the fixed image, as a
learned-registration network (VoxelMorph) would predict it, but here for one pair:

    loss(v) = MSE(warp_flow(moving, integrate_velocity(v)), fixed)
              + smoothness * (squared finite differences of v)

The picture shows fixed, moving, registered, |fixed - moving| and |fixed - registered|
(both times DIFFERENCE_GAIN), and the recovered displacement as a deformed grid (where
each registered pixel reads in the moving image), each pixel drawn as ZOOM x ZOOM.
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw

import stnjax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # For train.data.idx.
from train.data import idx  # noqa: E402

ZOOM = 6  # Display pixels per image pixel.
MARGIN = 24  # Display pixels around and between panels (labels go in the top margin).
GRID_EVERY = 2  # Image pixels between drawn grid lines.
DISTORTION_PIXELS = 3.0  # Largest velocity of the random distortion.
COARSE_SHAPE = (4, 4)  # Resolution of the noise the distortion is upsampled from.
DIFFERENCE_GAIN = 3  # Differences are drawn brighter: unscaled, the residual is invisible.
PANELS = ("fixed", "moving", "registered", f"|fixed - moving| x{DIFFERENCE_GAIN}",
          f"|fixed - registered| x{DIFFERENCE_GAIN}", "displacement")


def synthetic_picture(shape=(28, 28)):
  """A float32 [H, W, 1] picture in [0, 1], asymmetric so that a warp shows."""
  height, width = shape
  rows, cols = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
  body = ((rows - 0.55) / 0.33) ** 2 + ((cols - 0.45) / 0.22) ** 2 < 1
  bar = (np.abs(rows - 0.25) < 0.07) & (np.abs(cols - 0.62) < 0.2)
  hole = (rows - 0.6) ** 2 + (cols - 0.42) ** 2 < 0.08 ** 2
  picture = np.where(hole, 0.2, 0.75 * body + bar)
  for _ in range(2):  # Soft edges, like Fashion-MNIST's, give the fit a gradient to follow.
    padded = np.pad(picture, 1)
    picture = sum(padded[r:r + height, c:c + width] for r in range(3) for c in range(3)) / 9
  return np.clip(picture, 0, 1)[..., None].astype(np.float32)


def load_test_images(data_dir=None):
  """Fashion-MNIST's test images, uint8 [N, 28, 28]; raises idx.DatasetNotFoundError.

  Looked for in `data_dir`, then in /usr/share/datasets/fashion-mnist (see
  train/data/idx.py, which also downloads into a `data_dir` it is given when online).
  """
  return idx.read_idx(idx.find_file(idx.FILES["test"][0], "fashion_mnist", data_dir))


def distort(image, seed, magnitude=DISTORTION_PIXELS):
  """(moving image, velocity): `image` [H, W, C] warped by a random smooth deformation.

  The velocity [H, W, 2] (pixels) is Gaussian noise on a COARSE_SHAPE grid, upsampled
  cubically and scaled so its largest vector is `magnitude` long; its integral (scaling
  and squaring) is the displacement the image is warped by.
  """
  height, width = image.shape[:2]
  coarse = jax.random.normal(jax.random.key(seed), COARSE_SHAPE + (2,))
  velocity = jax.image.resize(coarse, (height, width, 2), method="cubic")
  velocity = velocity * (magnitude / jnp.max(jnp.linalg.norm(velocity, axis=-1)))
  return stnjax.warp_flow(image, stnjax.integrate_velocity(velocity)), velocity


def mse(a, b):
  return float(jnp.mean((jnp.asarray(a) - jnp.asarray(b)) ** 2))


def smoothness_penalty(velocity):
  """Mean squared finite differences of a [H, W, 2] field, down and across."""
  down = velocity[1:] - velocity[:-1]
  across = velocity[:, 1:] - velocity[:, :-1]
  return jnp.mean(down ** 2) + jnp.mean(across ** 2)


def objective(velocity, fixed, moving, smoothness):
  registered = stnjax.warp_flow(moving, stnjax.integrate_velocity(velocity))
  return jnp.mean((registered - fixed) ** 2) + smoothness * smoothness_penalty(velocity)


# Module-level and with the rates traced, so every register() call of one image size
# shares one compiled step (the test calls it several times).
@jax.jit
def train_step(velocity, opt_state, fixed, moving, learning_rate, smoothness):
  """One Adam step on `objective`; returns (velocity, opt_state, loss before the step)."""
  loss, grads = jax.value_and_grad(objective)(velocity, fixed, moving, smoothness)
  updates, opt_state = optax.adam(learning_rate).update(grads, opt_state)
  return optax.apply_updates(velocity, updates), opt_state, loss


def register(fixed, moving, steps, learning_rate, smoothness):
  """Fits a velocity field that warps `moving` onto `fixed`.

  Args:
    fixed, moving: float [H, W, C] images of one shape.
    steps: Adam steps, from a zero velocity.
    learning_rate: Adam's step size, in pixels.
    smoothness: weight of `smoothness_penalty` in the objective.

  Returns:
    (velocity [H, W, 2], displacement [H, W, 2] = integrate_velocity(velocity),
    losses float32 [steps], the objective before each step). The registered image is
    `stnjax.warp_flow(moving, displacement)`.
  """
  fixed, moving = jnp.asarray(fixed, jnp.float32), jnp.asarray(moving, jnp.float32)
  if fixed.ndim != 3 or fixed.shape != moving.shape:
    raise ValueError(f"fixed and moving must be [H, W, C] images of one shape, got "
                     f"{fixed.shape} and {moving.shape}.")
  velocity = jnp.zeros(fixed.shape[:2] + (2,), jnp.float32)
  opt_state = optax.adam(learning_rate).init(velocity)
  rates = jnp.float32(learning_rate), jnp.float32(smoothness)
  losses = []
  for _ in range(steps):
    velocity, opt_state, loss = train_step(velocity, opt_state, fixed, moving, *rates)
    losses.append(loss)  # Stays on the device: no sync per step.
  losses = np.asarray(jnp.stack(losses)) if losses else np.zeros(0, np.float32)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"loss is not finite at step {np.argmin(np.isfinite(losses))}.")
  return velocity, stnjax.integrate_velocity(velocity), losses


def to_display(image):
  """float [H, W, 1 or 3] in [0, 1] -> RGB PIL image, each pixel a ZOOM x ZOOM block."""
  pixels = (np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)
  pixels = np.broadcast_to(pixels, pixels.shape[:2] + (3,))
  picture = Image.fromarray(np.ascontiguousarray(pixels))
  return picture.resize((picture.width * ZOOM, picture.height * ZOOM), Image.NEAREST)


def draw_displacement(background, displacement):
  """Over a dimmed `background`, the grid of pixel centres p moved to p + displacement[p]."""
  picture = to_display(0.4 * np.asarray(background))
  points = (np.indices(displacement.shape[:2])[::-1].transpose(1, 2, 0)
            + np.asarray(displacement) + 0.5) * ZOOM  # (x, y) display coordinates.
  draw = ImageDraw.Draw(picture)
  for line in list(points[::GRID_EVERY]) + list(points[:, ::GRID_EVERY].transpose(1, 0, 2)):
    draw.line([tuple(p) for p in line], fill=(255, 80, 40), width=1)
  return picture


def draw(fixed, moving, registered, displacement):
  """The six PANELS side by side, each labelled, as one RGB PIL image."""
  fixed, moving, registered = (np.asarray(x) for x in (fixed, moving, registered))
  panels = [to_display(fixed), to_display(moving), to_display(registered),
            to_display(DIFFERENCE_GAIN * np.abs(fixed - moving)),
            to_display(DIFFERENCE_GAIN * np.abs(fixed - registered)),
            draw_displacement(moving, displacement)]
  labels = list(PANELS)
  labels[1] += f" (MSE {mse(moving, fixed):.4f})"
  labels[2] += f" (MSE {mse(registered, fixed):.4f})"
  size = panels[0].width
  sheet = Image.new("RGB", (MARGIN + len(panels) * (size + MARGIN), size + 2 * MARGIN),
                    (255, 255, 255))
  text = ImageDraw.Draw(sheet)
  for column, (label, panel) in enumerate(zip(labels, panels)):
    left = MARGIN + column * (size + MARGIN)
    sheet.paste(panel, (left, MARGIN))
    text.text((left, MARGIN - 16), label, fill=(0, 0, 0))
  return sheet


def main():
  parser = argparse.ArgumentParser(description="Register a distorted image with a velocity "
                                   "field and save a PNG.")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("outputs/register_velocity.png"))
  parser.add_argument("--index", type=int, default=0, help="Fashion-MNIST test image.")
  parser.add_argument("--data_dir", type=pathlib.Path, default=None,
                      help="Folder with t10k-images-idx3-ubyte.gz (default: the system's).")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the random distortion.")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--learning_rate", type=float, default=0.1)
  parser.add_argument("--smoothness", type=float, default=0.01)
  args = parser.parse_args()
  if args.out.suffix.lower() != ".png":
    parser.error(f"--out must end in .png, got {str(args.out)!r}")
  if args.steps < 0:
    parser.error(f"--steps must be >= 0, got {args.steps}")
  try:
    images = load_test_images(args.data_dir)
  except (idx.DatasetNotFoundError, idx.DataError) as error:
    print(f"Fashion-MNIST unavailable ({error})\nUsing a synthetic picture instead "
          "(--index ignored).")
    fixed, source = synthetic_picture(), "a synthetic picture"
  else:
    if not 0 <= args.index < len(images):
      parser.error(f"--index must be in [0, {len(images)}), got {args.index}")
    fixed = images[args.index, ..., None].astype(np.float32) / 255
    source = f"Fashion-MNIST test image {args.index}"

  moving, _ = distort(jnp.asarray(fixed), args.seed)
  start = time.perf_counter()
  _, displacement, _ = register(fixed, moving, args.steps, args.learning_rate,
                                args.smoothness)
  registered = jax.block_until_ready(stnjax.warp_flow(moving, displacement))
  seconds = time.perf_counter() - start
  before, after = mse(moving, fixed), mse(registered, fixed)
  print(f"{source}, distortion seed {args.seed}: MSE fixed vs moving {before:.5f}, "
        f"fixed vs registered {after:.5f} ({after / before:.1%} of it), "
        f"{args.steps} steps in {seconds:.2f} s (JIT compile included)")

  sheet = draw(fixed, moving, registered, displacement)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(args.out)
  print(f"wrote {args.out} ({sheet.width}x{sheet.height}): " + ", ".join(PANELS))


if __name__ == "__main__":
  main()
