"""Runs every ```python block of README.md, in order, in one namespace, and checks what
the blocks compute against values worked out independently."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
LOG_10 = float(np.log(10.0))


@pytest.fixture(scope="module")
def readme():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 3, "expected the quick start and the Linen and NNX examples"
  namespace = {"__name__": "readme"}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
  return namespace


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy in float64, written out."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean())


def test_quick_start(readme):
  stnjax, theta = readme["stnjax"], readme["theta"]
  np.testing.assert_array_equal(readme["out"], np.zeros((8, 28, 28, 1)))
  np.testing.assert_array_equal(readme["grads"], np.zeros((8, 2, 3)))
  # The same calls on a random image, where a wrong sampler shows.
  image = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(stnjax.sample(theta, image), image)  # "identity: exact copy"
  # Identity at half the size reads between each 2x2 block of pixels: their mean.
  pooled = image.reshape(8, 14, 2, 14, 2, 1).mean((2, 4))
  np.testing.assert_allclose(stnjax.sample(theta, image, (14, 14)), pooled, rtol=1e-6, atol=1e-6)
  glimpses = stnjax.sample(jnp.tile(theta[:, None], (1, 4, 1, 1)), image)
  np.testing.assert_array_equal(glimpses, np.broadcast_to(image[:, None], (8, 4, 28, 28, 1)))
  # The translation gradient against a forward difference (a shift of 0.28 px stays
  # within one bilinear cell, where the output is linear in the shift).
  grads = jax.grad(lambda t: stnjax.sample(t, image).sum())(theta)
  eps = 0.02
  base = np.asarray(stnjax.sample(theta, image), np.float64).sum((1, 2, 3))
  for row in range(2):
    shifted = np.asarray(stnjax.sample(theta.at[:, row, 2].add(eps), image), np.float64)
    np.testing.assert_allclose(grads[:, row, 2], (shifted.sum((1, 2, 3)) - base) / eps,
                               rtol=1e-3)
  assert np.abs(grads[:, :, 2]).min() > 0.1  # Non-zero at the identity, as the README says.


def test_volume_example(readme):
  volumes = np.arange(2 * 4 * 6 * 8.0).reshape(2, 4, 6, 8, 1)
  np.testing.assert_array_equal(readme["volumes"], volumes)
  blocks = volumes.reshape(2, 2, 2, 3, 2, 4, 2, 1).mean((2, 4, 6))
  np.testing.assert_allclose(readme["halved"], blocks, rtol=1e-6)
  np.testing.assert_array_equal(readme["unmoved"], volumes)
  np.testing.assert_array_equal(readme["shifted"][..., :-1, :], volumes[..., 1:, :])
  np.testing.assert_array_equal(readme["shifted"][..., -1, :], 0.0)


def test_linen_example(readme):
  model, train_step, labels = readme["model"], readme["train_step"], readme["labels"]
  # Zero images give zero logits (biases start at zero): the loss before the step is ln 10.
  np.testing.assert_allclose(float(readme["loss"]), LOG_10, rtol=1e-6)
  # One Adam step moves only the last bias (no other parameter sees a non-zero input or
  # gradient), by the learning rate, towards the batch's labels.
  bias = np.asarray(readme["params"]["Dense_1"]["bias"])
  np.testing.assert_allclose(bias, [1e-3] * 4 + [-1e-3] * 6, rtol=1e-4)
  logits = model.apply({"params": readme["params"]}, readme["images"])
  np.testing.assert_allclose(logits, np.broadcast_to(bias, (4, 10)), atol=1e-7)
  assert cross_entropy(logits, labels) < LOG_10 - 1e-3
  # On random images: train_step returns the loss of the parameters it was given, and
  # ten steps on one batch lower it.
  images = jnp.asarray(np.random.default_rng(1).random((4, 28, 28, 1), np.float32))
  params, opt_state = readme["params"], readme["opt_state"]
  losses = []
  for _ in range(10):
    expected = cross_entropy(model.apply({"params": params}, images), labels)
    params, opt_state, loss = train_step(params, opt_state, images, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_nnx_example(readme):
  nnx_model, labels = readme["nnx_model"], readme["labels"]
  np.testing.assert_allclose(float(readme["nnx_loss"]), LOG_10, rtol=1e-6)
  assert cross_entropy(nnx_model(readme["images"]), labels) < LOG_10 - 1e-3
  images = jnp.asarray(np.random.default_rng(1).random((4, 28, 28, 1), np.float32))
  losses = []
  for _ in range(10):
    expected = cross_entropy(nnx_model(images), labels)
    loss = readme["nnx_train_step"](nnx_model, readme["nnx_optimizer"], images, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
