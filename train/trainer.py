"""The training loop shared by the programs: `train_and_evaluate(config, workdir)`.

The program's data and model come from the config (`config.program`'s `build`). Resume
first, then loop. The step counter lives in the state; the order of examples in epoch e
is a permutation drawn from (seed, e), and dropout keys come from (seed, step), so a run
resumed from any checkpoint takes exactly the steps an uninterrupted run takes. The
running sums of the epoch's training metrics are part of the state for the same reason.

The host does not wait for the device at each step: the metric sums stay on the device
and are read every `log_every_steps` (and before each checkpoint), where a loss that
stopped being finite is caught. Data parallel over all devices of all processes: the
batch is split along a "data" mesh axis, each process builds only its share of each
batch, parameters are replicated, and only process 0 writes files.
"""

import dataclasses
import hashlib
import importlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import stnjax
from train import canonicalization
from train import checkpointing
from train import config as config_lib
from train import models
from train import visualize
from train.config import Config


class Task(NamedTuple):
  """A dataset as the loop sees it.

  Attributes:
    name: for messages and results.
    train_data, test_data: pytrees of arrays (whole splits), passed to `make_batch`.
    train_indices, validation_indices: example indices into train_data.
    num_test: number of test examples.
    make_batch: `(data, indices, split) -> (images float32 [B, H, W, C], labels int32 [B])`,
      traced inside the jitted step (so generation runs on the device). With
      `config.distortion_warmup` it also takes `strength`, a traced scalar in [0, 1].
    distortion_thetas: `(indices) -> [B, 3, 3]`, the known distortion of each test
      example (see `canonicalization`), or None where there is none.
  """
  name: str
  train_data: Any
  test_data: Any
  train_indices: np.ndarray
  validation_indices: np.ndarray
  num_test: int
  make_batch: Callable
  distortion_thetas: Optional[Callable] = None


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Running sums of the current epoch's training metrics (kept for exact resumes).
  epoch_loss: jax.Array
  epoch_correct: jax.Array
  epoch_count: jax.Array


