"""The image gradient of a zoom-in: its time, and how much it varies from call to call.

    python benchmarks/scatter_check.py [--shape 64 512 512 3] [--scales 0.25] [--json PATH]
    XLA_FLAGS=--xla_backend_extra_options=-nvptx-allow-ftz-atomics \\
        python benchmarks/scatter_check.py --peers stnjax --json PATH   # a second process

stnjax's image gradient (the default backward of `sample`) is XLA's scatter-add: each
output point adds its four weighted cotangents into the input pixels it read. A
transformer that zooms in (theta = scale * identity, scale < 1) sends many output
points to each input pixel, so many adds meet at one address: where XLA compiles a
float32 scatter-add on the GPU to a compare-and-swap loop instead of the native atomic
add (jaxlib 0.10.2 to 0.11.0, jax-ml/jax#38806), such a gradient is slow; the flag
above restores the atomic. XLA reads XLA_FLAGS once, at start: compare runs of this
script with and without it (benchmarks/device_check.sh does). Atomic adds also land in
a different order each call, so the float sums can differ bitwise;
`--xla_gpu_deterministic_ops=true` makes XLA sort instead, at some cost.

For each scale: the median time of the jitted gradient w.r.t. the image (theta
fixed, `[B, H, W, C]` image, output of the input's size), and its spread over
`--calls` calls on the same inputs: how many bitwise-distinct results, and the largest
absolute difference from the first. Beside it, PyTorch's `grid_sample` backward
(affine_grid + grid_sample, bilinear, zeros, align_corners=False) on the same data, on
`--device` (by default CUDA where JAX runs on a GPU), and the largest difference
between the two gradients. Timing is synchronized on both sides (block_until_ready,
torch.cuda.synchronize), the peers taking turns as in benchmarks/sampler.py. A
gradient far slower than planned is called fewer times: each scale stops timing once
`--budget_s` is spent, and the records say how many calls were made.
"""

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sampler  # noqa: E402  (environment lines, torch's device)

import stnjax  # noqa: E402

PEERS = ("stnjax", "torch")


def zoom_theta(batch, scale):
  """`[batch, 2, 3]`: scale * identity, no shift (the output shows the centre, enlarged)."""
  return np.tile(np.array([[scale, 0, 0], [0, scale, 0]], np.float32), (batch, 1, 1))


def make_inputs(shape, scale, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, shape).astype(np.float32)
  cotangent = rng.normal(size=shape).astype(np.float32)
  return image, zoom_theta(shape[0], scale), cotangent


def jax_gradient(inputs, dtype):
  """(no-argument callable -> the image gradient on the device, a comparer)."""
  image, theta, cotangent = (jnp.asarray(a, dtype) for a in inputs)

  def loss(image, theta, cotangent):
    return jnp.vdot(stnjax.sample(theta, image), cotangent).astype(jnp.float32)

  # Every array an argument: none is baked into the program as a constant.
  gradient = jax.jit(jax.grad(loss))

  def call():
    return jax.block_until_ready(gradient(image, theta, cotangent))

  bits = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize]

  @jax.jit
  def compare(a, b):
    same = jnp.all(jax.lax.bitcast_convert_type(a, bits) == jax.lax.bitcast_convert_type(b, bits))
    return same, jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))

  def comparer(a, b):
    same, difference = compare(a, b)
    return bool(same), float(difference)

  return call, comparer, lambda result: np.asarray(result, np.float32)


def torch_gradient(inputs, dtype, device):
  import torch
  import torch.nn.functional as F

  dtype = getattr(torch, dtype)
  image, theta, cotangent = inputs
  image = torch.tensor(image, device=device).to(dtype).permute(0, 3, 1, 2).contiguous()
  theta = torch.tensor(theta, device=device).to(dtype)
  cotangent = torch.tensor(cotangent, device=device).to(dtype).permute(0, 3, 1, 2).contiguous()
  grid = F.affine_grid(theta, image.shape, align_corners=False)
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def call():
    leaf = image.detach().requires_grad_()
    out = F.grid_sample(leaf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out.backward(cotangent)
    synchronize()
    return leaf.grad

  bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]

  def comparer(a, b):
    same = bool(torch.equal(a.view(bits), b.view(bits)))
    return same, float((a.float() - b.float()).abs().max())

  def to_numpy(result):  # NHWC, float32, as stnjax's.
    return result.float().permute(0, 2, 3, 1).cpu().numpy()

  return call, comparer, to_numpy


def spread(call, comparer, calls, seconds):
  """(calls made, bitwise-distinct results, largest |difference| from the first), from
  `calls` calls or as many as `seconds` allow (at least 3)."""
  first = call()
  comparer(first, first)  # Compiles.
  deadline = time.perf_counter() + seconds
  distinct, largest, made = [first], 0.0, 1
  while made < calls and (made < 3 or time.perf_counter() < deadline):
    result = call()
    made += 1
    matches = [comparer(result, seen) for seen in distinct]
    if not any(same for same, _ in matches):
      distinct.append(result)
    largest = max(largest, matches[0][1])
  return made, len(distinct), largest


