"""Train-step throughput of the PyTorch STN tutorial model: PyTorch vs stnjax + Flax.

    python benchmarks/training.py [--quick] [--json PATH] [--results_md docs/results.md]

The model (../shared/SEEDS.md): localization conv 8@7x7, max-pool, ReLU, conv 10@5x5,
max-pool, ReLU, fc 32, ReLU, fc 6 (identity init), affine_grid + grid_sample; the
classifier conv 10@5x5, max-pool, ReLU, conv 20@5x5, channel dropout, max-pool, ReLU,
fc 50, ReLU, dropout, fc 10, log-softmax; SGD at 0.01. Both versions take the same
shapes (28x28x1 and 42x42x1, batch 64 and 256). A step is forward, backward and
update; each cell is the median of timed steps after warm-up, the versions taking
turns of a few steps, the first of each turn untimed (see
`sampler.median_seconds_in_turns`). The ratio is PyTorch's time over stnjax's: above 1
stnjax is faster. The stnjax model uses stnjax's defaults and Flax's own layers.
"""

import argparse
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import report  # noqa: E402
import sampler  # noqa: E402  (shared timing and environment helpers)

import stnjax  # noqa: E402

CASES = ((28, 64), (28, 256), (42, 64), (42, 256))  # (image side, batch)


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


def jax_runner(side, batch, inputs):
  images, labels = jnp.asarray(inputs[0]), jnp.asarray(inputs[1])
  model = FlaxTutorialNet()
  params = model.init(jax.random.key(0), images, train=False)["params"]
  optimizer = optax.sgd(0.01)
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

  @jax.jit
  def train_step(state, images, labels):
    def loss_fn(params):
      log_probs = model.apply({"params": params}, images, train=True,
                              rngs={"dropout": jax.random.fold_in(jax.random.key(1), state["step"])})
      return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
            "step": state["step"] + 1}, loss

  train_step = jax.jit(train_step, donate_argnums=0)
  holder = {"state": state}

  def run():
    holder["state"], loss = train_step(holder["state"], images, labels)
    return jax.block_until_ready(loss)

  return run


def torch_runner(side, batch, inputs):
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
  model = TorchTutorialNet().train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
  images = torch.tensor(inputs[0]).permute(0, 3, 1, 2).contiguous()
  labels = torch.tensor(inputs[1], dtype=torch.long)

  def run():
    optimizer.zero_grad()
    loss = F.nll_loss(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()

  return run


def run(cases, warmup, repeats):
  records = []
  try:
    import torch
    torch_threads = torch.get_num_threads()
    runners = {"torch": torch_runner}
  except ImportError:
    torch_threads = None
    runners = {}
  runners.update(stnjax=jax_runner)
  for side, batch in cases:
    rng = np.random.default_rng(0)
    inputs = (rng.uniform(0, 1, (batch, side, side, 1)).astype(np.float32),
              rng.integers(0, 10, batch).astype(np.int32))
    row = {"shape": f"[{batch}, {side}, {side}, 1]", "batch": batch}
    steps = {name: factory(side, batch, inputs) for name, factory in runners.items()}
    for name, seconds in sampler.median_seconds_in_turns(steps, warmup, repeats).items():
      row[f"{name}_ms"] = seconds * 1e3
      row[f"{name}_images_per_s"] = batch / seconds
      print(f"  {row['shape']:<18} {name:<7} {seconds * 1e3:8.2f} ms", file=sys.stderr, flush=True)
    if "torch_ms" in row:
      row["ratio_vs_torch"] = row["torch_ms"] / row["stnjax_ms"]
    records.append(row)
  return sampler.environment(torch_threads), records


def table(env, records):
  lines = sampler.header_lines(env) + [
      "train step (forward + backward + SGD update), median; ratio = torch time / stnjax time",
      "",
      "| batch shape | torch images/s | stnjax images/s | ratio |",
      "|---|---|---|---|",
  ]
  for r in records:
    torch_cell = f"{r['torch_images_per_s']:.0f}" if "torch_ms" in r else "skipped"
    ratio = f"{r['ratio_vs_torch']:.2f}x" if "ratio_vs_torch" in r else "-"
    lines.append(f"| {r['shape']} | {torch_cell} | {r['stnjax_images_per_s']:.0f} | {ratio} |")
  if not any("torch_ms" in r for r in records):
    lines.append("skipped torch: not installed (pip install torch==2.13.0)")
  return "\n".join(lines)


def main(argv=None, cases=CASES):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 warm-up and 5 timed steps")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--json", type=pathlib.Path)
  parser.add_argument("--results_md", type=pathlib.Path,
                      help="also put the table in this page's training-speed section")
  args = parser.parse_args(argv)
  repeats = args.repeats or (5 if args.quick else 30)
  if repeats < 1:
    parser.error(f"--repeats must be >= 1, got {repeats}")
  env, records = run(cases, warmup=2 if args.quick else 5, repeats=repeats)
  text = table(env, records)
  print(text)
  if args.results_md:
    report.replace_section(args.results_md, "training_speed",
                           f"`python benchmarks/training.py --results_md {args.results_md}`:\n\n"
                           f"```\n{text}\n```")
  if args.json:
    args.json.write_text(json.dumps({"environment": env, "records": records}, indent=1))
  return records


if __name__ == "__main__":
  main()
