"""Pieces of the training loop: optimizer partition, epoch order, parameter labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import models
from train import trainer
from train.config import Config

pytestmark = pytest.mark.usefixtures("fast_training_compiles")


def test_localization_nets_get_their_learning_rate_scale():
  config = Config(optimizer="sgd", momentum=0.0, learning_rate=1.0, loc_lr_scale=0.1,
                  schedule="constant")
  params = {"stn_0": {"regression": {"bias": jnp.ones(3)}}, "Dense_0": {"bias": jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  optimizer = trainer.make_optimizer(config, steps_per_epoch=10)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates["stn_0"]["regression"]["bias"], -0.1)
  np.testing.assert_allclose(updates["Dense_0"]["bias"], -1.0)


def test_every_localization_parameter_of_the_models_gets_the_scale():
  """The localization nets' convolutions and dense layers, not only the regression, are
  under `stn_*` (a net built in the model's own method would otherwise be bound there)."""
  for model, shape in ((models.DigitCnn(stn="affine"), (1, 28, 28, 1)),
                       (models.DigitCnn(stn="affine", localization="large"), (1, 28, 28, 1)),
                       (models.IdsiaNet(stn="affine", num_transformers=2), (1, 32, 32, 3))):
    params = model.init(jax.random.key(0), jnp.ones(shape))["params"]
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: models.is_localization(path), params)
    assert not any(jax.tree.leaves(
        {name: tree for name, tree in labels.items() if not name.startswith("stn_")}))
    for name in [n for n in params if n.startswith("stn_")]:
      assert sorted(params[name]) == ["localization", "regression"]
      assert all(jax.tree.leaves(labels[name]))
      assert "conv_0" in params[name]["localization"]


def test_is_localization_reads_the_module_path():
  params = {"stn_1": {"localization": {"conv_0": {"kernel": 0}}}, "Conv_0": {"kernel": 0}}
  labels = jax.tree_util.tree_map_with_path(lambda path, _: models.is_localization(path), params)
  assert labels == {"stn_1": {"localization": {"conv_0": {"kernel": True}}},
                    "Conv_0": {"kernel": False}}


def test_piecewise_schedule_drops_tenfold_twice():
  config = Config(optimizer="sgd", momentum=0.0, learning_rate=1.0, schedule="piecewise",
                  num_epochs=4)
  params = {"w": jnp.zeros(())}
  optimizer = trainer.make_optimizer(config, steps_per_epoch=10)
  state = optimizer.init(params)
  steps = []
  for _ in range(40):
    updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
    steps.append(-float(updates["w"]))
  np.testing.assert_allclose([steps[0], steps[25], steps[35]], [1.0, 0.1, 0.01], rtol=1e-6)