def _zero_sums():
  """Fresh epoch sums: three distinct buffers, as the train step donates them."""
  return {name: jnp.zeros((), jnp.float32) for name in ("epoch_loss", "epoch_correct",
                                                        "epoch_count")}


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam or SGD with a schedule and weight decay; localization nets get loc_lr_scale."""
  total_steps = max(1, config.num_epochs * steps_per_epoch)

  def schedule(scale):
    peak = config.learning_rate * scale
    if config.schedule == "cosine":
      return optax.cosine_decay_schedule(peak, total_steps)
    if config.schedule == "piecewise":
      return optax.piecewise_constant_schedule(
          peak, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1})
    return optax.constant_schedule(peak)

  def optimizer(scale):
    if config.optimizer == "sgd":
      base = optax.sgd(schedule(scale), momentum=config.momentum)
    else:
      base = optax.adam(schedule(scale))
    if config.weight_decay:
      return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    return base

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "localization" if models.is_localization(path) else "rest", params)

  return optax.multi_transform(
      {"localization": optimizer(config.loc_lr_scale), "rest": optimizer(1.0)}, labels)


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


class Trainer:
  """Jitted steps for one model, task and config on one device mesh."""

  def __init__(self, config: Config, task: Task, model: nn.Module, devices):
    self.config, self.task, self.model = config, task, model
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    for name, size in (("batch_size", config.batch_size),
                       ("eval_batch_size", config.eval_batch_size)):
      if size % len(devices):
        raise config_lib.ConfigError(f"--{name} {size} must be divisible by the {len(devices)} devices "
                         "it is split over.")
    self.steps_per_epoch = len(task.train_indices) // config.batch_size
    if self.steps_per_epoch < 1:
      raise config_lib.ConfigError(f"{task.name}: {len(task.train_indices)} training examples are fewer "
                       f"than one batch of {config.batch_size}.")
    self.optimizer = make_optimizer(config, self.steps_per_epoch)
    self.train_step = jax.jit(self._train_step, donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, static_argnames="split")
    self.transform_step = jax.jit(self._transform_step)
    self.geometry_step = jax.jit(self._geometry_step)

  def global_array(self, value, sharding):
    """A global array from a host value every process holds in full."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  def batch_indices(self, indices) -> jax.Array:
    """A global batch of example indices, split over the devices: each process passes
    only its own share of it."""
    share = len(indices) // jax.process_count()
    local = indices[jax.process_index() * share:(jax.process_index() + 1) * share]
    return jax.make_array_from_process_local_data(self.batch_sharding,
                                                  np.asarray(local, np.int32))

  def init_state(self) -> TrainState:
    def initial_state(data):
      images, _ = self.task.make_batch(data, jnp.arange(2), "train")
      variables = self.model.init(jax.random.key(self.config.seed), images[:1])
      params = variables["params"]
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        batch_stats=variables.get("batch_stats", {}),
                        opt_state=self.optimizer.init(params), **_zero_sums())

    # One compiled program (eagerly, every initializer and shape compiles on its own),
    # given only the two examples it reads.
    first_two = jax.tree.map(lambda array: array[:2], self.task.train_data)
    return self.replicate(jax.jit(initial_state)(first_two))

  def replicate(self, tree):
    return jax.tree.map(lambda leaf: self.global_array(leaf, self.replicated),
                        jax.device_get(tree))

  def _train_step(self, state, data, indices):
    curriculum = {}
    if self.config.distortion_warmup:
      warmup_steps = self.config.distortion_warmup * self.config.num_epochs * self.steps_per_epoch
      curriculum["strength"] = jnp.minimum(1.0, (state.step + 1) / warmup_steps)
    images, labels = self.task.make_batch(data, indices, "train", **curriculum)
    dropout_key = jax.random.fold_in(jax.random.key(self.config.seed + 1), state.step)

    def loss_fn(params):
      logits, updates = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      return _cross_entropy(logits, labels).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    correct = (logits.argmax(-1) == labels).sum().astype(jnp.float32)
    count = jnp.float32(labels.shape[0])
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", state.batch_stats), opt_state=opt_state,
        epoch_loss=state.epoch_loss + loss * count, epoch_correct=state.epoch_correct + correct,
        epoch_count=state.epoch_count + count)
    return new_state

  def _eval_step(self, state, data, indices, split):
    images, labels = self.task.make_batch(data, indices, split)
    logits = self.model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
    return _cross_entropy(logits, labels).sum(), (logits.argmax(-1) == labels).sum()

  def _transform_step(self, state, data, indices):
    images, _ = self.task.make_batch(data, indices, "test")
    _, transforms = self.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                     images, return_transform=True)
    return images, transforms

  def _geometry_step(self, state, data, indices):
    """Residual geometry of test examples (`canonicalization.residual_geometry`): of the
    input itself, and after the model's first transformer (None without one)."""
    images, transforms = self._transform_step(state, data, indices)
    thetas = self.task.distortion_thetas(indices)
    identity = jnp.broadcast_to(jnp.eye(2, 3), (images.shape[0], 2, 3))
    input_geometry = canonicalization.residual_geometry(
        stnjax.affine_grid(identity, images.shape[1:3]), thetas)
    if not transforms:
      return input_geometry, None
    transform = transforms[0]
    grid = transform.grid
    if grid is None:
      out_shape = (self.config.stn_out_size,) * 2 if self.config.stn_out_size else images.shape[1:3]
      grid = stnjax.affine_grid(transform.theta, out_shape)
    return input_geometry, canonicalization.residual_geometry(grid, thetas)

  def canonicalization(self, state):
    """Spreads of the residual geometry over the test set, of the input and after the
    transformer, and the per-example values: `(summary, (input, model))`."""
    parts = []
    size = self.config.eval_batch_size
    for start in range(0, self.task.num_test, size):
      chunk = np.arange(start, min(start + size, self.task.num_test), dtype=np.int32)
      parts.append(jax.device_get(self.geometry_step(
          state, self.task.test_data, self.global_array(chunk, self.replicated))))
    joined = [None if parts[0][i] is None else
              {key: np.concatenate([p[i][key] for p in parts]) for key in parts[0][i]}
              for i in range(2)]
    summary = {"input": canonicalization.spreads(joined[0]),
               "model": None if joined[1] is None else canonicalization.spreads(joined[1])}
    if joined[1] is not None and summary["input"]["rotation_deg"] > ROTATION_BINNED_ABOVE_DEG:
      summary["rotation_by_input_angle"] = canonicalization.rotation_by_input_angle(*joined)
    return summary, joined

  def evaluate(self, state, split: str):
    """(mean loss, accuracy) over the validation or test examples, full batches and a tail."""
    if split == "validation":
      data, indices, name = self.task.train_data, self.task.validation_indices, "train"
    else:
      data, indices, name = self.task.test_data, np.arange(self.task.num_test), "test"
    if len(indices) == 0:
      return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    size = self.config.eval_batch_size
    for start in range(0, len(indices), size):
      chunk = np.asarray(indices[start:start + size], np.int32)
      chunk = (self.batch_indices(chunk) if len(chunk) == size
               else self.global_array(chunk, self.replicated))
      batch_loss, batch_correct = self.eval_step(state, data, chunk, name)
      loss_sum += float(batch_loss)
      correct += int(batch_correct)
    return loss_sum / len(indices), correct / len(indices)

  def epoch_order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.config.seed, epoch])
    return rng.permutation(self.task.train_indices)


