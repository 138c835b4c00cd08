"""Training configuration: every default in one place, and the shared command-line flags.

    python -m train.distorted_mnist --distortion rts --stn affine --num_epochs 10
    python -m train.distorted_mnist --config quick
    python -m train.gtsrb --data_dir ~/tensorflow_datasets --accelerator tpu

`Config` holds every setting with its default; the named configs in `train/configs.py`
change some of them (each program starts from its own); flags change the rest.
"""

import argparse
import dataclasses
import os
import sys
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of a training run (flags of the same names)."""
  program: str = "distorted_mnist"  # distorted_mnist | gtsrb: the data and model
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
  stn_iterations: int = 1  # the transformer's refinement steps (inverse compositional)
  seed: int = 0
  max_train_examples: Optional[int] = None
  validation_examples: int = 5000
  checkpoint_every_steps: int = 200
  keep_checkpoints: int = 3
  distributed: bool = False
  # None: jax.distributed.initialize() finds them (TPU pods, SLURM, ...).
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  # How long a multi-process run waits for every process to connect, and how long a
  # process may stop answering before the others end (jax.distributed's timeouts).
  distributed_timeout_s: int = 120
  log_every_steps: int = 20  # the host reads the training metrics this often
  # distorted_mnist only.
  dataset: str = "fashion_mnist"  # fashion_mnist | mnist (IDX files in data_dir)
  distortion: str = "rts"  # none | r | rts | p | e | tc (train/data/distortions.py)
  distortion_warmup: float = 0.0  # share of the steps over which distortions grow to full
  localization: str = "paper"  # the transformer's localization net: paper | large (models.py)
  # gtsrb only.
  image_size: int = 32
  crop_roi: bool = True


# The fields only one program reads (its flags; the other program refuses a change).
PROGRAM_FIELDS = {"distorted_mnist": ("dataset", "distortion", "distortion_warmup",
                                      "localization"),
                  "gtsrb": ("image_size", "crop_roi")}


HELP = {
    "program": "the data and model (set by the program; not a flag)",
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
    "stn_iterations": ("steps of each spatial transformer: from the 2nd on, its localization "
                       "net sees the input warped so far and corrects the transform"),
    "seed": "fixes initialization, data order, distortions and dropout",
    "max_train_examples": "use only the first N training examples (quick runs)",
    "validation_examples": "training examples held out for validation",
    "checkpoint_every_steps": "periodic checkpoint interval (end of epoch always saves)",
    "keep_checkpoints": "latest checkpoints kept (the best one is kept apart)",
    "distributed": "call jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)",
    "coordinator_address": "host:port of process 0's coordinator (with --distributed)",
    "num_processes": "processes in the run (with --distributed)",
    "process_id": "this process's index, 0 to num_processes - 1 (with --distributed)",
    "distributed_timeout_s": ("seconds to wait for every process to connect, and after which "
                              "a process that stopped answering ends the run (with --distributed)"),
    "log_every_steps": "training metrics are read from the device, checked and shown this often",
    "dataset": "IDX dataset; Fashion-MNIST is found in Debian's folder",
    "distortion": "the paper's distortion (see train/data/distortions.py)",
    "distortion_warmup": ("share of the training steps over which the training distortions "
                          "grow linearly from none to full (a curriculum; tests are full)"),
    "localization": ("the transformer's localization net: paper (2x downsampled, conv 20@5x5 "
                     "x2, fc 20) or large (full resolution, conv 32@5x5 and 64@5x5, fc 64)"),
    "image_size": "side of the square inputs",
    "crop_roi": "crop each image to its annotated region of interest",
}
WORKDIR_HELP = "checkpoints, metrics.jsonl, results.json and pictures/ go here; rerun to resume"


def add_flags(parser: argparse.ArgumentParser, configs: dict, default_config: str,
              default_workdir: str) -> None:
  """--config (a name in `configs`), --workdir, and one flag per Config field of this
  program; a flag left out keeps the chosen config's value."""
  parser.add_argument("--config", choices=sorted(configs), default=default_config,
                      help="named settings (train/configs.py); the flags below change them "
                           f"(default: {default_config})")
  parser.add_argument("--workdir", default=default_workdir,
                      help=f"{WORKDIR_HELP} (default: {default_workdir})")
  defaults = configs[default_config]()
  others = {f for name, fields in PROGRAM_FIELDS.items() if name != defaults.program
            for f in fields}
  choices = {"accelerator": ("cpu", "gpu", "tpu"), "optimizer": ("adam", "sgd"),
             "schedule": ("cosine", "constant", "piecewise"), "dataset": ("fashion_mnist", "mnist"),
             "distortion": ("none", "r", "rts", "p", "e", "tc"),
             "localization": tuple(_localizations())}
  kinds = {"data_dir": str, "accelerator": str, "max_train_examples": int, "stn_out_size": int,
           "coordinator_address": str, "num_processes": int, "process_id": int}
  for field in dataclasses.fields(Config):
    if field.name == "program" or field.name in others:
      continue
    value = str(getattr(defaults, field.name)).replace("%", "%%")
    help_text = f"{HELP[field.name]} (default: {value} in the {default_config} config)"
    if field.type is bool or isinstance(field.default, bool):
      parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction,
                          default=None, help=help_text)
      continue
    parser.add_argument(f"--{field.name}", type=kinds.get(field.name, type(field.default)),
                        default=None, choices=choices.get(field.name), help=help_text)


class ConfigError(ValueError):
  """A setting a run cannot use (the message names the flag and what it expects)."""


def _localizations():
  from train import models  # Flax and stnjax: imported when a program starts, not before.
  return models.DIGIT_LOCALIZATIONS


