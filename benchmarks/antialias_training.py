"""Does antialiased sampling help training where the transformer shrinks its input?

    python benchmarks/antialias_training.py                  # 3 seeds x {plain, antialias}
    python benchmarks/antialias_training.py --seeds 0 1 --max_train_examples 2000

Trains the ST-CNN (affine) of `python -m train.distorted_mnist` on translated-cluttered
Fashion-MNIST (`--distortion tc`: 60x60 canvases) with the transformer's output at 30x30,
so that it starts by shrinking its input 2x, once with plain bilinear sampling and once
with `--antialias`, the same seeds and budget otherwise, and prints the test errors
(mean +- std over the seeds). Each run's workdir is kept under --workdir.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(seed, antialias, args):
  workdir = args.workdir / f"{'antialias' if antialias else 'plain'}_seed{seed}"
  command = [sys.executable, "-m", "train.distorted_mnist", "--distortion", "tc",
             "--stn", "affine", "--stn_out_size", "30", "--seed", str(seed),
             "--num_epochs", str(args.num_epochs), "--workdir", str(workdir),
             "--max_train_examples", str(args.max_train_examples),
             "--antialias" if antialias else "--no-antialias"]
  start = time.time()
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  results = json.loads((workdir / "results.json").read_text())
  return dict(seed=seed, antialias=antialias, test_error=results["test_error"],
              test_loss=results["test_loss"], steps=results["steps"],
              wall_s=time.time() - start)


def summary(records):
  lines = ["| sampling | test error (mean +- std) | per seed | wall time per run |",
           "|---|---|---|---|"]
  for antialias in (False, True):
    rows = [r for r in records if r["antialias"] == antialias]
    errors = [100 * r["test_error"] for r in rows]
    spread = statistics.stdev(errors) if len(errors) > 1 else 0.0
    lines.append(f"| {'antialias=True' if antialias else 'plain bilinear'} | "
                 f"{statistics.mean(errors):.2f}% +- {spread:.2f} | "
                 + ", ".join(f"{e:.2f}" for e in errors) + " | "
                 f"{statistics.mean(r['wall_s'] for r in rows):.0f} s |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--num_epochs", type=int, default=4)
  parser.add_argument("--max_train_examples", type=int, default=10000)
  parser.add_argument("--workdir", type=pathlib.Path, default=REPO / "outputs" / "antialias_tc")
  parser.add_argument("--json", type=pathlib.Path, help="write the records as JSON here")
  args = parser.parse_args(argv)
  records = [run(seed, antialias, args) for seed in args.seeds for antialias in (False, True)]
  print(f"tc (60x60 -> 30x30), ST-CNN affine, {args.max_train_examples} training examples, "
        f"{args.num_epochs} epochs, {records[0]['steps']} steps per run")
  print(summary(records))
  if args.json:
    args.json.write_text(json.dumps(records, indent=1))
  return records


if __name__ == "__main__":
  main()
