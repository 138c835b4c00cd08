"""Warps a test picture with stnjax and writes a PNG showing input, sampling grid and output.

    python examples/warp_demo.py --out outputs/warp_demo.png

Each row: the input with the sampling grid drawn on it (where each output pixel reads,
outline in red), then the output. Rows: a similarity transform (rotate, zoom,
shift), a projective one, and a thin-plate spline.
"""

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

import stnjax
from stnjax import transforms

IMAGE_SHAPE = (96, 128)  # Non-square on purpose.
OUT_SHAPE = (72, 72)
ZOOM = 3  # Display pixels per image pixel.


def test_picture(shape):
  """An RGB float image: colour ramps, a checkerboard and an asymmetric 'F'."""
  height, width = shape
  rows, cols = np.mgrid[0:height, 0:width]
  red = cols / (width - 1)
  green = rows / (height - 1)
  checker = ((rows // 12 + cols // 12) % 2) * 0.35 + 0.3
  picture = np.stack([red, green, checker], axis=-1)
  letter = np.zeros(shape, bool)
  top, left = height // 4, width // 3
  letter[top:top + height // 2, left:left + 8] = True  # Stem.
  letter[top:top + 8, left:left + width // 4] = True  # Top bar.
  letter[top + height // 5:top + height // 5 + 7, left:left + width // 6] = True  # Middle bar.
  picture[letter] = (1.0, 1.0, 1.0)
  return picture.astype(np.float32)


def to_display(image):
  """float [H, W, 3] in [0, 1] -> enlarged PIL image."""
  pixels = (np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)
  picture = Image.fromarray(pixels)
  return picture.resize((picture.width * ZOOM, picture.height * ZOOM), Image.NEAREST)


def draw_grid(picture, grid, in_shape):
  """Draws where output pixels read: every 8th grid point and the outline in red."""
  pixels = np.asarray(stnjax.normalized_to_pixel(grid, in_shape))
  display = (pixels + 0.5) * ZOOM
  draw = ImageDraw.Draw(picture)
  for x, y in display[::8, ::8].reshape(-1, 2):
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 255, 0))
  outline = np.concatenate([display[0], display[1:, -1], display[-1, ::-1], display[::-1, 0]])
  draw.line([tuple(p) for p in outline], fill=(255, 0, 0), width=2)
  return picture


def demo_rows(image):
  """(label, grid, output) for each transform shown."""
  similarity = transforms.similarity()
  similarity_params = jnp.array([0.5, np.log(0.6), 0.15, -0.1])
  projective_theta = jnp.array([[0.7, 0.1, 0.0], [-0.05, 0.6, 0.05], [0.25, -0.2, 1.0]])
  tps = transforms.tps((4, 4))
  tps_params = jnp.asarray(np.random.default_rng(0).normal(0, 0.12, tps.num_params), jnp.float32)
  return [
      ("similarity", similarity.grid(similarity_params, OUT_SHAPE),
       transforms.warp(similarity, similarity_params, image, OUT_SHAPE)),
      ("projective", stnjax.affine_grid(projective_theta, OUT_SHAPE),
       stnjax.sample(projective_theta, image, OUT_SHAPE, method="bicubic")),
      ("thin-plate spline", tps.grid(tps_params, OUT_SHAPE),
       transforms.warp(tps, tps_params, image, OUT_SHAPE, padding_mode="border")),
  ]


def render(image, rows):
  panels = [(draw_grid(to_display(image), grid, image.shape[:2]), to_display(out), label)
            for label, grid, out in rows]
  margin = 24
  width = margin * 3 + panels[0][0].width + panels[0][1].width
  height = margin + len(panels) * (panels[0][0].height + margin)
  sheet = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  y = margin
  for source, output, label in panels:
    sheet.paste(source, (margin, y))
    sheet.paste(output, (2 * margin + source.width, y))
    draw.text((margin, y - 16), f"{label}: input and sampling grid", fill=(0, 0, 0))
    draw.text((2 * margin + source.width, y - 16), "output", fill=(0, 0, 0))
    y += source.height + margin
  return sheet


def main():
  parser = argparse.ArgumentParser(description="Warp a test picture and save a PNG.")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/warp_demo.png"))
  args = parser.parse_args()
  if args.out.suffix.lower() != ".png":
    parser.error(f"--out must end in .png, got {str(args.out)!r}")
  image = jnp.asarray(test_picture(IMAGE_SHAPE))
  sheet = render(image, demo_rows(image))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(args.out)
  print(f"wrote {args.out} ({sheet.width}x{sheet.height}): input {IMAGE_SHAPE}, "
        f"outputs {OUT_SHAPE}, similarity / projective / thin-plate spline")


if __name__ == "__main__":
  main()
