"""Training configuration: every default in one place, and the shared command-line flags.

    python -m train.distorted_mnist --distortion rts --stn affine --num_epochs 10
    python -m train.gtsrb --data_dir ~/tensorflow_datasets --accelerator tpu

The defaults of each program (its `DEFAULTS`) override the ones below.
"""

import argparse
import dataclasses
import os
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of a training run (flags of the same names)."""
  workdir: str = "outputs/run"
  data_dir: Optional[str] = None
  accelerator: Optional[str] = None  # cpu | gpu | tpu; None: JAX's default backend.
  num_epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 500
  optimizer: str = "adam"  # adam | sgd (with momentum)
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  schedule: str = "cosine"  # cosine | constant | piecewise (x0.1 at 50% and 75%)
  loc_lr_scale: float = 1.0  # learning-rate multiplier for the localization nets
  stn: str = "affine"  # a stnjax.transforms family, or "none" for the baseline
  num_transformers: int = 1
  stn_out_size: Optional[int] = None  # side of the transformer's output; None: the input's
  antialias: bool = False
  seed: int = 0
  max_train_examples: Optional[int] = None
  validation_examples: int = 5000
  checkpoint_every_steps: int = 200
  keep_checkpoints: int = 3
  distributed: bool = False


HELP = {
    "workdir": "checkpoints, metrics.jsonl, results.json and pictures/ go here; rerun to resume",
    "data_dir": "dataset folder (IDX files; for GTSRB the tfds data_dir)",
    "accelerator": "platform to train on; fails at once if it has no devices",
    "num_epochs": "passes over the training examples",
    "batch_size": "global batch, split over all devices",
    "eval_batch_size": "batch for validation and test",
    "optimizer": "adam, or sgd with --momentum",
    "learning_rate": "peak learning rate",
    "momentum": "sgd momentum",
    "weight_decay": "decoupled weight decay (0: none)",
    "schedule": "cosine decay, constant, or x0.1 at 50%% and 75%% of training",
    "loc_lr_scale": "learning-rate multiplier of the localization nets (the paper: 0.1 on SVHN)",
    "stn": "transform family of the spatial transformer, or none for the baseline",
    "num_transformers": "spatial transformers (GTSRB: 2 adds one before the 2nd conv block)",
    "stn_out_size": "side of the spatial transformer's square output (default: the input's)",
    "antialias": "antialiased sampling where the transformer shrinks the input",
    "seed": "fixes initialization, data order, distortions and dropout",
    "max_train_examples": "use only the first N training examples (quick runs)",
    "validation_examples": "training examples held out for validation",
    "checkpoint_every_steps": "periodic checkpoint interval (end of epoch always saves)",
    "keep_checkpoints": "latest checkpoints kept (the best one is kept apart)",
    "distributed": "call jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)",
}


def add_flags(parser: argparse.ArgumentParser, defaults: Config) -> None:
  """One flag per Config field, with the program's defaults."""
  choices = {"accelerator": ("cpu", "gpu", "tpu"), "optimizer": ("adam", "sgd"),
             "schedule": ("cosine", "constant", "piecewise")}
  for field in dataclasses.fields(Config):
    default = getattr(defaults, field.name)
    if field.type is bool or isinstance(default, bool):
      parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction,
                          default=default, help=HELP[field.name])
      continue
    kind = {"workdir": str, "data_dir": str, "accelerator": str, "optimizer": str,
            "schedule": str, "stn": str, "max_train_examples": int,
            "stn_out_size": int}.get(field.name, type(default))
    parser.add_argument(f"--{field.name}", type=kind, default=default,
                        choices=choices.get(field.name), help=HELP[field.name])


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
  """The Config the flags describe; bad values end the program with a usage error."""
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
  config = Config(**values)
  positive = ("num_epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps",
              "keep_checkpoints", "num_transformers")
  for name in positive:
    if getattr(config, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(config, name)}")
  if config.learning_rate <= 0 or config.loc_lr_scale < 0:
    parser.error(f"--learning_rate must be > 0 and --loc_lr_scale >= 0, got "
                 f"{config.learning_rate} and {config.loc_lr_scale}")
  if config.stn_out_size is not None and config.stn_out_size < 1:
    parser.error(f"--stn_out_size must be >= 1, got {config.stn_out_size}")
  if config.max_train_examples is not None and config.max_train_examples < 1:
    parser.error(f"--max_train_examples must be >= 1, got {config.max_train_examples}")
  return config


def check_stn(config: Config, parser: argparse.ArgumentParser) -> None:
  """--stn names a stnjax transform family or "none"."""
  from stnjax import transforms
  if config.stn != "none" and config.stn not in transforms.names():
    parser.error(f"--stn must be 'none' or one of {transforms.names()}, got {config.stn!r}")


def maybe_initialize_distributed(config: Config) -> bool:
  """Joins a multi-host run when --distributed or JAX_COORDINATOR_ADDRESS asks for one.

  Must run before anything else touches JAX's devices.
  """
  if not (config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return False
  jax.distributed.initialize()
  return True


class AcceleratorError(RuntimeError):
  """The asked-for platform has no devices."""


def select_devices(accelerator: Optional[str]):
  """The devices to train on; fails at once, listing what exists, if the platform is absent."""
  if accelerator is None:
    return jax.devices()
  try:
    devices = jax.devices(accelerator)
  except RuntimeError:
    devices = []
  if not devices:
    found = sorted({d.platform for d in jax.devices()})
    raise AcceleratorError(f"--accelerator {accelerator}: no {accelerator} devices found; "
                           f"platforms available here: {', '.join(found)}.")
  return devices
