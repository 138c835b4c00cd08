"""Does the transformer undo the distortion? Residual geometry of known distortions.

The distortions R, RTS and P are generated from known matrices, so for each test
example the map from the transformer's output pixels to the undistorted digit's pixels
is known: the transformer's sampling grid (output pixel -> distorted image) composed
with the distortion (distorted image -> digit). A transformer that canonicalizes makes
that map the same for every example, whatever it is; so what is reported is its spread
over the test set. The map is summarized by the affine map that fits it best (least
squares over the output pixels; exact for affine transforms on affine distortions), as
the rotation of its nearest similarity, its log area scale, and the digit pixel that
the output's centre shows. The same figures for the input itself (the identity in
place of the transformer) are the distortion's own spread.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

import stnjax

DIGIT_SHAPE = (28, 28)


def residual_geometry(grid: jax.Array, distortion_thetas: jax.Array) -> dict:
  """Per example: `rotation` (radians), `log_scale` and `position` `[B, 2]` (digit pixels).

  Args:
    grid: `[B, Ho, Wo, 2]` normalized points of the distorted image that the output
      pixels read (the transformer's sampling grid).
    distortion_thetas: `[B, 3, 3]` from `distortions.distortion_thetas`.
  """
  homogeneous = jnp.concatenate([grid, jnp.ones_like(grid[..., :1])], axis=-1)
  mapped = jnp.einsum("bij,bhwj->bhwi", distortion_thetas, homogeneous)
  digit = stnjax.normalized_to_pixel(mapped[..., :2] / mapped[..., 2:], DIGIT_SHAPE)
  out_height, out_width = grid.shape[1:3]
  rows, cols = np.mgrid[0:out_height, 0:out_width].astype(np.float32)
  out = np.stack([cols, rows], axis=-1).reshape(-1, 2)
  out = out - out.mean(axis=0)
  digit = digit.reshape(digit.shape[0], -1, 2)
  position = digit.mean(axis=1)
  # Least squares digit ~ linear @ out + position; the centred output grid has a
  # diagonal covariance, so each column of `linear` is a projection.
  linear = jnp.einsum("bki,kj->bij", digit - position[:, None], out) / np.maximum(
      (out * out).sum(axis=0), 1e-12)
  rotation = jnp.arctan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1])
  log_scale = 0.5 * jnp.log(jnp.abs(jnp.linalg.det(linear)))
  return {"rotation": rotation, "log_scale": log_scale, "position": position}


def spreads(geometry: dict) -> dict:
  """Spread over examples: circular standard deviation of the rotation (degrees), standard
  deviation of the log scale, RMS distance of the position from its mean (digit pixels)."""
  rotation = np.asarray(geometry["rotation"], np.float64)
  resultant = min(abs(np.mean(np.exp(1j * rotation))), 1.0)  # Rounding can pass 1.
  position = np.asarray(geometry["position"], np.float64)
  return {
      "rotation_deg": math.degrees(math.sqrt(-2 * math.log(max(resultant, 1e-300)))),
      "log_scale": float(np.std(np.asarray(geometry["log_scale"], np.float64))),
      "translation_px": float(np.sqrt(np.mean(np.sum((position - position.mean(0)) ** 2, -1)))),
  }


def rotation_by_input_angle(input_geometry: dict, model_geometry: dict, bin_deg: float = 15.0
                            ) -> list:
  """How much rotation is left, by how much the input was rotated: per bin of the
  input's rotation (the distortion's own angle, 0 upright), the mean and the mean
  absolute rotation after the transformer (about its circular mean), in degrees. A
  transformer that undoes small rotations but not large ones shows a residual that
  grows towards the ends.
  """
  before = np.degrees(np.asarray(input_geometry["rotation"], np.float64))
  after = _centred_rotation_deg(model_geometry["rotation"])
  low = bin_deg * math.floor(before.min() / bin_deg)
  high = bin_deg * (math.floor(before.max() / bin_deg) + 1)
  rows = []
  for start in np.arange(low, high, bin_deg):
    inside = (before >= start) & (before < start + bin_deg)
    if inside.any():
      rows.append({"input_deg": [float(start), float(start + bin_deg)],
                   "count": int(inside.sum()),
                   "residual_deg": float(after[inside].mean()),
                   "abs_residual_deg": float(np.abs(after[inside]).mean())})
  return rows


def _centred_rotation_deg(rotation):
  """Rotations in degrees about their circular mean, in (-180, 180]."""
  rotation = np.asarray(rotation, np.float64)
  mean = np.angle(np.mean(np.exp(1j * rotation)))
  return np.degrees(np.angle(np.exp(1j * (rotation - mean))))


def save_histograms(path, input_geometry: dict, model_geometry: dict) -> None:
  """A picture: for rotation, log scale and position, histograms of the input's spread
  (grey) and of what is left after the transformer (red), each about its own mean."""
  def values(geometry):
    position = np.asarray(geometry["position"], np.float64)
    return [_centred_rotation_deg(geometry["rotation"]),
            np.asarray(geometry["log_scale"], np.float64)
            - np.mean(np.asarray(geometry["log_scale"], np.float64)),
            np.linalg.norm(position - position.mean(0), axis=-1)]

  titles = ["rotation about the mean (degrees)", "log scale about the mean",
            "distance from the mean position (digit pixels)"]
  panel_width, panel_height, bins, margin = 300, 150, 36, 18
  sheet = Image.new("RGB", (3 * panel_width + 4 * margin, panel_height + 3 * margin + 14),
                    (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  draw.text((margin, 2), "grey: input, red: after the transformer (share of examples per bin)",
            fill=(0, 0, 0))
  for panel, (title, before, after) in enumerate(zip(titles, values(input_geometry),
                                                     values(model_geometry))):
    low = min(before.min(), after.min())
    high = max(before.max(), after.max())
    if high - low < 1e-9:
      low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(v, edges)[0] / max(len(v), 1) for v in (before, after)]
    tallest = max(max(c.max() for c in counts), 1e-9)
    x0, y0 = margin + panel * (panel_width + margin), 14 + margin + panel_height
    bar = panel_width / bins
    for share, colour, inset in ((counts[0], (160, 160, 160), 0), (counts[1], (220, 40, 40), 2)):
      for i, value in enumerate(share):
        top = y0 - value / tallest * (panel_height - 4)
        draw.rectangle([x0 + i * bar + inset, top, x0 + (i + 1) * bar - 1 - inset, y0],
                       fill=colour)
    draw.line([x0, y0, x0 + panel_width, y0], fill=(0, 0, 0))
    draw.text((x0, y0 + 2), f"{low:.3g}", fill=(0, 0, 0))
    draw.text((x0 + panel_width - 40, y0 + 2), f"{high:.3g}", fill=(0, 0, 0))
    draw.text((x0, y0 + margin), title, fill=(0, 0, 0))
  path.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)
