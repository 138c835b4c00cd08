"""The training loop shared by the programs: `train_and_evaluate(config, task, model)`.

Resume first, then loop. The step counter lives in the state; the order of examples in
epoch e is a permutation drawn from (seed, e), and dropout keys come from (seed, step),
so a run resumed from any checkpoint takes exactly the steps an uninterrupted run takes.
The running sums of the epoch's training metrics are part of the state for the same
reason. Data parallel over all devices: the batch is split along a "data" mesh axis,
parameters are replicated.
"""

import dataclasses
import hashlib
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
      traced inside the jitted step (so generation runs on the device).
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
        raise ValueError(f"--{name} {size} must be divisible by the {len(devices)} devices "
                         "it is split over.")
    self.steps_per_epoch = len(task.train_indices) // config.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f"{task.name}: {len(task.train_indices)} training examples are fewer "
                       f"than one batch of {config.batch_size}.")
    self.optimizer = make_optimizer(config, self.steps_per_epoch)
    self.train_step = jax.jit(self._train_step, donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, static_argnames="split")
    self.transform_step = jax.jit(self._transform_step)
    self.geometry_step = jax.jit(self._geometry_step)

  def init_state(self) -> TrainState:
    images, _ = self.task.make_batch(self.task.train_data, jnp.arange(2), "train")
    variables = self.model.init(jax.random.key(self.config.seed), images[:1])
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}),
                       opt_state=self.optimizer.init(params), **_zero_sums())
    return jax.device_put(state, self.replicated)

  def _train_step(self, state, data, indices):
    images, labels = self.task.make_batch(data, indices, "train")
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
    return new_state, loss

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
      parts.append(jax.device_get(self.geometry_step(state, self.task.test_data,
                                                     jax.device_put(chunk, self.replicated))))
    joined = [None if parts[0][i] is None else
              {key: np.concatenate([p[i][key] for p in parts]) for key in parts[0][i]}
              for i in range(2)]
    summary = {"input": canonicalization.spreads(joined[0]),
               "model": None if joined[1] is None else canonicalization.spreads(joined[1])}
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
      sharding = self.batch_sharding if len(chunk) == size else self.replicated
      batch_loss, batch_correct = self.eval_step(
          state, data, jax.device_put(chunk, sharding), name)
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