def params_digest(params) -> str:
  """sha256 of all parameter bytes, in tree order: equal digests, equal parameters."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def _write_json_atomically(path: pathlib.Path, text: str) -> None:
  partial = path.with_name(path.name + ".part")
  partial.write_text(text)
  os.replace(partial, path)


class _Interval(NamedTuple):
  steps: int
  record: dict  # step, train_loss and train_accuracy of the interval, images_per_s


class _MetricReader:
  """Reads the epoch's metric sums from the device every few steps (the only places
  the host waits for it) and turns them into the interval's means and throughput."""

  def __init__(self, state, step: int):
    self.reset(state, step)
    self.compiling = True  # The first interval of a process includes compilation.

  def reset(self, state, step: int) -> None:
    """Starts an interval at `step` (after a resume, or an epoch's end)."""
    self.step, self.sums, self.time = step, self._sums(state), time.time()

  def restart_clock(self) -> None:
    """Leaves time spent outside the steps (a checkpoint) out of the throughput."""
    self.time = time.time()

  @staticmethod
  def _sums(state):
    return np.asarray(jax.device_get([state.epoch_loss, state.epoch_correct, state.epoch_count]),
                      np.float64)

  def read(self, state, step: int) -> _Interval:
    """The interval since the last read. Raises FloatingPointError naming the steps if
    a loss in it was not finite (it makes the epoch's loss sum so)."""
    sums, now = self._sums(state), time.time()
    if not math.isfinite(sums[0]):
      first = self.step + 1
      where = f"step {step}" if first == step else f"a step in {first}..{step}"
      raise FloatingPointError(f"loss is {sums[0]} at {where}")
    loss, correct, count = sums - self.sums
    record = {"step": step, "train_loss": loss / max(count, 1),
              "train_accuracy": correct / max(count, 1),
              "images_per_s": count / max(now - self.time, 1e-9),
              "includes_compilation": self.compiling}
    interval = _Interval(step - self.step, record)
    self.step, self.sums, self.time, self.compiling = step, sums, now, False
    return interval


