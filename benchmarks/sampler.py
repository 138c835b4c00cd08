"""Sampler throughput: stnjax against the samplers a user would pick instead, in one run.

    python benchmarks/sampler.py                  # full run, table on stdout
    python benchmarks/sampler.py --quick          # fewer repeats
    python benchmarks/sampler.py --dims 3         # the volume cases only
    python benchmarks/sampler.py --json out.json --plot out.png
    python benchmarks/sampler.py --gpu_shapes --dtypes float32 bfloat16 --device cuda \
        --peers stnjax                            # on a GPU (benchmarks/device_check.sh)

Cases: batches of images, and of volumes (the last two: `[B, D, H, W, C]`, trilinear,
against PyTorch's 5-D grid_sample; the 2-D-only peers skip them).

Peers: PyTorch affine_grid + grid_sample (NCHW, same data; when torch is installed;
on `--device`, by default CUDA where JAX runs on a GPU and the CPU elsewhere),
stnjax with its defaults (XLA code only), stnjax with implementation="cpu_kernel"
(its compiled CPU kernel for the image gradient, where built),
jax.scipy.ndimage.map_coordinates (order 1, per channel, vmapped), dm-pix
affine_transform (when installed), and the textbook gather sampler
(benchmarks/baselines.py). All bilinear, zeros padding, align_corners=False.

Modes: forward; forward + backward w.r.t. theta (the common STN case: the input
needs no gradient); forward + backward w.r.t. theta and image (an STN on a feature
map). The peers of a cell take turns of a few calls, the first of each turn untimed
(PyTorch's OpenMP threads spin after a call and slow whatever runs next); each cell
is the median of the timed calls, with block_until_ready (JAX) or a synchronized step
(torch). The ratio is PyTorch's time
divided by the peer's: above 1.0 the peer is faster than PyTorch.

`--dtypes bfloat16` runs each cell on bfloat16 data too (theta, image and cotangent,
rounded from the same float32 values on both sides); `--gpu_shapes` adds the large
image batches of GPU_CASES; `--cases` replaces the cases (`B,H,W,C[:Ho,Wo]`, or
`B,D,H,W,C[:Do,Ho,Wo]` for volumes). A peer that fails on a cell (out of memory, a
dtype it lacks) is recorded as failed with the error, and the run goes on; `--json`
is rewritten after each case, so a run stopped early keeps what it measured.
"""

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import baselines  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

import stnjax  # noqa: E402

MODES = ("forward", "grad_theta", "grad_theta_image")


@dataclasses.dataclass(frozen=True)
class Case:
  """A batch of images `[batch, height, width, channels]`, or of volumes with a depth."""
  batch: int
  height: int
  width: int
  channels: int
  out_shape: tuple
  depth: Optional[int] = None

  @property
  def spatial(self):
    return (self.height, self.width) if self.depth is None else (
        self.depth, self.height, self.width)

  @property
  def label(self):
    text = "[" + ", ".join(map(str, (self.batch,) + self.spatial + (self.channels,))) + "]"
    if self.out_shape != self.spatial:
      text += " -> " + "x".join(map(str, self.out_shape))
    return text


CASES = (
    Case(256, 28, 28, 1, (28, 28)),
    Case(256, 32, 32, 3, (32, 32)),
    Case(64, 64, 64, 3, (64, 64)),
    Case(16, 224, 224, 3, (224, 224)),
    Case(256, 60, 60, 1, (30, 30)),
    Case(8, 64, 64, 1, (64, 64, 64), depth=64),
    Case(2, 128, 128, 1, (128, 128, 128), depth=128),
)
# Image batches that fill a GPU (--gpu_shapes), after the CPU cases.
GPU_CASES = (
    Case(256, 224, 224, 3, (224, 224)),
    Case(64, 512, 512, 3, (512, 512)),
)
DTYPES = ("float32", "bfloat16")


def parse_case(text):
  """A Case from `B,H,W,C[:Ho,Wo]` or, for a volume, `B,D,H,W,C[:Do,Ho,Wo]`."""
  shape, _, out = text.partition(":")
  try:
    sizes = tuple(int(v) for v in shape.split(","))
    out_shape = tuple(int(v) for v in out.split(",")) if out else None
  except ValueError:
    sizes = out_shape = None
  if sizes is None or len(sizes) not in (4, 5) or min(sizes) < 1 or (
      out_shape is not None and (len(out_shape) != len(sizes) - 2 or min(out_shape) < 1)):
    raise argparse.ArgumentTypeError(
        f"a case is B,H,W,C[:Ho,Wo] or B,D,H,W,C[:Do,Ho,Wo] of positive ints, got {text!r}")
  if len(sizes) == 4:
    batch, height, width, channels = sizes
    return Case(batch, height, width, channels, out_shape or (height, width))
  batch, depth, height, width, channels = sizes
  return Case(batch, height, width, channels, out_shape or (depth, height, width), depth=depth)