def train_and_evaluate(config: Config, task: Task, model: nn.Module, devices,
                       num_pictured: int = 8, log=print) -> dict:
  """Trains (resuming from the workdir), evaluates on the test set, writes results.json.

  Each epoch's picture shows the first `num_pictured` test examples.
  """
  picture_indices = np.arange(min(num_pictured, task.num_test))
  start_time = time.time()
  workdir = pathlib.Path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  trainer = Trainer(config, task, model, devices)
  checkpoints = checkpointing.Checkpoints(workdir, config.keep_checkpoints)
  state = trainer.init_state()
  history = []
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, history = restored
    state = jax.device_put(state, trainer.replicated)
    log(f"resumed from step {int(state.step)} in {workdir / 'checkpoints'}")
  log(f"{task.name}: {len(task.train_indices)} training, {len(task.validation_indices)} "
      f"validation, {task.num_test} test examples; {trainer.steps_per_epoch} steps per "
      f"epoch; data parallel over {len(devices)} {devices[0].platform} device(s)")

  train_data = jax.device_put(task.train_data, trainer.replicated)
  total_steps = config.num_epochs * trainer.steps_per_epoch
  try:
    while int(state.step) < total_steps:
      epoch, first_batch = divmod(int(state.step), trainer.steps_per_epoch)
      order = trainer.epoch_order(epoch)
      progress = tqdm(total=trainer.steps_per_epoch, initial=first_batch, file=sys.stderr,
                      desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step",
                      dynamic_ncols=True, mininterval=1.0)
      epoch_start = time.time()
      for batch in range(first_batch, trainer.steps_per_epoch):
        indices = order[batch * config.batch_size:(batch + 1) * config.batch_size]
        step = int(state.step)
        new_state, loss = trainer.train_step(
            state, train_data, jax.device_put(indices.astype(np.int32), trainer.batch_sharding))
        loss = float(loss)
        if not math.isfinite(loss):
          last = checkpoints.last_step()
          raise TrainingDiverged(
              f"loss is {loss} at step {step + 1} (epoch {epoch + 1}); stopped. The last good "
              f"checkpoint is step {last} in {workdir / 'checkpoints'}."
              if last is not None else
              f"loss is {loss} at step {step + 1} (epoch {epoch + 1}); stopped before any "
              "checkpoint was written.")
        state = new_state
        seen = (batch + 1 - first_batch) * config.batch_size
        progress.update(1)
        progress.set_postfix(
            loss=f"{float(state.epoch_loss / state.epoch_count):.4f}",
            acc=f"{float(state.epoch_correct / state.epoch_count):.4f}",
            img_s=f"{seen / max(time.time() - epoch_start, 1e-9):.0f}", refresh=False)
        if int(state.step) % config.checkpoint_every_steps == 0 and batch + 1 < trainer.steps_per_epoch:
          checkpoints.save(int(state.step), state, history)
      progress.close()
      validation_loss, validation_accuracy = trainer.evaluate(state, "validation")
      record = {
          "epoch": epoch + 1, "step": int(state.step),
          "train_loss": float(state.epoch_loss / state.epoch_count),
          "train_accuracy": float(state.epoch_correct / state.epoch_count),
          "validation_loss": validation_loss, "validation_accuracy": validation_accuracy,
          # This process's share of the epoch (a resumed epoch counts from the restart).
          "wall_time_s": time.time() - epoch_start,
      }
      history.append(record)
      state = jax.device_put(state.replace(**_zero_sums()), trainer.replicated)
      checkpoints.save(int(state.step), state, history,
                       validation_accuracy if math.isfinite(validation_accuracy) else None)
      _write_json_atomically(workdir / "metrics.jsonl",
                             "".join(json.dumps(r) + "\n" for r in history))
      images, transforms = trainer.transform_step(state, task.test_data,
                                                  jnp.asarray(picture_indices, jnp.int32))
      visualize.save_epoch_picture(workdir / "pictures" / f"epoch_{epoch + 1:03d}.png",
                                   np.asarray(images), transforms, epoch + 1)
      log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                              if isinstance(v, float)))
  finally:
    checkpoints.close()

  test_loss, test_accuracy = trainer.evaluate(state, "test")
  visualize.save_animation(workdir / "pictures", workdir / "pictures" / "epochs.gif")
  residual = None
  if task.distortion_thetas is not None:
    residual, (input_geometry, model_geometry) = trainer.canonicalization(state)
    if model_geometry is not None:
      canonicalization.save_histograms(workdir / "pictures" / "canonicalization.png",
                                       input_geometry, model_geometry)
  results = {
      "task": task.name, "test_accuracy": test_accuracy, "test_error": 1 - test_accuracy,
      "test_loss": test_loss, "steps": int(state.step), "epochs": config.num_epochs,
      # Spreads over the test set: rotation_deg (circular std), log_scale (std),
      # translation_px (RMS, digit pixels); of the input and after the transformer.
      "canonicalization": residual,
      "params_sha256": params_digest(state.params),
      "config": dataclasses.asdict(config), "command": sys.argv,
      "versions": {name: _version(name) for name in ("stnjax", "jax", "jaxlib", "flax", "optax",
                                                       "orbax-checkpoint")},
      "devices": [str(d) for d in devices], "wall_time_s": time.time() - start_time,
      "training_wall_time_s": sum(r.get("wall_time_s", 0.0) for r in history),
  }
  _write_json_atomically(workdir / "results.json", json.dumps(results, indent=1))
  if residual and residual["model"]:
    log("spread of the digits' pose (input -> after the transformer): " + ", ".join(
        f"{name} {residual['input'][name]:.3g} -> {residual['model'][name]:.3g}"
        for name in residual["input"]))
  log(f"test accuracy {test_accuracy:.4f} (error {100 * (1 - test_accuracy):.2f}%), "
      f"loss {test_loss:.4f}; results in {workdir / 'results.json'}, pictures in "
      f"{workdir / 'pictures'}")
  return results


def run_program(config: Config, build: Callable, data_errors: tuple) -> int:
  """What both programs' main() does after parsing flags: returns the exit code.

  build: `() -> (task, model)`, called after the devices are known (loading data can be
  slow; a missing accelerator must fail first). Expected failures (no such accelerator,
  missing or bad data, a diverged loss) print one line and return 2.
  """
  try:
    config_lib.maybe_initialize_distributed(config)
    devices = config_lib.select_devices(config.accelerator)
    task, model = build()
    train_and_evaluate(config, task, model, devices)
  except (config_lib.AcceleratorError, TrainingDiverged, *data_errors) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


def _version(package):
  import importlib.metadata
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "absent"
