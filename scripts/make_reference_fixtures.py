"""Writes tests/fixtures/torch_reference.npz: PyTorch's affine_grid/grid_sample outputs.

Images (4-D NCHW in PyTorch, NHWC in stnjax) and volumes (5-D NCDHW, NDHWC).

The test suite compares stnjax against these stored outputs and never imports torch.
Regenerate after changing the cases below (needs `pip install torch==2.13.0`):

    python scripts/make_reference_fixtures.py

References are computed in float64 from float32 inputs, so they are the exact answer
for the inputs stnjax sees, and stored rounded to float32. Random transforms whose source coordinates fall within
1e-4 pixels of an integer or half-integer are redrawn: there floor/round and the
padding folds are discontinuous, and float32 rounding could legitimately pick the
other side.
"""

import argparse
import itertools
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("bilinear", "nearest", "bicubic")
VOLUME_METHODS = ("bilinear", "nearest")  # PyTorch has no 5-D bicubic.
PADDING_MODES = ("zeros", "border", "reflection")
# (kind, input (H, W), output (Ho, Wo)): non-square everywhere, outputs of other sizes.
SHAPES = (
    ("affine", (5, 7), (5, 7)),
    ("affine", (13, 17), (9, 11)),
    ("affine", (5, 7), (8, 6)),
    ("affine", (1, 6), (2, 5)),
    ("projective", (13, 17), (11, 9)),
)
# (kind, input (D, H, W), output (Do, Ho, Wo)): no two sides equal.
VOLUME_SHAPES = (
    ("affine", (4, 5, 6), (4, 5, 6)),
    ("affine", (5, 6, 7), (3, 4, 5)),
    ("affine", (3, 4, 5), (5, 3, 6)),
    ("affine", (1, 4, 5), (2, 3, 4)),
    ("projective", (5, 6, 7), (4, 5, 3)),
)
BATCH, CHANNELS = 2, 3
TIE_MARGIN = 1e-4


def random_volume_theta(rng, kind):
  """A rotation about each axis, scales, shears and shifts; projective adds a last row."""
  theta = np.zeros((BATCH, 4, 4))
  for b in range(BATCH):
    linear = np.eye(3)
    for axis in range(3):
      angle = rng.uniform(-0.5, 0.5)
      cos, sin = np.cos(angle), np.sin(angle)
      i, j = [a for a in range(3) if a != axis]
      rotation = np.eye(3)
      rotation[[i, i, j, j], [i, j, i, j]] = cos, -sin, sin, cos
      linear = rotation @ linear
    linear = linear @ np.diag(rng.uniform(0.7, 1.4, 3)) + rng.uniform(-0.15, 0.15, (3, 3))
    theta[b, :3, :3] = linear
    theta[b, :3, 3] = rng.uniform(-0.4, 0.4, 3)
    theta[b, 3, 3] = 1
  if kind == "affine":
    return theta[:, :3].astype(np.float32)
  theta[:, 3, :3] = rng.uniform(-0.25, 0.25, (BATCH, 3))
  return theta.astype(np.float32)


def random_theta(rng, kind):
  angle = rng.uniform(-0.6, 0.6, BATCH)
  scale = rng.uniform(0.7, 1.4, (BATCH, 2))
  shear = rng.uniform(-0.2, 0.2, BATCH)
  shift = rng.uniform(-0.4, 0.4, (BATCH, 2))
  cos, sin = np.cos(angle), np.sin(angle)
  theta = np.zeros((BATCH, 3, 3))
  theta[:, 0] = np.stack([scale[:, 0] * cos, -scale[:, 1] * sin + shear, shift[:, 0]], -1)
  theta[:, 1] = np.stack([scale[:, 0] * sin, scale[:, 1] * cos, shift[:, 1]], -1)
  theta[:, 2, 2] = 1
  if kind == "affine":
    return theta[:, :2].astype(np.float32)
  theta[:, 2, :2] = rng.uniform(-0.3, 0.3, (BATCH, 2))
  return theta.astype(np.float32)


def torch_grid(theta, out_shape, align_corners):
  """Normalized grid [N, (Do,) Ho, Wo, dims] for a [N, dims, dims + 1] or (with
  perspective divide) [N, dims + 1, dims + 1] theta."""
  dims = len(out_shape)
  size = (theta.shape[0], CHANNELS) + tuple(out_shape)
  if theta.shape[-2] == dims:
    return F.affine_grid(theta, size, align_corners=align_corners)
  identity = torch.eye(dims, dims + 1, dtype=theta.dtype).expand(theta.shape[0], dims, dims + 1)
  base = F.affine_grid(identity, size, align_corners=align_corners)
  homogeneous = torch.cat([base, torch.ones_like(base[..., :1])], dim=-1)
  mapped = homogeneous @ theta.transpose(1, 2).reshape((theta.shape[0],) + (1,) * (dims - 1)
                                                       + (dims + 1, dims + 1))
  return mapped[..., :dims] / mapped[..., dims:]