# The peers that sample volumes (PyTorch's 5-D grid_sample); the others are 2-D only.
VOLUME_PEERS = ("torch", "stnjax")


def make_inputs(case, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, (case.batch,) + case.spatial + (case.channels,))
  cotangent = rng.normal(size=(case.batch,) + case.out_shape + (case.channels,))
  theta = (baselines.random_theta if case.depth is None else baselines.random_volume_theta)(
      case.batch, seed)
  return image.astype(np.float32), theta, cotangent.astype(np.float32)


def jax_runner(warp, case, mode, inputs, dtype="float32"):
  """A no-argument callable running `warp(theta, image, out_shape)` in `mode`, jitted,
  on the inputs cast to `dtype`."""
  image, theta, cotangent = (jnp.asarray(a, dtype) for a in inputs)

  def loss(theta, image, cotangent):
    return jnp.vdot(warp(theta, image, case.out_shape), cotangent)

  # Every array an argument: none is baked into the program as a constant.
  if mode == "forward":
    step = jax.jit(lambda theta, image, _: warp(theta, image, case.out_shape))
  elif mode == "grad_theta":
    step = jax.jit(jax.grad(loss))
  else:
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return lambda: jax.block_until_ready(step(theta, image, cotangent))


def torch_device(requested=None):
  """The device the PyTorch peer runs on: `requested` ("cpu" or "cuda"), or by default
  CUDA where JAX runs on a GPU and torch sees one, else the CPU."""
  import torch
  if requested and requested != "auto":
    return requested
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_runner(case, mode, inputs, dtype="float32", device=None):
  import torch
  import torch.nn.functional as F

  device = torch_device(device)
  dtype = getattr(torch, dtype)
  image, theta, cotangent = inputs
  channels_first = (0, image.ndim - 1) + tuple(range(1, image.ndim - 1))
  # Cast from float32 on the torch side: both peers round the same values to `dtype`.
  image = torch.tensor(image, device=device).to(dtype).permute(channels_first).contiguous()
  theta = torch.tensor(theta, device=device).to(dtype)
  cotangent = torch.tensor(cotangent, device=device).to(dtype).permute(
      channels_first).contiguous()
  size = (case.batch, case.channels) + case.out_shape
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def forward():
    with torch.inference_mode():
      grid = F.affine_grid(theta, size, align_corners=False)
      out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    synchronize()
    return out

  def backward():
    theta_leaf = theta.detach().requires_grad_()
    image_leaf = image.detach().requires_grad_(mode == "grad_theta_image")
    grid = F.affine_grid(theta_leaf, size, align_corners=False)
    out = F.grid_sample(image_leaf, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    (out * cotangent).sum().backward()
    synchronize()
    return theta_leaf.grad

  return forward if mode == "forward" else backward


def peers(device=None):
  """(name, factory or None, reason skipped), torch's threads, torch's device:
  factory(case, mode, inputs, dtype) -> runner. `device` is torch's (see torch_device)."""
  found = []
  try:
    import torch
    torch_threads = torch.get_num_threads()
    device = torch_device(device)
    if device == "cuda" and not torch.cuda.is_available():
      found.append(("torch", None, f"torch {torch.__version__} sees no CUDA device"))
    else:
      found.append(("torch", functools.partial(torch_runner, device=device), None))
  except ImportError:
    torch_threads = device = None
    found.append(("torch", None, "torch not installed (pip install torch==2.13.0)"))

  def jax_peer(warp):
    return lambda case, mode, inputs, dtype: jax_runner(warp, case, mode, inputs, dtype)

  found.append(("stnjax", jax_peer(stnjax.sample), None))
  if stnjax.has_cpu_kernel():
    found.append(("stnjax_cpu_kernel",
                  jax_peer(functools.partial(stnjax.sample, implementation="cpu_kernel")), None))
  else:
    found.append(("stnjax_cpu_kernel", None, "stnjax's CPU kernel is not built"))
  found.append(("map_coordinates", jax_peer(baselines.map_coordinates_sample), None))
  try:
    import dm_pix  # noqa: F401
    found.append(("dm_pix", jax_peer(baselines.dm_pix_sample), None))
  except ImportError:
    found.append(("dm_pix", None, "dm-pix not installed (pip install dm-pix)"))
  found.append(("textbook", jax_peer(baselines.textbook_sample), None))
  return found, torch_threads, device


CALLS_PER_TURN = 3


def median_seconds_in_turns(runners, warmup, repeats):
  """Median seconds per call of each runner, the runners taking turns of
  `CALLS_PER_TURN` timed calls, each turn after one untimed call."""
  for run in runners.values():
    for _ in range(warmup):
      run()
  times = {name: [] for name in runners}
  for _ in range(-(-repeats // CALLS_PER_TURN)):
    for name, run in runners.items():
      run()
      for _ in range(CALLS_PER_TURN):
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def torch_environment(device):
  """PyTorch's device name and the settings that change its GPU timings, or {}."""
  if device != "cuda":
    return {"torch_device": device} if device else {}
  import torch
  return {"torch_device": f"cuda: {torch.cuda.get_device_name()}",
          "torch_cudnn": torch.backends.cudnn.version(),
          "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
          "torch_tf32_conv": torch.backends.cudnn.allow_tf32,
          "torch_tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def environment(torch_threads, torch_device=None):
  device = jax.devices()[0]
  return {
      "device": f"{device.platform}: {getattr(device, 'device_kind', '')}".strip(),
      "cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "torch_threads": torch_threads,
      **torch_environment(torch_device),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "versions": {p: version(p) for p in ("stnjax", "jax", "jaxlib", "torch", "dm-pix",
                                           "numpy")},
  }


def _error_text(error):
  return f"{type(error).__name__}: {error}"[:500]


def run(cases, modes, warmup, repeats, only=None, dtypes=("float32",), device=None,
        after_case=None):
  """Benchmarks every available peer; returns (environment, records). `device` is
  torch's; `after_case(environment, records)` is called after each case."""
  available, torch_threads, torch_device = peers(device)
  env = environment(torch_threads, torch_device)
  records = []
  for case in cases:
    inputs = make_inputs(case)
    for dtype in dtypes:
      for mode in modes:
        cell, runners = {}, {}
        for name, factory, reason in available:
          if only and name not in only and name != "torch":
            continue
          cell[name] = dict(shape=case.label, dtype=dtype, mode=mode, peer=name,
                            batch=case.batch)
          if factory is None:
            cell[name].update(status="skipped", reason=reason)
            continue
          if case.depth is not None and name not in VOLUME_PEERS:
            cell[name].update(status="skipped", reason="samples 2-D images only")
            continue
          try:
            runner = factory(case, mode, inputs, dtype)
            runner()  # Compiles; raises here for a case the peer cannot do.
            runners[name] = runner
          except ValueError as error:  # A peer that cannot do this case (dm-pix resizing).
            cell[name].update(status="skipped", reason=str(error))
          except Exception as error:  # noqa: BLE001  (out of memory, a dtype it lacks)
            cell[name].update(status="failed", reason=_error_text(error))
        try:
          seconds = median_seconds_in_turns(runners, warmup, repeats)
        except Exception as error:  # noqa: BLE001  Which runner failed is in the reason.
          seconds = {}
          for name in runners:
            cell[name].update(status="failed", reason="timing: " + _error_text(error))
        for name, value in seconds.items():
          cell[name].update(status="ok", median_ms=value * 1e3, images_per_s=case.batch / value)
        for name, record in cell.items():
          records.append(record)
          print(f"  {case.label:<28} {dtype:<9} {mode:<17} {name:<18} "
                + (f"{record['median_ms']:9.2f} ms" if record["status"] == "ok"
                   else f"{record['status']}: {record['reason']}"), file=sys.stderr, flush=True)
    add_ratios(records)
    if after_case:
      after_case(env, records)
  return env, records


def add_ratios(records):
  def key(record):
    return record["shape"], record.get("dtype", "float32"), record["mode"]

  torch_ms = {key(r): r["median_ms"] for r in records
              if r["peer"] == "torch" and r["status"] == "ok"}
  for record in records:
    reference = torch_ms.get(key(record))
    if record["status"] == "ok" and reference:
      record["ratio_vs_torch"] = reference / record["median_ms"]


def header_lines(env):
  """The device, thread and version lines that head a benchmark's table."""
  flags = f", XLA_FLAGS={env['xla_flags']}" if env["xla_flags"] else ""
  return [f"device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); torch threads: "
          f"{env['torch_threads']}; XLA: all cores{flags}",
          "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())]


def table(env, records):
  names = list(dict.fromkeys(r["peer"] for r in records))
  lines = header_lines(env) + [
      "median ms per call (ratio = torch time / peer time; > 1 is faster than torch)",
      "",
      "| shape | mode | " + " | ".join(names) + " |",
      "|---|---|" + "---|" * len(names),
  ]
  by_cell = {(r["shape"], r.get("dtype", "float32"), r["mode"], r["peer"]): r
             for r in records}
  for shape in dict.fromkeys(r["shape"] for r in records):
    for dtype in dict.fromkeys(r.get("dtype", "float32") for r in records):
      for mode in dict.fromkeys(r["mode"] for r in records):
        cells = []
        for name in names:
          record = by_cell.get((shape, dtype, mode, name))
          if record is None or record["status"] != "ok":
            cells.append("failed" if record and record["status"] == "failed" else "skipped")
          elif "ratio_vs_torch" in record and name != "torch":
            cells.append(f"{record['median_ms']:.2f} ({record['ratio_vs_torch']:.2f}x)")
          else:
            cells.append(f"{record['median_ms']:.2f}")
        label = mode if dtype == "float32" else f"{mode} {dtype}"
        lines.append(f"| {shape} | {label} | " + " | ".join(cells) + " |")
  for status in ("skipped", "failed"):
    reasons = {r["peer"]: r["reason"] for r in records if r["status"] == status}
    lines += [f"{status} {name}: {reason}" for name, reason in reasons.items()]
  return "\n".join(lines)


def plot(records, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def group(record):
    dtype = record.get("dtype", "float32")
    return record["shape"], record["mode"] if dtype == "float32" else f"{record['mode']} {dtype}"

  rated = [r for r in records if "ratio_vs_torch" in r and r["peer"] != "torch"]
  groups = list(dict.fromkeys(group(r) for r in rated))
  names = list(dict.fromkeys(r["peer"] for r in rated))
  figure, axes = plt.subplots(figsize=(max(8, len(groups) * 0.9), 4.5))
  width = 0.8 / max(1, len(names))
  for offset, name in enumerate(names):
    values = {group(r): r["ratio_vs_torch"] for r in rated if r["peer"] == name}
    axes.bar([i + offset * width for i in range(len(groups))],
             [values.get(g, 0) for g in groups], width, label=name)
  axes.axhline(1.0, color="black", linewidth=0.8)
  axes.set_yscale("log")
  axes.set_ylabel("speed vs PyTorch (x)")
  axes.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
  axes.set_xticklabels([f"{s}\n{m}" for s, m in groups], rotation=60, ha="right", fontsize=7)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 warm-up and 5 repeats")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
  parser.add_argument("--warmup", type=int, default=None, help="untimed runs per cell")
  parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  parser.add_argument("--peers", nargs="+", default=None,
                      help="only these peers (torch always runs for the ratio)")
  parser.add_argument("--dims", type=int, choices=(2, 3), default=None,
                      help="only the image (2) or the volume (3) cases")
  parser.add_argument("--gpu_shapes", action="store_true",
                      help="add the large image batches of GPU_CASES")
  parser.add_argument("--cases", nargs="+", type=parse_case, default=None,
                      help="these cases instead: B,H,W,C[:Ho,Wo] or B,D,H,W,C[:Do,Ho,Wo]")
  parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"])
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="PyTorch's device (auto: CUDA where JAX runs on a GPU)")
  parser.add_argument("--json", type=pathlib.Path, help="write the records as JSON here")
  parser.add_argument("--plot", type=pathlib.Path, help="write a bar chart (PNG) here")
  args = parser.parse_args(argv)
  if args.repeats is None:
    args.repeats = 5 if args.quick else 20
  if args.warmup is None:
    args.warmup = 1 if args.quick else 3
  if args.repeats < 1 or args.warmup < 0:
    parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
  if args.plot and args.plot.suffix.lower() != ".png":
    parser.error(f"--plot must name a .png file, got {str(args.plot)!r}")
  return args


def write_json(path, env, records):
  path.write_text(json.dumps({"environment": env, "records": records}, indent=1))


def main(argv=None, cases=CASES):
  args = parse_args(argv)
  cases = list(args.cases or cases) + list(GPU_CASES if args.gpu_shapes else ())
  if args.dims is not None:
    cases = [case for case in cases if len(case.spatial) == args.dims]
  env, records = run(cases, args.modes, args.warmup, args.repeats, only=args.peers,
                     dtypes=args.dtypes, device=args.device,
                     after_case=args.json and functools.partial(write_json, args.json))
  print(table(env, records))
  if args.json:
    write_json(args.json, env, records)
  if args.plot:
    plot(records, args.plot)
  return records


if __name__ == "__main__":
  main()
