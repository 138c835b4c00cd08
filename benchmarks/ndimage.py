"""map_coordinates throughput: stnjax against scipy.ndimage and jax.scipy.ndimage, in one run.

    python benchmarks/ndimage.py                  # full run, table on stdout
    python benchmarks/ndimage.py --quick          # fewer repeats
    python benchmarks/ndimage.py --json out.json

Cases: a 2-D image and a 3-D volume, each read at as many points as it has pixels (a
rotated and scaled grid, so that the reads are not aligned), in mode "nearest" (which
means the same in the three libraries), at every order.

Peers: `stnjax.map_coordinates` (jit-compiled, float32); `scipy.ndimage.map_coordinates`
(float32 input and points; it computes in float64, on one core), every order;
`jax.scipy.ndimage.map_coordinates` (jit-compiled, float32), orders 0 and 1, which are
all it has. Modes: "forward" (the values), and for the JAX peers "grad" (the values
and the gradient of their sum with respect to the image and the points). The peers of
a cell take turns of a few calls, the first of each turn untimed; a cell is the median
of the timed calls. The ratio is the peer's time divided by stnjax's: above 1.0,
stnjax is faster.
"""

import argparse
import datetime
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sampler  # noqa: E402  (for its timing in turns and environment)

import stnjax  # noqa: E402

SHAPES = ((256, 256), (48, 48, 48))
ORDERS = tuple(range(6))
MODE = "nearest"


def rotated_points(shape, angle=0.3, scale=0.9):
  """Points `[ndim, *shape]`: the array's own grid, rotated in its first two axes about
  the centre and scaled, so that each lands between pixels."""
  grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape],
                              indexing="ij"))
  centre = (np.array(shape, np.float64) - 1) / 2
  centred = (grid - centre.reshape((-1,) + (1,) * len(shape))) * scale
  rows, cols = centred[-2], centred[-1]
  turned = centred.copy()
  turned[-2] = np.cos(angle) * rows - np.sin(angle) * cols
  turned[-1] = np.sin(angle) * rows + np.cos(angle) * cols
  return (turned + centre.reshape((-1,) + (1,) * len(shape))).astype(np.float32)


def runners(image, points, order, mode_name):
  """{peer: call} for one cell; each call returns once its result is computed."""
  jax_image, jax_points = jnp.asarray(image), jnp.asarray(points)
  peers = {"stnjax": lambda i, c: stnjax.map_coordinates(i, c, order, MODE)}
  if order <= 1:
    peers["jax.scipy"] = lambda i, c: jax.scipy.ndimage.map_coordinates(i, list(c), order, MODE)
  calls = {}
  for name, function in peers.items():
    if mode_name == "forward":
      compiled = jax.jit(function)
    else:
      compiled = jax.jit(jax.value_and_grad(lambda i, c, f=function: f(i, c).sum(),
                                            argnums=(0, 1)))
    calls[name] = (lambda f=compiled: jax.block_until_ready(f(jax_image, jax_points)))
  if mode_name == "forward":
    calls["scipy"] = lambda: scipy.ndimage.map_coordinates(image, points, order=order,
                                                           mode=MODE)
  return calls


def run(shapes, orders, modes, warmup, repeats):
  records = []
  for shape in shapes:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    points = rotated_points(shape)
    for mode_name in modes:
      for order in orders:
        calls = runners(image, points, order, mode_name)
        times = sampler.median_seconds_in_turns(calls, warmup, repeats)
        for peer, seconds in times.items():
          records.append({"shape": list(shape), "order": order, "mode": mode_name,
                          "peer": peer, "ms": seconds * 1e3,
                          "ratio": seconds / times["stnjax"]})
  return records


def table(env, records):
  lines = [f"device: {env['device']}; {env['cpu']}, {env['cpu_count']} cores; versions: "
           + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
           "ratio: the peer's time / stnjax's (above 1.0, stnjax is faster)", "",
           "| shape | mode | order | stnjax ms | scipy ms (ratio) | jax.scipy ms (ratio) |",
           "|---|---|---|---|---|---|"]
  cells = {}
  for record in records:
    key = (tuple(record["shape"]), record["mode"], record["order"])
    cells.setdefault(key, {})[record["peer"]] = record

  def text(cell, peer):
    if peer not in cell:
      return "-"
    return f"{cell[peer]['ms']:.2f} ({cell[peer]['ratio']:.2f}x)"

  for (shape, mode, order), cell in cells.items():
    lines.append(f"| {'x'.join(map(str, shape))} | {mode} | {order} | "
                 f"{cell['stnjax']['ms']:.2f} | {text(cell, 'scipy')} | "
                 f"{text(cell, 'jax.scipy')} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--orders", type=int, nargs="+", default=ORDERS, choices=ORDERS)
  parser.add_argument("--modes", nargs="+", default=("forward", "grad"),
                      choices=("forward", "grad"))
  parser.add_argument("--dims", type=int, nargs="+", default=(2, 3), choices=(2, 3))
  parser.add_argument("--json", type=pathlib.Path, help="also write the records here")
  args = parser.parse_args(argv)
  shapes = [shape for shape in SHAPES if len(shape) in args.dims]
  warmup, repeats = (1, 6) if args.quick else (2, 15)
  env = sampler.environment(torch_threads=None)
  env["versions"]["scipy"] = sampler.version("scipy")
  env["date"] = datetime.date.today().isoformat()
  records = run(shapes, args.orders, args.modes, warmup, repeats)
  print(table(env, records))
  if args.json:
    args.json.write_text(json.dumps({"environment": env, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
  main()