def unnormalized(grid, in_shape, align_corners):
  sizes = np.array(in_shape[::-1], np.float64)
  if align_corners:
    return (grid + 1) / 2 * (sizes - 1)
  return ((grid + 1) * sizes - 1) / 2


def near_tie(grid, in_shape, align_corners):
  doubled = 2 * unnormalized(grid, in_shape, align_corners)
  close = np.abs(doubled - np.round(doubled)) < 2 * TIE_MARGIN
  if align_corners:
    # A size-1 axis maps every coordinate to exactly 0: no rounding can move it.
    close &= np.array(in_shape[::-1]) > 1
  return bool(close.any())


def reference(image, theta, grid32, cotangent, method, padding_mode, align_corners, out_shape):
  """Forward and gradients, in float64, for the theta path and the grid path."""
  dims = len(out_shape)
  channels_first = (0, dims + 1) + tuple(range(1, dims + 1))
  channels_last = (0,) + tuple(range(2, dims + 2)) + (1,)
  nchw = torch.tensor(image, dtype=torch.float64).permute(channels_first).requires_grad_()
  theta64 = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
  cotangent64 = torch.tensor(cotangent, dtype=torch.float64).permute(channels_first)
  options = dict(mode=method, padding_mode=padding_mode, align_corners=align_corners)

  out = F.grid_sample(nchw, torch_grid(theta64, out_shape, align_corners), **options)
  grad_image, grad_theta = torch.autograd.grad((out * cotangent64).sum(), (nchw, theta64))

  nchw_for_grid = nchw.detach().clone().requires_grad_()
  grid64 = torch.tensor(grid32, dtype=torch.float64, requires_grad=True)
  out_grid = F.grid_sample(nchw_for_grid, grid64, **options)
  grad_image_grid, grad_grid = torch.autograd.grad(
      (out_grid * cotangent64).sum(), (nchw_for_grid, grid64))

  to_nhwc = lambda t: t.detach().permute(channels_last).numpy()
  return {
      "out": to_nhwc(out),
      "grad_image": to_nhwc(grad_image),
      "grad_theta": grad_theta.numpy(),
      "out_grid": to_nhwc(out_grid),
      "grad_image_grid": to_nhwc(grad_image_grid),
      "grad_grid": grad_grid.numpy(),
  }


def make_cases(seed):
  rng = np.random.default_rng(seed)
  arrays = {}
  # Images first, then volumes, from one generator: adding volumes kept the image cases.
  for (kind, in_shape, out_shape), method, padding_mode, align_corners in itertools.chain(
      itertools.product(SHAPES, METHODS, PADDING_MODES, (False, True)),
      itertools.product(VOLUME_SHAPES, VOLUME_METHODS, PADDING_MODES, (False, True))):
    name = (f"{kind}_{'x'.join(map(str, in_shape))}_to_{'x'.join(map(str, out_shape))}_"
            f"{method}_{padding_mode}_{'aligned' if align_corners else 'unaligned'}")
    image = rng.uniform(-1, 1, (BATCH,) + in_shape + (CHANNELS,)).astype(np.float32)
    cotangent = rng.normal(size=(BATCH,) + out_shape + (CHANNELS,)).astype(np.float32)
    for _ in range(1000):
      theta = (random_theta if len(in_shape) == 2 else random_volume_theta)(rng, kind)
      with torch.no_grad():
        grid64 = torch_grid(torch.tensor(theta, dtype=torch.float64), out_shape,
                            align_corners).numpy()
      grid32 = grid64.astype(np.float32)
      if not (near_tie(grid64, in_shape, align_corners)
              or near_tie(grid32.astype(np.float64), in_shape, align_corners)):
        break
    else:
      raise RuntimeError(f"{name}: no theta without ties in 1000 draws")
    case = dict(image=image, theta=theta, grid=grid32, grid_from_theta=grid64,
                cotangent=cotangent,
                options=np.array([method, padding_mode, str(align_corners)]),
                out_shape=np.array(out_shape))
    case.update(reference(image, theta, grid32, cotangent, method, padding_mode,
                          align_corners, out_shape))
    for key, value in case.items():
      # float32 storage: the reference's rounding to float32 is far below the tolerances.
      if value.dtype == np.float64:
        value = value.astype(np.float32)
      arrays[f"{name}/{key}"] = value
  return arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/torch_reference.npz"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  arrays = make_cases(args.seed)
  arrays["torch_version"] = np.array(torch.__version__)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {len([k for k in arrays if k.endswith('/out')])} cases to {args.out} "
        f"({args.out.stat().st_size / 1024:.0f} KiB) with torch {torch.__version__}")


if __name__ == "__main__":
  main()
