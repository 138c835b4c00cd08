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
from train import models
from train import trainer
from train.data import gtsrb

DEFAULTS = config_lib.Config(
    workdir="outputs/gtsrb", data_dir="~/tensorflow_datasets", num_epochs=10, batch_size=128,
    learning_rate=1e-3, schedule="piecewise", stn="affine", loc_lr_scale=0.1)


def make_task(config: config_lib.Config, image_size: int, crop_roi: bool) -> trainer.Task:
  splits = gtsrb.load(config.data_dir, image_size, crop_roi)
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


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  config_lib.add_flags(parser, DEFAULTS)
  parser.add_argument("--image_size", type=int, default=32, help="side of the square inputs")
  parser.add_argument("--crop_roi", action=argparse.BooleanOptionalAction, default=True,
                      help="crop each image to its annotated region of interest")
  args = parser.parse_args(argv)
  config = config_lib.config_from_args(args, parser)
  config_lib.check_stn(config, parser)
  if config.num_transformers not in (1, 2):
    parser.error(f"--num_transformers must be 1 or 2, got {config.num_transformers}")
  if config.stn_out_size is not None:
    parser.error("--stn_out_size: the traffic-sign model's transformers keep the size of "
                 "their input; use --image_size")
  if args.image_size < 8:
    parser.error(f"--image_size must be >= 8, got {args.image_size}")
  return args, config


def main(argv=None) -> int:
  args, config = parse_args(argv)
  return trainer.run_program(
      config, lambda: (make_task(config, args.image_size, args.crop_roi),
                       models.IdsiaNet(num_classes=gtsrb.NUM_CLASSES,
                                       stn=None if config.stn == "none" else config.stn,
                                       num_transformers=config.num_transformers,
                                       antialias=config.antialias)),
      data_errors=(gtsrb.DatasetNotFoundError, gtsrb.ArchiveError))


if __name__ == "__main__":
  sys.exit(main())