def check(config: Config) -> None:
  """Raises ConfigError for settings no run can use."""
  if config.program not in PROGRAM_FIELDS:
    raise ConfigError(f"program must be one of {sorted(PROGRAM_FIELDS)}, got {config.program!r}")
  positive = ("num_epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps",
              "keep_checkpoints", "num_transformers", "log_every_steps", "stn_iterations",
              "distributed_timeout_s")
  for name in positive:
    if getattr(config, name) < 1:
      raise ConfigError(f"--{name} must be >= 1, got {getattr(config, name)}")
  if config.learning_rate <= 0 or config.loc_lr_scale < 0:
    raise ConfigError(f"--learning_rate must be > 0 and --loc_lr_scale >= 0, got "
                      f"{config.learning_rate} and {config.loc_lr_scale}")
  if config.stn_out_size is not None and config.stn_out_size < 1:
    raise ConfigError(f"--stn_out_size must be >= 1, got {config.stn_out_size}")
  if config.validation_examples < 0:
    raise ConfigError(f"--validation_examples must be >= 0, got {config.validation_examples}")
  if not 0 <= config.distortion_warmup <= 1:
    raise ConfigError(f"--distortion_warmup must be in [0, 1], got {config.distortion_warmup}")
  if config.distortion_warmup and (config.program != "distorted_mnist"
                                   or config.distortion not in ("r", "rts", "p", "e")):
    raise ConfigError(f"--distortion_warmup: {config.program} with distortion "
                      f"{config.distortion!r} has no distortion to grow (distorted_mnist's "
                      "r, rts, p and e do)")
  if config.localization not in _localizations():
    raise ConfigError(f"--localization must be one of {sorted(_localizations())}, got "
                      f"{config.localization!r}")
  if config.max_train_examples is not None and config.max_train_examples < 1:
    raise ConfigError(f"--max_train_examples must be >= 1, got {config.max_train_examples}")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     configs: dict) -> Config:
  """The named config with the flags given on top; bad values end the program with a
  usage error."""
  changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name, None) is not None}
  config = dataclasses.replace(configs[args.config](), **changes)
  try:
    check(config)
  except ConfigError as error:
    parser.error(str(error))
  return config


# Settings a resumed run may change: how long, how often, where and on what it runs.
RESUMABLE_CHANGES = ("num_epochs", "eval_batch_size", "checkpoint_every_steps",
                     "keep_checkpoints", "log_every_steps", "data_dir", "accelerator",
                     "distributed", "coordinator_address", "num_processes", "process_id",
                     "distributed_timeout_s")


def check_resumable(saved: dict, config: Config, workdir) -> None:
  """Raises ConfigError if the run saved in workdir had other settings than config,
  beyond RESUMABLE_CHANGES."""
  current = dataclasses.asdict(config)
  # A field newer than the saved run had its default there.
  defaults = {f.name: f.default for f in dataclasses.fields(Config)}
  differences = [f"{name} {saved.get(name, defaults[name])!r} there, {value!r} here"
                 for name, value in current.items()
                 if name not in RESUMABLE_CHANGES and saved.get(name, defaults[name]) != value]
  if differences:
    raise ConfigError(f"{workdir} holds a run with other settings ({'; '.join(differences)}); "
                      "resuming it would mix two runs. Use another --workdir, or the same "
                      "settings to resume it.")


def check_stn(config: Config, parser: argparse.ArgumentParser) -> None:
  """--stn names a stnjax transform family or "none" that --stn_iterations can refine."""
  from stnjax import transforms
  if config.stn != "none" and config.stn not in transforms.names():
    parser.error(f"--stn must be 'none' or one of {transforms.names()}, got {config.stn!r}")
  family = None if config.stn == "none" else transforms.get(config.stn)
  if config.stn_iterations > 1 and family is not None and family.theta is None:
    parser.error(f"--stn_iterations {config.stn_iterations} composes matrices; --stn "
                 f"{config.stn} has none (affine and projective do)")


def maybe_initialize_distributed(config: Config) -> bool:
  """Joins a multi-host run when --distributed, JAX_COORDINATOR_ADDRESS or any of the
  coordinator flags asks for one.

  Must run before anything else touches JAX's devices. A process that does not connect
  within --distributed_timeout_s, or stops sending heartbeats for that long (it died),
  ends every other process: JAX's coordination service aborts them with a message
  naming the cause (DEADLINE_EXCEEDED at RegisterTask; "tasks are unhealthy (stopped
  sending heartbeats)"), exit code 134, instead of leaving them waiting in a collective.
  """
  asked = (config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")
           or config.coordinator_address or config.num_processes or config.process_id is not None)
  if not asked:
    return False
  timeout = config.distributed_timeout_s
  where = f" at {config.coordinator_address}" if config.coordinator_address else ""
  print(f"joining a multi-process run{where}: a process that has not connected within "
        f"{timeout} s, or stops answering for {timeout} s, ends it (--distributed_timeout_s)",
        file=sys.stderr, flush=True)
  jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id,
                             initialization_timeout=timeout, heartbeat_timeout_seconds=timeout)
  platform = config.accelerator or jax.default_backend()
  if jax.process_count() > 1 and platform == "cpu":
    # The processes of a CPU run must not take their programs from the persistent
    # compilation cache (JAX_COMPILATION_CACHE_DIR). Its key for a CPU program includes
    # the process's own devices, and only process 0 writes, so on a second run
    # process 0 loads each program from the cache while the others compile it afresh.
    # With jax 0.12 the cached and the fresh copy of the train step then block in
    # their all-gathers, each waiting for the other, and the run hangs (jax 0.10.2 runs
    # the same mix). Every process compiling its own programs keeps them in step.
    jax.config.update("jax_enable_compilation_cache", False)
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