def check_scale(shape, scale, dtype, available, args):
  """Records for one scale: each peer's time and spread, and their agreement."""
  inputs = make_inputs(shape, scale)
  records, outputs, runners = {}, {}, {}
  for name, factory in available.items():
    record = records[name] = dict(peer=name, scale=scale, shape=str(list(shape)), dtype=dtype)
    if isinstance(factory, str):
      record.update(status="skipped", reason=factory)
      continue
    try:
      call, comparer, to_numpy = factory(inputs, dtype)
      start = time.perf_counter()
      outputs[name] = to_numpy(call())  # Compiles.
      record["first_call_s"] = time.perf_counter() - start
      start = time.perf_counter()
      call()
      once = time.perf_counter() - start
      runners[name] = (call, comparer, once)
    except Exception as error:  # noqa: BLE001  (out of memory, a dtype it lacks)
      record.update(status="failed", reason=f"{type(error).__name__}: {error}"[:500])
  if runners:
    # As many timed calls as the budget allows (at least 3 each), taken in turns.
    slowest = max(once for _, _, once in runners.values())
    share = args.budget_s / 2 / len(runners)
    repeats = max(3, min(args.repeats, int(share / max(slowest, 1e-9))))
    warmup = min(args.warmup, max(1, repeats // 3))
    try:
      seconds = sampler.median_seconds_in_turns(
          {name: call for name, (call, _, _) in runners.items()}, warmup, repeats)
    except Exception as error:  # noqa: BLE001
      seconds = {}
      for name in runners:
        records[name].update(status="failed", reason=f"timing: {type(error).__name__}: {error}")
    for name, value in seconds.items():
      call, comparer, _ = runners[name]
      made, distinct, largest = spread(call, comparer, args.calls, share)
      records[name].update(
          status="ok", median_ms=value * 1e3, timed_calls=repeats, spread_calls=made,
          distinct_results=distinct, max_abs_difference=largest,
          bitwise_reproducible=distinct == 1,
          gradient_max_abs=float(np.abs(outputs[name]).max()))
  if "stnjax" in outputs and "torch" in outputs:
    difference = float(np.abs(outputs["stnjax"] - outputs["torch"]).max())
    for name in ("stnjax", "torch"):
      records[name]["max_abs_difference_stnjax_torch"] = difference
  if "median_ms" in records.get("torch", {}):
    for record in records.values():
      if "median_ms" in record:
        record["ratio_vs_torch"] = records["torch"]["median_ms"] / record["median_ms"]
  return list(records.values())


def available_peers(names, device):
  """{name: factory(inputs, dtype) or the reason it is skipped}."""
  found = {}
  if "stnjax" in names:
    found["stnjax"] = jax_gradient
  if "torch" in names:
    try:
      import torch
      device = sampler.torch_device(device)
      if device == "cuda" and not torch.cuda.is_available():
        found["torch"] = f"torch {torch.__version__} sees no CUDA device"
      else:
        found["torch"] = lambda inputs, dtype: torch_gradient(inputs, dtype, device)
    except ImportError:
      device = None
      found["torch"] = "torch not installed (pip install torch==2.13.0)"
  return found, device


def table(env, records):
  lines = sampler.header_lines(env) + [
      "image gradient of a zoom-in (theta = scale * identity): median ms per call; spread "
      "over repeated calls on the same inputs",
      "",
      "| shape | dtype | scale | peer | ms | calls | distinct results | max abs difference |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in records:
    if r["status"] == "ok":
      lines.append(f"| {r['shape']} | {r['dtype']} | {r['scale']:g} | {r['peer']} | "
                   f"{r['median_ms']:.3f} | {r['spread_calls']} | {r['distinct_results']} | "
                   f"{r['max_abs_difference']:.3g} |")
    else:
      lines.append(f"| {r['shape']} | {r['dtype']} | {r['scale']:g} | {r['peer']} | "
                   f"{r['status']}: {r['reason']} | | | |")
  return "\n".join(lines)


def write_json(path, env, records):
  if path:
    path.write_text(json.dumps({"environment": env, "records": records}, indent=1))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", type=int, nargs=4, default=[64, 512, 512, 3],
                      metavar=("B", "H", "W", "C"))
  parser.add_argument("--scales", type=float, nargs="+", default=[0.25],
                      help="theta = scale * identity; < 1 zooms in")
  parser.add_argument("--dtypes", nargs="+", choices=sampler.DTYPES, default=["float32"])
  parser.add_argument("--calls", type=int, default=20, help="calls compared bitwise")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per peer")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--budget_s", type=float, default=20.0,
                      help="seconds of timing and spread calls per scale, at most")
  parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="PyTorch's device (auto: CUDA where JAX runs on a GPU)")
  parser.add_argument("--json", type=pathlib.Path)
  args = parser.parse_args(argv)
  if min(args.shape) < 1 or args.calls < 2 or args.repeats < 1 or args.warmup < 0:
    parser.error("--shape sizes must be >= 1, --calls >= 2, --repeats >= 1, --warmup >= 0")
  if not all(math.isfinite(s) and s > 0 for s in args.scales):
    parser.error(f"--scales must be finite and positive, got {args.scales}")
  available, device = available_peers(args.peers, args.device)
  threads = None
  if "torch" in available and not isinstance(available["torch"], str):
    import torch
    threads = torch.get_num_threads()
  env = sampler.environment(threads, device)
  records = []
  for dtype in args.dtypes:
    for scale in args.scales:
      for record in check_scale(tuple(args.shape), scale, dtype, available, args):
        records.append(record)
        print(f"  {record['shape']} {dtype} scale {scale:g} {record['peer']}: "
              + (f"{record['median_ms']:.3f} ms, {record['distinct_results']} distinct of "
                 f"{record['spread_calls']}" if record["status"] == "ok"
                 else f"{record['status']}: {record['reason']}"), file=sys.stderr, flush=True)
      write_json(args.json, env, records)
  print(table(env, records))
  write_json(args.json, env, records)
  return records


if __name__ == "__main__":
  main()
