"""Pictures of what the spatial transformer learned, as the tutorials draw them.

Each epoch: a PNG with fixed test inputs (top row, the sampling grid's outline in red)
above the transformer's outputs (bottom row). At the end: an animated GIF over epochs.
"""

import pathlib

import numpy as np
from PIL import Image, ImageDraw

import stnjax

ZOOM = 3


def _to_rgb(image):
  """float [H, W, C] in [0, 1] (C = 1 or 3) -> uint8 [H * ZOOM, W * ZOOM, 3]."""
  pixels = np.clip(np.asarray(image, np.float32), 0, 1)
  if pixels.shape[-1] == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  pixels = (pixels[..., :3] * 255).astype(np.uint8)
  return np.kron(pixels, np.ones((ZOOM, ZOOM, 1), np.uint8))


def _grid_and_output(images, transform):
  """Normalized sampling grid [B, Ho, Wo, 2] and the warped images of a TransformOutput."""
  if transform.theta is not None:
    grid = stnjax.affine_grid(transform.theta, images.shape[1:3])
  else:
    grid = transform.grid
  return np.asarray(grid), np.asarray(stnjax.grid_sample(images, grid))


def save_epoch_picture(path: pathlib.Path, images, transforms, epoch: int) -> None:
  """Writes the picture of one epoch. images: [B, H, W, C]; transforms: TransformOutputs."""
  path.parent.mkdir(parents=True, exist_ok=True)
  count, height, width, _ = images.shape
  rows = 2 if transforms else 1
  gap = 4
  sheet = Image.new("RGB", (count * (width * ZOOM + gap) + gap,
                            rows * (height * ZOOM + gap) + gap + 14), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  draw.text((gap, 1), f"epoch {epoch}: inputs" + (" / transformed" if transforms else ""),
            fill=(0, 0, 0))
  grid = outputs = None
  if transforms:
    grid, outputs = _grid_and_output(images, transforms[0])
  for i in range(count):
    x0, y0 = gap + i * (width * ZOOM + gap), 14 + gap
    tile = Image.fromarray(_to_rgb(images[i]))
    if grid is not None:
      # Drawn on the tile itself, so an outline reaching outside the input is clipped.
      pixels = np.asarray(stnjax.normalized_to_pixel(grid[i], (height, width)))
      points = (pixels + 0.5) * ZOOM
      outline = np.concatenate([points[0], points[1:, -1], points[-1, ::-1], points[::-1, 0]])
      ImageDraw.Draw(tile).line([tuple(p) for p in outline], fill=(255, 0, 0), width=1)
      sheet.paste(Image.fromarray(_to_rgb(outputs[i])), (x0, y0 + height * ZOOM + gap))
    sheet.paste(tile, (x0, y0))
  sheet.save(path)


def save_animation(folder: pathlib.Path, path: pathlib.Path) -> None:
  """An animated GIF of the epoch pictures in folder (nothing if there are none)."""
  frames = [Image.open(p).convert("RGB") for p in sorted(folder.glob("epoch_*.png"))]
  if frames:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=600, loop=0)
