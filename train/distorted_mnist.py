"""The paper's distorted-digit experiments: `python -m train.distorted_mnist`.

    python -m train.distorted_mnist --distortion rts --stn affine          # ST-CNN
    python -m train.distorted_mnist --distortion rts --stn none            # CNN baseline
    python -m train.distorted_mnist --config table1 --distortion r         # Table 1's budget

Fashion-MNIST by default (Debian's dataset-fashion-mnist works offline), or
`--dataset mnist` with its IDX files in --data_dir. Distortions: none, r, rts, p, e, tc
(see train/data/distortions.py). Writes checkpoints, metrics.jsonl, results.json and
pictures/ into --workdir; running the same command again resumes.
"""

import argparse
import sys

import numpy as np

from train import config as config_lib
from train import configs
from train import models
from train import trainer
from train.data import distortions
from train.data import idx

# Missing or malformed data: the program says so in one line.
DATA_ERRORS = (idx.DatasetNotFoundError, idx.DataError)


def make_task(config: config_lib.Config) -> trainer.Task:
  dataset, distortion = config.dataset, config.distortion
  splits = idx.load(dataset, config.data_dir)
  train_images, train_labels = splits["train"]
  test_images, test_labels = splits["test"]
  validation = min(config.validation_examples, len(train_images) // 5)
  train_indices = np.arange(len(train_images) - validation)
  if config.max_train_examples:
    train_indices = train_indices[:config.max_train_examples]
  validation_indices = np.arange(len(train_images) - validation, len(train_images))

  def make_batch(data, indices, split, strength=1.0):
    images = distortions.distort(distortion, data["images"], indices, config.seed, split,
                                 strength)
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


def build(config: config_lib.Config):
  """The task and the model a config describes."""
  model = models.DigitCnn(num_classes=idx.NUM_CLASSES,
                          stn=None if config.stn == "none" else config.stn,
                          stn_out_size=config.stn_out_size, antialias=config.antialias,
                          localization=config.localization,
                          stn_iterations=config.stn_iterations)
  return make_task(config), model


def parse_args(argv=None):
  """(config, workdir) from the command line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  config_lib.add_flags(parser, configs.DISTORTED_MNIST, "distorted_mnist",
                       "outputs/distorted_mnist")
  args = parser.parse_args(argv)
  config = config_lib.config_from_args(args, parser, configs.DISTORTED_MNIST)
  config_lib.check_stn(config, parser)
  if config.num_transformers != 1:
    parser.error("--num_transformers: the digit model takes one transformer")
  return config, args.workdir


def main(argv=None) -> int:
  return trainer.run_program(*parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