class _Files:
  """What a run writes into its workdir. Only process 0 writes."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.writes = jax.process_index() == 0
    if self.writes:
      workdir.mkdir(parents=True, exist_ok=True)

  def epoch_metrics(self, history: list) -> None:
    if self.writes:
      _write_json_atomically(self.workdir / "metrics.jsonl",
                             "".join(json.dumps(r) + "\n" for r in history))

  def train_metrics(self, record: dict) -> None:
    """One line per metric read."""
    if self.writes:
      with open(self.workdir / "train_metrics.jsonl", "a") as lines:
        lines.write(json.dumps(record) + "\n")

  def resume_train_metrics(self, step: int) -> None:
    """Drops the lines past the step a run resumes from (written before a kill)."""
    path = self.workdir / "train_metrics.jsonl"
    if self.writes and path.exists():
      kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
      _write_json_atomically(path, "".join(line + "\n" for line in kept))

  def check_settings(self, config: Config) -> None:
    """Refuses to resume a run with other settings; records this run's."""
    path = self.workdir / "config.json"
    if path.exists():
      config_lib.check_resumable(json.loads(path.read_text()), config, self.workdir)
    if self.writes:
      _write_json_atomically(path, json.dumps(dataclasses.asdict(config), indent=1))

  def epoch_picture(self, epoch: int, images, transforms) -> None:
    if self.writes:
      visualize.save_epoch_picture(self.workdir / "pictures" / f"epoch_{epoch:03d}.png",
                                   np.asarray(images), transforms, epoch)

  def final_pictures(self, geometries) -> None:
    if not self.writes:
      return
    visualize.save_animation(self.workdir / "pictures", self.workdir / "pictures" / "epochs.gif")
    if geometries is not None and geometries[1] is not None:
      canonicalization.save_histograms(self.workdir / "pictures" / "canonicalization.png",
                                       *geometries)

  def results(self, results: dict) -> None:
    if self.writes:
      _write_json_atomically(self.workdir / "results.json", json.dumps(results, indent=1))


NUM_PICTURED = 8  # Test examples in each epoch's picture.
# Distortions that turn digits by more than this (degrees of spread: R, RTS) also get the
# residual rotation per bin of the input's rotation in results.json.
ROTATION_BINNED_ABOVE_DEG = 5.0


def build(config: Config):
  """`(task, model)` of the config's program (`train.<program>.build`)."""
  if config.program not in config_lib.PROGRAM_FIELDS:
    raise ValueError(f"config.program must be one of {sorted(config_lib.PROGRAM_FIELDS)}, got "
                     f"{config.program!r}.")
  return importlib.import_module(f"train.{config.program}").build(config)


def train_and_evaluate(config: Config, workdir, log=print) -> dict:
  """Trains (resuming from the workdir), evaluates on the test set, writes results.json.

  The devices come from `config.accelerator` (a missing one fails before any data is
  loaded), the data and model from the config's program. Returns the results.
  """
  config_lib.check(config)
  devices = config_lib.select_devices(config.accelerator)
  task, model = build(config)
  return _train(config, pathlib.Path(workdir), task, model, devices,
                log if jax.process_index() == 0 else lambda *_: None)


