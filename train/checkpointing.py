"""Orbax checkpoints of the train state and the metric history, resumable after any kill.

`workdir/checkpoints` keeps the latest few (periodic and end-of-epoch saves);
`workdir/best` keeps the one with the best validation accuracy. Saves are synchronous
and orbax finalizes a step by an atomic rename, so a kill mid-save leaves the previous
steps intact. A checkpoint that cannot be restored (truncated, corrupt) is skipped with
a warning naming it, moved aside to `<step>.corrupt`, and the next older one is tried.
One that reads but holds another model's parameters (another version of the program)
is left where it is, and the run stops with `CheckpointMismatch`, naming the parameters.
"""

import pathlib
import warnings

import jax
import orbax.checkpoint as ocp


class CheckpointMismatch(Exception):
  """The workdir's checkpoint holds parameters of another model than this run's."""


def _param_shapes(tree) -> dict:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_same_params(directory: pathlib.Path, abstract_state) -> None:
  """Raises CheckpointMismatch if the saved state's parameter names or shapes differ from
  the model's; returns quietly if they match or the metadata cannot be read (corruption
  is found, and handled, by the restore)."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      saved = _param_shapes(checkpointer.metadata(directory).item_metadata["params"])
  except Exception:  # noqa: BLE001 (unreadable metadata: the restore decides)
    return
  wanted = _param_shapes(abstract_state.params)
  if saved != wanted:
    missing = sorted(f"{k} {v}" for k, v in wanted.items() if saved.get(k) != v)
    unexpected = sorted(f"{k} {v}" for k, v in saved.items() if wanted.get(k) != v)
    raise CheckpointMismatch(
        f"{directory.parent} holds another model's parameters (missing there: "
        f"{', '.join(missing[:3]) or 'none'}{' ...' if len(missing) > 3 else ''}; not in this "
        f"model: {', '.join(unexpected[:3]) or 'none'}{' ...' if len(unexpected) > 3 else ''}); "
        "it was written by another version of the model. It is left as it is: use another "
        "--workdir, or the version that wrote it to resume.")


class Checkpoints:
  """The latest checkpoints and the best one of a run."""

  def __init__(self, workdir: pathlib.Path, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.latest = ocp.CheckpointManager(workdir.resolve() / "checkpoints", options=options,
                                        item_names=("state", "history"))
    best_options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=lambda metrics: metrics["validation_accuracy"], best_mode="max")
    self.best = ocp.CheckpointManager(workdir.resolve() / "best", options=best_options,
                                      item_names=("state", "history"))

  def save(self, step: int, state, history: list, validation_accuracy=None) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              history=ocp.args.JsonSave(history))
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args, force=True)
    if validation_accuracy is not None and step not in self.best.all_steps():
      self.best.save(step, args=args, force=True,
                     metrics={"validation_accuracy": float(validation_accuracy)})

  def restore_latest(self, abstract_state):
    """`(state, history)` of the newest checkpoint that restores, or None if there is none."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      _check_same_params(pathlib.Path(self.latest.directory) / str(step) / "state",
                         abstract_state)
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), history=ocp.args.JsonRestore()))
        return restored["state"], list(restored["history"])
      except Exception as error:  # noqa: BLE001 (any failure means: not this one)
        path = pathlib.Path(self.latest.directory) / str(step)
        aside = path.with_name(f"{step}.corrupt")
        suffix = 1
        while aside.exists():
          aside, suffix = path.with_name(f"{step}.corrupt{suffix}"), suffix + 1
        if jax.process_index() == 0:  # One process moves it; all go on to the next.
          path.rename(aside)  # Kept for inspection; out of the way of new saves.
          self.latest.reload()
        warnings.warn(f"Skipping checkpoint {path}: it cannot be restored "
                      f"({type(error).__name__}: {str(error)[:200]}). Moved it to {aside}; "
                      "trying an older one.")
    return None

  def last_step(self):
    steps = self.latest.all_steps()
    return max(steps) if steps else None

  def close(self) -> None:
    self.latest.close()
    self.best.close()
