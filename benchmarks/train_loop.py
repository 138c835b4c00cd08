"""Does the training loop cost anything beyond its jitted step?

    python benchmarks/train_loop.py [--steps 40] [--batch_size 128] [--json PATH]

Two rates for the same config (`train.distorted_mnist`, RTS, ST-CNN affine, on the
default device): the jitted training step alone, called back to back and waited on
once per turn of `--turn` steps (medians over turns, the first turn untimed), and the
whole program (`train_and_evaluate`), from its own train_metrics.jsonl (the intervals
between metric reads, leaving out the first, which compiles). Synthetic data of
Fashion-MNIST's shape stands in for the dataset, so it runs anywhere. Epoch-end work
(validation, checkpoint, picture) is outside the intervals; the ratio is
program / step-alone, and 1.0 means the loop costs nothing.
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import sampler  # noqa: E402  (environment lines)

from train import configs  # noqa: E402
from train import distorted_mnist  # noqa: E402
from train import trainer  # noqa: E402
from train.data import idx  # noqa: E402


def synthetic_dataset(folder: pathlib.Path, train: int, test: int) -> None:
  """IDX files of random 28x28 images and labels."""
  rng = np.random.default_rng(0)
  for split, count in (("train", train), ("test", test)):
    image_file, label_file = idx.FILES[split]
    idx.write_idx(folder / image_file, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
    idx.write_idx(folder / label_file, rng.integers(0, 10, count).astype(np.uint8))


def step_alone(config, turns: int, turn: int) -> float:
  """Images per second of the jitted step alone (median over turns)."""
  task, model = distorted_mnist.build(config)
  loop = trainer.Trainer(config, task, model, jax.devices())
  state = loop.init_state()
  data = loop.replicate(task.train_data)
  order = loop.epoch_order(0)
  batches = [loop.batch_indices(order[i * config.batch_size:(i + 1) * config.batch_size])
             for i in range(loop.steps_per_epoch)]
  rates = []
  for t in range(turns + 1):
    start = time.perf_counter()
    for i in range(turn):
      state = loop.train_step(state, data, batches[(t * turn + i) % len(batches)])
    jax.block_until_ready(state)
    if t:  # The first turn compiles and warms up.
      rates.append(turn * config.batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def program(config, workdir: pathlib.Path) -> list[float]:
  """Images per second of each metric interval of a whole run, compilation left out."""
  trainer.train_and_evaluate(config, workdir, log=lambda *_: None)
  records = [json.loads(line) for line in
             (workdir / "train_metrics.jsonl").read_text().splitlines()]
  return [r["images_per_s"] for r in records if not r["includes_compilation"]]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40, help="training steps of the program")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--turn", type=int, default=5, help="steps per timed turn (step alone)")
  parser.add_argument("--log_every_steps", type=int, default=5)
  parser.add_argument("--json", type=pathlib.Path)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as folder:
    folder = pathlib.Path(folder)
    examples = args.steps * args.batch_size
    synthetic_dataset(folder, examples + 500, 500)
    config = dataclasses.replace(
        configs.distorted_mnist(), data_dir=str(folder), dataset="mnist", num_epochs=1,
        batch_size=args.batch_size, validation_examples=500, max_train_examples=examples,
        log_every_steps=args.log_every_steps, checkpoint_every_steps=10**9)
    alone = step_alone(config, turns=max(2, args.steps // args.turn), turn=args.turn)
    intervals = program(config, folder / "run")
  whole = statistics.median(intervals)
  env = sampler.environment(torch_threads=None)
  print(f"# {env['device']}, {env['cpu_count']} CPUs; RTS 42x42, batch {args.batch_size}, "
        f"ST-CNN affine")
  print("| what | images/s |\n|---|---|")
  print(f"| jitted step alone (median of turns of {args.turn}) | {alone:.0f} |")
  print(f"| the program's loop (median of {len(intervals)} intervals of "
        f"{args.log_every_steps} steps) | {whole:.0f} |")
  print(f"| ratio, program / step alone | {whole / alone:.3f} |")
  if args.json:
    args.json.write_text(json.dumps({"environment": env, "batch_size": args.batch_size,
                                     "step_alone_images_per_s": alone,
                                     "program_intervals_images_per_s": intervals,
                                     "ratio": whole / alone}, indent=1))
  return alone, whole


if __name__ == "__main__":
  main()