def _train(config, workdir, task, model, devices, log) -> dict:
  start_time = time.time()
  files = _Files(workdir)
  files.check_settings(config)
  trainer = Trainer(config, task, model, devices)
  checkpoints = checkpointing.Checkpoints(workdir, config.keep_checkpoints)
  state = trainer.init_state()
  history = []
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, history = restored
    state = trainer.replicate(state)
    files.resume_train_metrics(int(state.step))
    log(f"resumed from step {int(state.step)} in {workdir / 'checkpoints'}")
  log(f"{task.name}: {len(task.train_indices)} training, {len(task.validation_indices)} "
      f"validation, {task.num_test} test examples; {trainer.steps_per_epoch} steps per "
      f"epoch; data parallel over {len(devices)} {devices[0].platform} device(s)"
      + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))

  train_data = trainer.replicate(task.train_data)
  picture_indices = trainer.global_array(np.arange(min(NUM_PICTURED, task.num_test), dtype=np.int32),
                                         trainer.replicated)
  steps_per_epoch = trainer.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch
  step = int(state.step)  # The host's count from here on: no reads of the device's.
  reader = _MetricReader(state, step)
  try:
    while step < total_steps:
      epoch, first_batch = divmod(step, steps_per_epoch)
      order = trainer.epoch_order(epoch)
      progress = tqdm(total=steps_per_epoch, initial=first_batch, file=sys.stderr,
                      desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step",
                      dynamic_ncols=True, mininterval=1.0, disable=not files.writes)
      epoch_start = time.time()
      for batch in range(first_batch, steps_per_epoch):
        indices = order[batch * config.batch_size:(batch + 1) * config.batch_size]
        state = trainer.train_step(state, train_data, trainer.batch_indices(indices))
        step += 1
        epoch_ends = batch + 1 == steps_per_epoch
        save = step % config.checkpoint_every_steps == 0 and not epoch_ends
        if step % config.log_every_steps == 0 or save or epoch_ends:
          try:
            interval = reader.read(state, step)
          except FloatingPointError as error:
            raise TrainingDiverged(_diverged_message(error, epoch, checkpoints, workdir)) from None
          progress.update(interval.steps)
          progress.set_postfix(loss=f"{interval.record['train_loss']:.4f}",
                               acc=f"{interval.record['train_accuracy']:.4f}",
                               img_s=f"{interval.record['images_per_s']:.0f}", refresh=False)
          files.train_metrics(dict(interval.record, epoch=epoch + 1))
        if save:
          checkpoints.save(step, state, history)
          reader.restart_clock()
      progress.close()
      validation_loss, validation_accuracy = trainer.evaluate(state, "validation")
      sums = reader.sums
      record = {
          "epoch": epoch + 1, "step": step,
          "train_loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2]),
          "validation_loss": validation_loss, "validation_accuracy": validation_accuracy,
          # This process's share of the epoch (a resumed epoch counts from the restart).
          "wall_time_s": time.time() - epoch_start,
      }
      history.append(record)
      state = state.replace(**{name: trainer.global_array(np.zeros((), np.float32),
                                                          trainer.replicated)
                               for name in _zero_sums()})
      checkpoints.save(step, state, history,
                       validation_accuracy if math.isfinite(validation_accuracy) else None)
      files.epoch_metrics(history)
      files.epoch_picture(epoch + 1, *trainer.transform_step(state, task.test_data,
                                                             picture_indices))
      log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                              if isinstance(v, float)))
      reader.reset(state, step)
  finally:
    checkpoints.close()

  test_loss, test_accuracy = trainer.evaluate(state, "test")
  residual = geometries = None
  if task.distortion_thetas is not None:
    residual, geometries = trainer.canonicalization(state)
  files.final_pictures(geometries)
  results = {
      "task": task.name, "test_accuracy": test_accuracy, "test_error": 1 - test_accuracy,
      "test_loss": test_loss, "steps": step, "epochs": config.num_epochs,
      # Spreads over the test set: rotation_deg (circular std), log_scale (std),
      # translation_px (RMS, digit pixels); of the input and after the transformer.
      "canonicalization": residual,
      "params_sha256": params_digest(state.params),
      "config": dataclasses.asdict(config), "workdir": str(workdir), "command": sys.argv,
      "versions": {name: _version(name) for name in ("stnjax", "jax", "jaxlib", "flax", "optax",
                                                       "orbax-checkpoint")},
      "devices": [str(d) for d in devices], "processes": jax.process_count(),
      "wall_time_s": time.time() - start_time,
      "training_wall_time_s": sum(r.get("wall_time_s", 0.0) for r in history),
  }
  files.results(results)
  if residual and residual["model"]:
    log("spread of the digits' pose (input -> after the transformer): " + ", ".join(
        f"{name} {residual['input'][name]:.3g} -> {residual['model'][name]:.3g}"
        for name in residual["input"]))
  log(f"test accuracy {test_accuracy:.4f} (error {100 * (1 - test_accuracy):.2f}%), "
      f"loss {test_loss:.4f}; results in {workdir / 'results.json'}, pictures in "
      f"{workdir / 'pictures'}")
  return results


def _diverged_message(error, epoch, checkpoints, workdir) -> str:
  last = checkpoints.last_step()
  return (f"{error} (epoch {epoch + 1}); stopped. " +
          (f"The last good checkpoint is step {last} in {workdir / 'checkpoints'}."
           if last is not None else "No checkpoint had been written."))


def run_program(config: Config, workdir) -> int:
  """What both programs' main() does after parsing flags: returns the exit code.

  Expected failures (no such accelerator, missing or bad data, a diverged loss, a
  workdir of other settings or another model) print one line and return 2.
  """
  data_errors = importlib.import_module(f"train.{config.program}").DATA_ERRORS
  try:
    config_lib.maybe_initialize_distributed(config)
    train_and_evaluate(config, workdir)
  except (config_lib.AcceleratorError, config_lib.ConfigError, TrainingDiverged,
          checkpointing.CheckpointMismatch, *data_errors) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0



def _version(package):
  import importlib.metadata
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "absent"
