"""Antialiased sampling: error against the box-filtered warp, and what it costs.

    python benchmarks/antialias.py                    # tables on stdout
    python benchmarks/antialias.py --quick            # fewer timing repeats
    python benchmarks/antialias.py --json docs/antialias_cpu.json \
        --picture docs/antialias_zone_plate.png

Error: on a 256 x 256 zone plate (every frequency up to Nyquist, in every direction),
the RMS error of plain and of antialiased bilinear sampling (`stnjax.sample(...,
antialias=True)`) against the reference the issue names: for each output pixel, the
mean of plain bilinear samples at 16 x 16 evenly spaced points inside the output pixel's
square, mapped through theta. The ratio is antialiased over plain; the bound is the
issue's (0.5 at 2x and for anisotropic footprints, 0.3 at 4x and 8x with rotations;
none for the projective and 3x rows, which are shown for what they are).

Cost: a batch of 8 images, 256 x 256 and 512 x 512 (`--cost_sizes`), warped to a
quarter of the size (4x shrinking, a different rotation per image), plain and
antialiased in turns of a few calls, the first of each turn untimed; medians, forward
and forward + backward to theta and image, and the minor page faults per call of each
(plain / antialiased) after the timing.
"""

import argparse
import json
import pathlib
import sys

try:
  import resource  # POSIX only.
except ImportError:
  resource = None

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sampler  # noqa: E402  (its timing in turns and environment lines)

import stnjax  # noqa: E402

SIZE = 256


def zone_plate(size):
  y, x = np.mgrid[:size, :size] - (size - 1) / 2
  return jnp.asarray((0.5 + 0.5 * np.cos(np.pi / size * (x * x + y * y)))[..., None],
                     jnp.float32)


def affine(degrees=0.0, scale_x=1.0, scale_y=1.0):
  angle = np.deg2rad(degrees)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  linear = rotation @ np.diag([scale_x, scale_y])
  return np.concatenate([linear, np.zeros((2, 1))], axis=1).astype(np.float32)


# (name, theta, output size as a fraction of SIZE (height, width), issue's bound or None).
ERROR_CASES = (
    ("2x", affine(), (1 / 2, 1 / 2), 0.5),
    ("2x, rotated 30", affine(30), (1 / 2, 1 / 2), 0.5),
    ("3x, rotated 17", affine(17), (1 / 3, 1 / 3), None),
    ("4x, rotated 30", affine(30), (1 / 4, 1 / 4), 0.3),
    ("4x, rotated 10", affine(10), (1 / 4, 1 / 4), 0.3),
    ("8x, rotated 30", affine(30), (1 / 8, 1 / 8), 0.3),
    ("x 4x, y 1x", affine(), (1, 1 / 4), 0.5),
    ("x 4x, y 1x, rotated 30", affine(30), (1, 1 / 4), 0.5),
    ("projective, up to 5x", np.array([[1, 0, 0], [0, 1, 0], [0, -0.6, 1]], np.float32),
     (1, 1), None),
)


def box_filtered(theta, image, out_shape):
  height, width = out_shape
  dense = stnjax.sample(theta, image, (16 * height, 16 * width))
  return dense.reshape(height, 16, width, 16, -1).mean(axis=(1, 3))


def rms(a, b):
  return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def errors(size=SIZE):
  image = zone_plate(size)
  records = []
  for name, theta, fraction, bound in ERROR_CASES:
    out_shape = tuple(max(1, round(size * f)) for f in fraction)
    theta = jnp.asarray(theta)
    reference = box_filtered(theta, image, out_shape)
    plain = rms(stnjax.sample(theta, image, out_shape), reference)
    filtered = rms(stnjax.sample(theta, image, out_shape, antialias=True), reference)
    records.append(dict(case=name, out_shape=list(out_shape), plain_rms=plain,
                        antialiased_rms=filtered, ratio=filtered / plain, bound=bound,
                        meets_bound=None if bound is None else filtered / plain <= bound))
  return records


def costs(warmup, repeats, sizes=(SIZE,), channels=(1, 3), batch=8):
  return [record for size in sizes
          for record in costs_at(warmup, repeats, size, channels, batch)]


