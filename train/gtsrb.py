"""Traffic signs (GTSRB) with spatial transformers: `python -m train.gtsrb`.

    python -m train.gtsrb --data_dir ~/tensorflow_datasets                # 1 ST + IDSIA net
    python -m train.gtsrb --num_transformers 2 --accelerator tpu          # Moodstocks' 2 STs
    python -m train.gtsrb --stn none                                      # IDSIA net alone

The official archives go in <data_dir>/downloads/manual/ (or are downloaded when
online); the first run builds the tfds dataset there. Writes checkpoints, metrics.jsonl,
results.json and pictures/ into --workdir; running the same command again resumes.
"""

import argparse
import sys

import numpy as np

from train import config as config_lib
from train import configs
from train import models
from train import trainer
from train.data import gtsrb

# Missing or malformed data: the program says so in one line.
DATA_ERRORS = (gtsrb.DatasetNotFoundError, gtsrb.ArchiveError)


def make_task(config: config_lib.Config) -> trainer.Task:
  image_size = config.image_size
  splits = gtsrb.load(config.data_dir, image_size, config.crop_roi)
  train_images, train_labels, _ = splits["train"]
  validation_images, validation_labels, _ = splits["validation"]
  test_images, test_labels, _ = splits["test"]
  # Validation tracks sit after the training images in one array, so that one jitted
  # step serves both.
  images = np.concatenate([train_images, validation_images])
  labels = np.concatenate([train_labels, validation_labels])
  train_indices = np.arange(len(train_images))
  if config.max_train_examples:
    train_indices = train_indices[:config.max_train_examples]

  def make_batch(data, indices, split):
    del split  # No augmentation: every split is read as is.
    return data["images"][indices].astype(np.float32) / 255.0, data["labels"][indices]

  return trainer.Task(
      name=f"gtsrb/{image_size}px", train_data={"images": images, "labels": labels},
      test_data={"images": test_images, "labels": test_labels}, train_indices=train_indices,
      validation_indices=np.arange(len(train_images), len(images)), num_test=len(test_images),
      make_batch=make_batch)


def build(config: config_lib.Config):
  """The task and the model a config describes."""
  model = models.IdsiaNet(num_classes=gtsrb.NUM_CLASSES,
                          stn=None if config.stn == "none" else config.stn,
                          num_transformers=config.num_transformers, antialias=config.antialias,
                          stn_iterations=config.stn_iterations)
  return make_task(config), model


def parse_args(argv=None):
  """(config, workdir) from the command line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  config_lib.add_flags(parser, configs.GTSRB, "gtsrb", "outputs/gtsrb")
  args = parser.parse_args(argv)
  config = config_lib.config_from_args(args, parser, configs.GTSRB)
  config_lib.check_stn(config, parser)
  if config.num_transformers not in (1, 2):
    parser.error(f"--num_transformers must be 1 or 2, got {config.num_transformers}")
  if config.stn_out_size is not None:
    parser.error("--stn_out_size: the traffic-sign model's transformers keep the size of "
                 "their input; use --image_size")
  if config.image_size < 8:
    parser.error(f"--image_size must be >= 8, got {config.image_size}")
  return config, args.workdir


def main(argv=None) -> int:
  return trainer.run_program(*parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
