"""Helpers for the training-program tests: read back what a run saved."""

import jax
import numpy as np
import orbax.checkpoint as ocp


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy in float64, written out."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels]


def restore_state(directory):
  """A saved TrainState as a dict of arrays, on this process's first device (whatever
  devices the run that saved it had)."""
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(directory).item_metadata
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          saved)
    return checkpointer.restore(directory, target)