def costs_at(warmup, repeats, size, channels, batch):
  records = []
  out = size // 4
  angles = np.deg2rad(np.arange(batch) * 10.0)
  thetas = jnp.asarray(np.stack([affine(np.rad2deg(a)) for a in angles]))
  for channel_count in channels:
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch, size, size, channel_count))
    for mode in ("forward", "grad_theta_image"):
      runners = {}
      for antialias in (False, True):
        def warp(theta, image, antialias=antialias):
          return stnjax.sample(theta, image, (out, out), antialias=antialias)
        if mode == "forward":
          function = jax.jit(warp)
        else:
          function = jax.jit(jax.grad(lambda t, i, w=warp: jnp.sum(w(t, i) ** 2), (0, 1)))
        function(thetas, images)  # Compiles.
        runners["antialiased" if antialias else "plain"] = (
            lambda f=function: jax.block_until_ready(f(thetas, images)))
      seconds = sampler.median_seconds_in_turns(runners, warmup, repeats)
      faults = {name: page_faults_per_call(run) for name, run in runners.items()}
      records.append(dict(shape=f"[{batch}, {size}, {size}, {channel_count}] -> {out}x{out}",
                          mode=mode, plain_ms=seconds["plain"] * 1e3,
                          antialiased_ms=seconds["antialiased"] * 1e3,
                          cost=seconds["antialiased"] / seconds["plain"],
                          plain_page_faults=faults["plain"],
                          antialiased_page_faults=faults["antialiased"]))
  return records


def page_faults_per_call(run, calls=5):
  """Minor page faults per call after the timing (where `resource` exists): the C
  library's allocator may map a program's temporaries afresh on every call, whose first
  touches then cost system time that the sampler's arithmetic does not."""
  if resource is None:
    return None
  run()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    run()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def tables(env, error_records, cost_records):
  lines = [f"device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores)",
           "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()
                                    if k in ("stnjax", "jax", "jaxlib")), "",
           "| case | output | plain RMS | antialiased RMS | ratio | bound |",
           "|---|---|---|---|---|---|"]
  for r in error_records:
    bound = "-" if r["bound"] is None else (
        f"{r['bound']} ({'met' if r['meets_bound'] else 'MISSED'})")
    lines.append(f"| {r['case']} | {r['out_shape'][0]}x{r['out_shape'][1]} | "
                 f"{r['plain_rms']:.4f} | {r['antialiased_rms']:.4f} | {r['ratio']:.3f} | "
                 f"{bound} |")
  lines += ["", "| shape | mode | plain | antialiased | cost | page faults per call |",
            "|---|---|---|---|---|---|"]
  for r in cost_records:
    faults = ("-" if r["plain_page_faults"] is None else
              f"{r['plain_page_faults']:.0f} / {r['antialiased_page_faults']:.0f}")
    lines.append(f"| {r['shape']} | {r['mode']} | {r['plain_ms']:.3f} ms | "
                 f"{r['antialiased_ms']:.3f} ms | {r['cost']:.2f}x | {faults} |")
  return "\n".join(lines)


def picture(path, size=SIZE):
  """Zone plate zoomed out 4x and rotated: plain, antialiased, the box-filtered reference."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  image = zone_plate(size)
  theta = jnp.asarray(affine(30))
  out_shape = (size // 4, size // 4)
  panels = [("input (256 x 256)", image),
            ("plain bilinear, 4x smaller", stnjax.sample(theta, image, out_shape)),
            ("antialias=True", stnjax.sample(theta, image, out_shape, antialias=True)),
            ("box-filtered reference", box_filtered(theta, image, out_shape))]
  figure, axes = plt.subplots(1, 4, figsize=(12, 3.4))
  for axis, (title, panel) in zip(axes, panels):
    axis.imshow(np.asarray(panel)[..., 0], cmap="gray", vmin=0, vmax=1,
                interpolation="nearest")
    axis.set_title(title, fontsize=10)
    axis.axis("off")
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 warm-up and 6 repeats")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls per runner")
  parser.add_argument("--json", type=pathlib.Path, help="write the records as JSON here")
  parser.add_argument("--picture", type=pathlib.Path, help="write the zone plate picture here")
  parser.add_argument("--channels", type=int, nargs="+", default=[1, 3],
                      help="image channels of the cost cases")
  parser.add_argument("--cost_sizes", type=int, nargs="+", default=[SIZE, 2 * SIZE],
                      help="input sizes of the cost cases (square, warped to a quarter)")
  parser.add_argument("--size", type=int, default=SIZE, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if min(args.cost_sizes) < 4:
    parser.error(f"--cost_sizes must be >= 4 (warped to a quarter), got {args.cost_sizes}")
  if args.repeats is None:
    args.repeats = 6 if args.quick else 30
  if args.repeats < 1:
    parser.error(f"--repeats must be >= 1, got {args.repeats}")
  if args.picture and args.picture.suffix.lower() != ".png":
    parser.error(f"--picture must name a .png file, got {str(args.picture)!r}")
  return args


def main(argv=None):
  args = parse_args(argv)
  env = sampler.environment(torch_threads=None)
  error_records = errors(args.size)
  cost_records = costs(warmup=1 if args.quick else 3, repeats=args.repeats,
                       sizes=args.cost_sizes, channels=args.channels)
  print(tables(env, error_records, cost_records))
  if args.json:
    args.json.write_text(json.dumps(
        {"environment": env, "errors": error_records, "costs": cost_records}, indent=1))
  if args.picture:
    picture(args.picture, args.size)
  return error_records, cost_records


if __name__ == "__main__":
  main()
