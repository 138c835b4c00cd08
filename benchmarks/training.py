"""Train-step throughput of the PyTorch STN tutorial model: PyTorch vs stnjax + Flax.

    python benchmarks/training.py [--quick] [--json PATH] [--results_md docs/results.md]
    python benchmarks/training.py --cases tutorial:28:256 tutorial:42:256 gtsrb:48:256 \
        --device cuda                          # on a GPU (benchmarks/device_check.sh)

The model (../shared/SEEDS.md): localization conv 8@7x7, max-pool, ReLU, conv 10@5x5,
max-pool, ReLU, fc 32, ReLU, fc 6 (identity init), affine_grid + grid_sample; the
classifier conv 10@5x5, max-pool, ReLU, conv 20@5x5, channel dropout, max-pool, ReLU,
fc 50, ReLU, dropout, fc 10, log-softmax; SGD at 0.01. Both versions take the same
shapes (28x28x1 and 42x42x1, batch 64 and 256). A step is forward, backward and
update; each cell is the median of timed steps after warm-up, the versions taking
turns of a few steps, the first of each turn untimed (see
`sampler.median_seconds_in_turns`). The ratio is PyTorch's time over stnjax's: above 1
stnjax is faster. The stnjax model uses stnjax's defaults and Flax's own layers.

`--cases MODEL:SIDE:BATCH` picks the runs; MODEL "tutorial" is the model above, "gtsrb"
the traffic-sign net with two transformers (`train.models.IdsiaNet(num_transformers=2)`:
an IDSIA localization net and affine transformer on the 3-channel input and another on
the 100-channel maps before the second conv block; batch norm, dropout 0.3, 43 classes;
Adam at 1e-3) and its PyTorch twin (same layers, SAME padding as `padding=k // 2`,
`ceil_mode` pooling). PyTorch runs on `--device` (by default CUDA where JAX runs on a
GPU), with `cudnn.benchmark` on there; each step is synchronized on both sides
(block_until_ready, torch.cuda.synchronize). A side that fails (out of memory) is
recorded with its error and the run goes on; `--json` is rewritten after each case.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import report  # noqa: E402
import sampler  # noqa: E402  (shared timing and environment helpers)

import stnjax  # noqa: E402
from train import models  # noqa: E402

CASES = ((28, 64), (28, 256), (42, 64), (42, 256))  # (image side, batch): the tutorial's


def _flat_size(side, convs):
  for kernel in convs:
    side = (side - kernel + 1) // 2
  return side * side


class FlaxTutorialNet(nn.Module):
  """The PyTorch tutorial's STN classifier in Flax (VALID convs, NHWC)."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, max_pool = nn.Conv, nn.max_pool
    features = stnjax.linen.TutorialLocalization()(x)
    theta = nn.Dense(6, kernel_init=nn.initializers.zeros,
                     bias_init=lambda *_: jnp.array([1.0, 0, 0, 0, 1.0, 0]))(features)
    x = stnjax.sample(theta.reshape(-1, 2, 3), x)
    x = nn.relu(max_pool(conv(10, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
    x = conv(20, (5, 5), padding="VALID")(x)
    x = nn.Dropout(0.5, broadcast_dims=(1, 2), deterministic=not train)(x)  # Dropout2d
    x = nn.relu(max_pool(x, (2, 2), (2, 2)))
    x = nn.relu(nn.Dense(50)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.log_softmax(nn.Dense(10)(x))


def _jax_step_runner(model, optimizer, images, labels, outputs_log_probs):
  """A no-argument callable taking one jitted training step of a Flax model whose other
  variable collections (batch statistics) update in the step."""
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  # One compiled init (op by op, a large model's init compiles each of its ops).
  variables = dict(jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images))
  params = variables.pop("params")
  state = {"params": params, "variables": variables, "opt_state": optimizer.init(params),
           "step": jnp.zeros((), jnp.int32)}

  def train_step(state, images, labels):
    def loss_fn(params):
      outputs, variables = model.apply(
          {"params": params, **state["variables"]}, images, train=True,
          rngs={"dropout": jax.random.fold_in(jax.random.key(1), state["step"])},
          mutable=list(state["variables"]))
      log_probs = outputs if outputs_log_probs else jax.nn.log_softmax(outputs)
      return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean(), variables
    (loss, variables), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"])
    return {"params": optax.apply_updates(state["params"], updates), "variables": variables,
            "opt_state": opt_state, "step": state["step"] + 1}, loss

  train_step = jax.jit(train_step, donate_argnums=0)
  holder = {"state": state}

  def run():
    holder["state"], loss = train_step(holder["state"], images, labels)
    return jax.block_until_ready(loss)

  return run


def jax_runner(side, batch, inputs):
  """The tutorial model's training step (SGD at 0.01)."""
  return _jax_step_runner(FlaxTutorialNet(), optax.sgd(0.01), *inputs, outputs_log_probs=True)


def jax_gtsrb_runner(side, batch, inputs):
  """The GTSRB net with two transformers (Adam at 1e-3)."""
  model = models.IdsiaNet(num_classes=43, stn="affine", num_transformers=2)
  return _jax_step_runner(model, optax.adam(1e-3), *inputs, outputs_log_probs=False)


def _torch_step_runner(model, optimizer, inputs, device, outputs_log_probs):
  """A no-argument callable taking one synchronized training step of a torch model."""
  import torch
  import torch.nn.functional as F

  if device == "cuda":
    torch.backends.cudnn.benchmark = True  # As a PyTorch user training on a GPU sets it.
  images = torch.tensor(inputs[0]).permute(0, 3, 1, 2).contiguous().to(device)
  labels = torch.tensor(inputs[1], dtype=torch.long).to(device)
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    optimizer.zero_grad()
    outputs = model(images)
    loss = (F.nll_loss if outputs_log_probs else F.cross_entropy)(outputs, labels)
    loss.backward()
    optimizer.step()
    synchronize()
    return loss.detach()

  return run


def torch_runner(side, batch, inputs, device="cpu"):
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F

  class TorchTutorialNet(tnn.Module):
    """The PyTorch tutorial's network, for a side x side input."""

    def __init__(self):
      super().__init__()
      self.localization = tnn.Sequential(
          tnn.Conv2d(1, 8, kernel_size=7), tnn.MaxPool2d(2, stride=2), tnn.ReLU(True),
          tnn.Conv2d(8, 10, kernel_size=5), tnn.MaxPool2d(2, stride=2), tnn.ReLU(True))
      self.loc_features = 10 * _flat_size(side, (7, 5))
      self.fc_loc = tnn.Sequential(tnn.Linear(self.loc_features, 32), tnn.ReLU(True),
                                   tnn.Linear(32, 6))
      self.fc_loc[2].weight.data.zero_()
      self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))
      self.conv1 = tnn.Conv2d(1, 10, kernel_size=5)
      self.conv2 = tnn.Conv2d(10, 20, kernel_size=5)
      self.conv2_drop = tnn.Dropout2d()
      self.features = 20 * _flat_size(side, (5, 5))
      self.fc1 = tnn.Linear(self.features, 50)
      self.fc2 = tnn.Linear(50, 10)

    def forward(self, x):
      xs = self.localization(x).reshape(-1, self.loc_features)
      theta = self.fc_loc(xs).view(-1, 2, 3)
      grid = F.affine_grid(theta, x.size(), align_corners=False)
      x = F.grid_sample(x, grid, align_corners=False)
      x = F.relu(F.max_pool2d(self.conv1(x), 2))
      x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
      x = F.relu(self.fc1(x.reshape(-1, self.features)))
      x = F.dropout(x, training=self.training)
      return F.log_softmax(self.fc2(x), dim=1)

  torch.manual_seed(0)
  model = TorchTutorialNet().train().to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
  return _torch_step_runner(model, optimizer, inputs, device, outputs_log_probs=True)


def torch_gtsrb_runner(side, batch, inputs, device="cpu"):
  """The GTSRB net with two transformers in PyTorch, as models.IdsiaNet builds it."""
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F

  def pool(x, window):
    return F.max_pool2d(x, window, ceil_mode=True)  # SAME padding for these windows.

  class Transformer(tnn.Module):
    """The IDSIA localization net (models.IdsiaNet's), an affine regression, sampling."""

    def __init__(self, channels):
      super().__init__()
      self.conv_0 = tnn.Conv2d(channels, 100, 5, padding=2)
      self.conv_1 = tnn.Conv2d(100, 200, 5, padding=2)
      self.dense = tnn.LazyLinear(100)
      self.regression = tnn.Linear(100, 6)
      self.regression.weight.data.zero_()
      self.regression.bias.data.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))

    def forward(self, image):
      x = pool(F.relu(self.conv_0(pool(image, 2))), 2)
      tap = x.flatten(1)
      x = pool(F.relu(self.conv_1(x)), 2)
      features = F.relu(self.dense(torch.cat([tap, x.flatten(1)], 1)))
      theta = self.regression(features).view(-1, 2, 3)
      grid = F.affine_grid(theta, image.size(), align_corners=False)
      return F.grid_sample(image, grid, align_corners=False)

  class TorchIdsiaNet(tnn.Module):
    def __init__(self):
      super().__init__()
      self.stn_0, self.stn_1 = Transformer(3), Transformer(100)
      self.convs = tnn.ModuleList([tnn.Conv2d(3, 100, 7, padding=3),
                                   tnn.Conv2d(100, 150, 5, padding=2),
                                   tnn.Conv2d(150, 250, 5, padding=2)])
      self.norms = tnn.ModuleList([tnn.BatchNorm2d(c) for c in (100, 150, 250)])
      self.dropout = tnn.Dropout(0.3)
      self.fc1, self.fc2 = tnn.LazyLinear(300), tnn.Linear(300, 43)

    def forward(self, x):
      x = self.stn_0(x)
      scales = []
      for stage, (conv, norm) in enumerate(zip(self.convs, self.norms)):
        if stage == 1:
          x = self.stn_1(x)
        x = pool(F.relu(norm(conv(x))), 2)
        scales.append(pool(x, max(1, x.shape[2] // 4)).flatten(1))
      x = F.relu(self.fc1(self.dropout(torch.cat(scales, 1))))
      return self.fc2(self.dropout(x))

  torch.manual_seed(0)
  model = TorchIdsiaNet().to(device)
  with torch.no_grad():  # Sizes the lazy layers.
    model.eval()(torch.zeros((1, 3, side, side), device=device))
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  return _torch_step_runner(model, optimizer, inputs, device, outputs_log_probs=False)


@dataclasses.dataclass(frozen=True)
class Model:
  """A benchmarked network: its input channels, the two runner factories
  `(side, batch, inputs) -> step` (torch's also takes `device`), and a label."""
  channels: int
  jax_runner: Callable
  torch_runner: Callable
  label: str


MODELS = {
    "tutorial": Model(1, jax_runner, torch_runner, "tutorial STN"),
    "gtsrb": Model(3, jax_gtsrb_runner, torch_gtsrb_runner, "GTSRB net, 2 STs"),
}


def parse_case(text):
  """`MODEL:SIDE:BATCH` -> (model, side, batch)."""
  parts = text.split(":")
  if len(parts) == 3 and parts[0] in MODELS and all(p.isdigit() and int(p) > 0
                                                    for p in parts[1:]):
    return parts[0], int(parts[1]), int(parts[2])
  raise argparse.ArgumentTypeError(
      f"a case is MODEL:SIDE:BATCH with MODEL one of {sorted(MODELS)}, got {text!r}")


def _error_text(error):
  return f"{type(error).__name__}: {error}"[:500]


def run(cases, warmup, repeats, device=None, after_case=None):
  """Cases are (side, batch) of the tutorial model or (model, side, batch); `device` is
  torch's (see sampler.torch_device); `after_case(environment, records)` is called after
  each case."""
  records = []
  try:
    import torch
    torch_threads = torch.get_num_threads()
    device = sampler.torch_device(device)
    torch_skipped = (f"torch {torch.__version__} sees no CUDA device"
                     if device == "cuda" and not torch.cuda.is_available() else None)
  except ImportError:
    torch_threads = device = None
    torch_skipped = "torch not installed (pip install torch==2.13.0)"
  for case in cases:
    name, side, batch = case if len(case) == 3 else ("tutorial", *case)
    model = MODELS[name]
    rng = np.random.default_rng(0)
    inputs = (rng.uniform(0, 1, (batch, side, side, model.channels)).astype(np.float32),
              rng.integers(0, 10, batch).astype(np.int32))
    row = {"model": name, "shape": f"[{batch}, {side}, {side}, {model.channels}]",
           "batch": batch, "status": {}, "reasons": {}}
    factories = {"stnjax": model.jax_runner}
    if torch_skipped:
      row["status"]["torch"], row["reasons"]["torch"] = "skipped", torch_skipped
    else:
      factories = {"torch": lambda *a: model.torch_runner(*a, device=device), **factories}
    steps = {}
    for peer, factory in factories.items():
      try:
        steps[peer] = factory(side, batch, inputs)
        steps[peer]()  # Compiles; raises here for a step that cannot run (out of memory).
      except Exception as error:  # noqa: BLE001
        steps.pop(peer, None)
        row["status"][peer], row["reasons"][peer] = "failed", _error_text(error)
    try:
      seconds = sampler.median_seconds_in_turns(steps, warmup, repeats)
    except Exception as error:  # noqa: BLE001
      seconds = {}
      for peer in steps:
        row["status"][peer], row["reasons"][peer] = "failed", "timing: " + _error_text(error)
    for peer, value in seconds.items():
      row["status"][peer] = "ok"
      row[f"{peer}_ms"] = value * 1e3
      row[f"{peer}_images_per_s"] = batch / value
      print(f"  {name:<9} {row['shape']:<18} {peer:<7} {value * 1e3:8.2f} ms", file=sys.stderr,
            flush=True)
    for peer, reason in row["reasons"].items():
      print(f"  {name:<9} {row['shape']:<18} {peer:<7} {row['status'][peer]}: {reason}",
            file=sys.stderr, flush=True)
    if "torch_ms" in row and "stnjax_ms" in row:
      row["ratio_vs_torch"] = row["torch_ms"] / row["stnjax_ms"]
    records.append(row)
    if after_case:
      after_case(sampler.environment(torch_threads, device), records)
  return sampler.environment(torch_threads, device), records


def table(env, records):
  lines = sampler.header_lines(env) + [
      "train step (forward + backward + optimizer update), median; ratio = torch time / stnjax time",
      "",
      "| batch shape | torch images/s | stnjax images/s | ratio |",
      "|---|---|---|---|",
  ]
  def cell(r, peer):
    if f"{peer}_ms" in r:
      return f"{r[f'{peer}_images_per_s']:.0f}"
    return r.get("status", {}).get(peer, "skipped")

  for r in records:
    model = r.get("model", "tutorial")
    shape = r["shape"] if model == "tutorial" else f"{MODELS[model].label} {r['shape']}"
    ratio = f"{r['ratio_vs_torch']:.2f}x" if "ratio_vs_torch" in r else "-"
    lines.append(f"| {shape} | {cell(r, 'torch')} | {cell(r, 'stnjax')} | {ratio} |")
  reasons = {}
  for r in records:
    for peer, reason in r.get("reasons", {}).items():
      reasons.setdefault((r["status"][peer], peer, reason), None)
  lines += [f"{status} {peer}: {reason}" for status, peer, reason in reasons]
  return "\n".join(lines)


def write_json(path, env, records):
  path.write_text(json.dumps({"environment": env, "records": records}, indent=1))


def main(argv=None, cases=CASES):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 warm-up and 5 timed steps")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--warmup", type=int, default=None)
  parser.add_argument("--cases", nargs="+", type=parse_case, default=None,
                      help="MODEL:SIDE:BATCH runs instead of the tutorial's CASES, "
                           f"MODEL one of {sorted(MODELS)}")
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="PyTorch's device (auto: CUDA where JAX runs on a GPU)")
  parser.add_argument("--json", type=pathlib.Path)
  parser.add_argument("--results_md", type=pathlib.Path,
                      help="also put the table in this page's training-speed section")
  args = parser.parse_args(argv)
  repeats = args.repeats or (5 if args.quick else 30)
  warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
  if repeats < 1 or warmup < 0:
    parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
  env, records = run(args.cases or cases, warmup=warmup, repeats=repeats, device=args.device,
                     after_case=args.json and functools.partial(write_json, args.json))
  text = table(env, records)
  print(text)
  if args.results_md:
    report.replace_section(args.results_md, "training_speed",
                           f"`python benchmarks/training.py --results_md {args.results_md}`:\n\n"
                           f"```\n{text}\n```")
  if args.json:
    write_json(args.json, env, records)
  return records


if __name__ == "__main__":
  main()
