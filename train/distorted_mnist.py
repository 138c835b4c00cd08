"""The paper's distorted-digit experiments: `python -m train.distorted_mnist`.

    python -m train.distorted_mnist --distortion rts --stn affine          # ST-CNN
    python -m train.distorted_mnist --distortion rts --stn none            # CNN baseline

Fashion-MNIST by default (Debian's dataset-fashion-mnist works offline), or
`--dataset mnist` with its IDX files in --data_dir. Distortions: none, r, rts, p, e, tc
(see train/data/distortions.py). Writes checkpoints, metrics.jsonl, results.json and
pictures/ into --workdir; running the same command again resumes.
"""

import argparse
import sys

import numpy as np

from train import config as config_lib
from train import models
from train import trainer
from train.data import distortions
from train.data import idx

DEFAULTS = config_lib.Config(workdir="outputs/distorted_mnist", num_epochs=10, batch_size=128,
                             learning_rate=1e-3, stn="affine", validation_examples=5000)


def make_task(dataset: str, distortion: str, config: config_lib.Config) -> trainer.Task:
  splits = idx.load(dataset, config.data_dir)
  train_images, train_labels = splits["train"]
  test_images, test_labels = splits["test"]
  validation = min(config.validation_examples, len(train_images) // 5)
  train_indices = np.arange(len(train_images) - validation)
  if config.max_train_examples:
    train_indices = train_indices[:config.max_train_examples]
  validation_indices = np.arange(len(train_images) - validation, len(train_images))

  def make_batch(data, indices, split):
    images = distortions.distort(distortion, data["images"], indices, config.seed, split)
    return images, data["labels"][indices]

  return trainer.Task(
      name=f"{dataset}/{distortion}",
      train_data={"images": train_images, "labels": train_labels},
      test_data={"images": test_images, "labels": test_labels},
      train_indices=train_indices, validation_indices=validation_indices,
      num_test=len(test_images), make_batch=make_batch,
      distortion_thetas=(
          (lambda indices: distortions.distortion_thetas(distortion, indices, config.seed, "test"))
          if distortion in distortions.KNOWN_GEOMETRY else None))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  config_lib.add_flags(parser, DEFAULTS)
  parser.add_argument("--dataset", choices=("fashion_mnist", "mnist"), default="fashion_mnist",
                      help="IDX dataset; Fashion-MNIST is found in Debian's folder")
  parser.add_argument("--distortion", choices=distortions.KINDS, default="rts",
                      help="the paper's distortion (see train/data/distortions.py)")
  args = parser.parse_args(argv)
  config = config_lib.config_from_args(args, parser)
  config_lib.check_stn(config, parser)
  if config.num_transformers != 1:
    parser.error("--num_transformers: the digit model takes one transformer")
  return args, config


def main(argv=None) -> int:
  args, config = parse_args(argv)
  return trainer.run_program(
      config, lambda: (make_task(args.dataset, args.distortion, config),
                       models.DigitCnn(num_classes=idx.NUM_CLASSES,
                                       stn=None if config.stn == "none" else config.stn,
                                       stn_out_size=config.stn_out_size,
                                       antialias=config.antialias)),
      data_errors=(idx.DatasetNotFoundError, idx.DataError))


if __name__ == "__main__":
  sys.exit(main())
