"""SpatialTransformer for Flax Linen and NNX, and the localization-net presets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stnjax
from stnjax import transforms

SHAPE = (13, 17, 2)  # Non-square, as everywhere.


def random_input(batch=3, shape=SHAPE, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (batch,) + shape), jnp.float32)


def perturbed(params, seed=1, scale=0.05):
  """Params with every leaf moved, so that the transform is far from the identity."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [leaf + scale * jax.random.normal(key, leaf.shape)
                                   for leaf, key in zip(leaves, keys)])


def nnx_twin(linen_params, **options):
  """An NNX SpatialTransformer holding the given Linen parameters."""
  model = stnjax.nnx.SpatialTransformer(SHAPE, rngs=nnx.Rngs(0), **options)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, linen_params)
  nnx.update(model, state)
  return model


@pytest.mark.parametrize("name", transforms.names(dims=2))
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_identity_at_init_for_every_family_in_both_apis(name, method):
  x = random_input()
  linen_model = stnjax.SpatialTransformer(transform=name, method=method)
  variables = linen_model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(linen_model.apply(variables, x), x)
  nnx_model = stnjax.nnx.SpatialTransformer(SHAPE, transform=name, method=method,
                                            rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(nnx_model(x), x)


def test_linen_and_nnx_agree_for_the_same_parameters():
  x = random_input()
  for options in ({}, {"transform": "tps", "out_shape": (9, 11)},
                  {"transform": "projective", "num_heads": 2, "heads": "concat"},
                  {"iterations": 2, "out_shape": (9, 11)},
                  {"transform": "projective", "iterations": 3}):
    linen_model = stnjax.SpatialTransformer(**options)
    params = perturbed(linen_model.init(jax.random.key(0), x)["params"])
    expected = linen_model.apply({"params": params}, x)
    assert not np.allclose(expected[:, :1], x[:, :1] if expected.shape == x.shape else 0)
    np.testing.assert_allclose(nnx_twin(params, **options)(x), expected, atol=1e-6)


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_iterations_refine_the_transform_from_the_warped_input(transform):
  x = random_input()
  model = stnjax.SpatialTransformer(transform=transform, iterations=3, out_shape=(9, 11))
  one_step = stnjax.SpatialTransformer(transform=transform)
  variables = model.init(jax.random.key(0), x)
  # The steps share one localization net and regression: the parameters of one step.
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, one_step.init(jax.random.key(0), x)))
  np.testing.assert_array_equal(
      stnjax.SpatialTransformer(transform=transform, iterations=3).apply(variables, x), x)
  params = perturbed(variables["params"])
  out, info = model.apply({"params": params}, x, return_transform=True)
  family = transforms.get(transform)
  assert info.params.shape == (3, 3, family.num_params)
  # Each step is one step's transformer applied to the input warped so far.
  theta, glimpse = None, x
  for step in range(3):
    _, step_info = one_step.apply({"params": params}, glimpse, return_transform=True)
    np.testing.assert_allclose(info.params[:, step], step_info.params, atol=1e-5)
    theta = step_info.theta if theta is None else stnjax.compose_theta(theta, step_info.theta)
    glimpse = stnjax.sample(theta, x)
  assert not np.allclose(info.params[:, 1], info.params[:, 0], atol=1e-3)
  np.testing.assert_allclose(info.theta, theta, atol=1e-5)
  np.testing.assert_allclose(out, stnjax.sample(theta, x, (9, 11)), atol=1e-5)


def test_gradients_reach_the_localization_net_through_the_second_step():
  x = random_input()
  model = stnjax.SpatialTransformer(iterations=2)
  params = perturbed(model.init(jax.random.key(0), x)["params"])
  # A loss on the second step's correction alone reaches the shared net.
  correction = lambda p: model.apply({"params": p}, x, return_transform=True)[1].params[:, 1]
  grads = jax.grad(lambda p: (correction(p) ** 2).sum())(params)
  for layer in ("conv_0", "conv_1", "dense_0"):
    assert np.abs(grads["localization"][layer]["kernel"]).max() > 0, layer


def classification_loss(out, labels):
  logits = out.reshape(out.shape[0], -1)[:, :4] * 10
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_gradients_reach_the_localization_net():
  x = random_input()
  target = jnp.roll(x, 1, axis=2)
  model = stnjax.SpatialTransformer(transform="affine")
  params = model.init(jax.random.key(0), x)["params"]
  loss = lambda p: ((model.apply({"params": p}, x) - target) ** 2).mean()
  grads = jax.grad(loss)(params)
  # First step: the regression layer (the net's last layer) learns; its zero kernel
  # shields the layers below, exactly as with the identity init of the paper.
  assert np.all(np.abs(grads["regression"]["bias"]) > 0)
  assert np.abs(grads["regression"]["kernel"]).max() > 0
  optimizer = optax.sgd(1e-2)
  updates, _ = optimizer.update(grads, optimizer.init(params))
  grads = jax.grad(loss)(optax.apply_updates(params, updates))
  for layer in ("conv_0", "conv_1", "dense_0"):
    assert np.abs(grads["localization"][layer]["kernel"]).max() > 0, layer


def test_nnx_gradients_reach_the_localization_net():
  x, labels = random_input(), jnp.array([0, 1, 2])
  model = stnjax.nnx.SpatialTransformer(SHAPE, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: classification_loss(m(x), labels))(model)
  assert np.all(np.abs(grads.regression.bias[...]) > 0)


def test_batch_size_can_change_under_jit():
  model = stnjax.SpatialTransformer(transform="similarity")
  params = perturbed(model.init(jax.random.key(0), random_input(batch=1))["params"])
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  for batch in (1, 4, 7):
    x = random_input(batch=batch, seed=batch)
    out = apply(params, x)
    assert out.shape == x.shape
    # Each example is transformed on its own: no state carried across the batch.
    # Within a few float32 roundings of the pixel values (< 1): a batch of one and a
    # bigger batch are compiled apart, and may fuse their sums otherwise.
    np.testing.assert_allclose(out[:1], apply(params, x[:1]), atol=4e-6)
  nnx_model = nnx_twin(params, transform="similarity")
  nnx_apply = nnx.jit(lambda m, x: m(x))
  for batch in (2, 5):
    x = random_input(batch=batch)
    np.testing.assert_allclose(nnx_apply(nnx_model, x), apply(params, x), atol=1e-6)


def test_linen_vmap_shares_one_transformer_across_an_axis():
  vmapped = nn.vmap(stnjax.SpatialTransformer, variable_axes={"params": None},
                    split_rngs={"params": False}, in_axes=1, out_axes=1)(transform="affine")
  x = jnp.stack([random_input(seed=0), random_input(seed=1)], axis=1)  # [B, 2, H, W, C]
  variables = vmapped.init(jax.random.key(0), x)
  params = perturbed(variables["params"])
  out = vmapped.apply({"params": params}, x)
  single = stnjax.SpatialTransformer(transform="affine")
  # Within a few float32 roundings of the pixel values (< 1): the vmapped and the single
  # program are compiled apart (jax 0.12 fuses the localization net's sums otherwise).
  np.testing.assert_allclose(out[:, 1], single.apply({"params": params}, x[:, 1]), atol=4e-6)


def test_nnx_vmap_over_an_axis():
  model = stnjax.nnx.SpatialTransformer(SHAPE, rngs=nnx.Rngs(0))
  x = jnp.stack([random_input(seed=0), random_input(seed=1)])  # [2, B, H, W, C]
  out = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, x)
  np.testing.assert_array_equal(out, x)


def test_works_on_feature_maps_inside_a_network():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(6, (3, 3))(x))
      x = stnjax.SpatialTransformer(transform="scale_translation", out_shape=(5, 6))(x)
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  x = random_input()
  variables = Net().init(jax.random.key(0), x)
  assert Net().apply(variables, x).shape == (3, 3)
  grads = jax.grad(lambda v: Net().apply(v, x).sum())(variables)
  assert np.abs(grads["params"]["Conv_0"]["kernel"]).max() > 0


def test_the_transformer_owns_a_localization_net_built_in_the_parent():
  """Built in the parent's compact method, Flax binds a module to the parent; the
  transformer keeps its parameters under its own `localization`, once per transformer."""
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      shared = stnjax.linen.TutorialLocalization(padding="SAME")
      x = stnjax.SpatialTransformer(localization=shared, name="first")(x)
      return stnjax.SpatialTransformer(localization=shared, name="second")(x)

  params = Net().init(jax.random.key(0), random_input())["params"]
  assert sorted(params) == ["first", "second"]
  for name in params:
    assert sorted(params[name]) == ["localization", "regression"]
    assert "conv_0" in params[name]["localization"]


@pytest.mark.parametrize("heads,shape", [("stack", (3, 4, 9, 11, 2)), ("concat", (3, 9, 11, 8))])
def test_multi_head_shapes_and_heads_diverge_after_a_step(heads, shape):
  x = random_input()
  model = stnjax.SpatialTransformer(num_heads=4, heads=heads, out_shape=(9, 11))
  params = model.init(jax.random.key(0), x)["params"]
  out, info = model.apply({"params": params}, x, return_transform=True)
  assert out.shape == shape and info.theta.shape == (3, 4, 2, 3)
  # Heads start equal (identity) and must be free to differ once trained.
  target = random_input(seed=9)[:, :9, :11]
  def loss(p):
    warped = model.apply({"params": p}, x)
    heads_first = warped if heads == "stack" else jnp.moveaxis(
        warped.reshape(warped.shape[:-1] + (4, 2)), -2, 1)
    return ((heads_first[:, 0] - target) ** 2).sum() - ((heads_first[:, 1] - target) ** 2).sum()
  grads = jax.grad(loss)(params)
  params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  _, info = model.apply({"params": params}, x, return_transform=True)
  assert np.abs(info.theta[:, 0] - info.theta[:, 1]).max() > 1e-4


def test_transform_is_returned_and_sown_without_a_second_pass():
  x = random_input()
  model = stnjax.SpatialTransformer(transform="tps", out_shape=(6, 8))
  variables = model.init(jax.random.key(0), x)
  (out, info), state = model.apply(variables, x, return_transform=True,
                                   mutable=["intermediates"])
  assert info.theta is None and info.grid.shape == (3, 6, 8, 2)
  np.testing.assert_array_equal(state["intermediates"]["transform_params"][0], info.params)
  np.testing.assert_allclose(info.grid, stnjax.affine_grid(
      jnp.broadcast_to(jnp.eye(2, 3), (3, 2, 3)), (6, 8)), atol=1e-6)
  affine = stnjax.nnx.SpatialTransformer(SHAPE, rngs=nnx.Rngs(0))
  out, info = affine(x, return_transform=True)
  np.testing.assert_array_equal(info.theta, jnp.broadcast_to(jnp.eye(2, 3), (3, 2, 3)))


@pytest.mark.parametrize("linen_preset,nnx_preset,shape,features", [
    (stnjax.linen.TutorialLocalization, stnjax.nnx.TutorialLocalization, (28, 28, 1), 32),
    (stnjax.linen.PaperMnistLocalization, stnjax.nnx.PaperMnistLocalization, (42, 42, 1), 20),
    (stnjax.linen.IdsiaLocalization, stnjax.nnx.IdsiaLocalization, (32, 32, 3), 100),
])
def test_presets(linen_preset, nnx_preset, shape, features):
  x = random_input(batch=2, shape=shape)
  variables = linen_preset().init(jax.random.key(0), x)
  out = linen_preset().apply(variables, x)
  assert out.shape == (2, features)
  twin = nnx_preset(shape, rngs=nnx.Rngs(0))
  assert twin.num_features == features
  state = nnx.state(twin, nnx.Param)
  nnx.replace_by_pure_dict(state, variables["params"])
  nnx.update(twin, state)
  np.testing.assert_allclose(twin(x), out, atol=1e-5)
  model = stnjax.SpatialTransformer(localization=linen_preset())
  np.testing.assert_array_equal(model.apply(model.init(jax.random.key(0), x), x), x)


def test_idsia_preset_concatenates_two_scales():
  variables = stnjax.linen.IdsiaLocalization().init(jax.random.key(0), random_input(1, (32, 32, 3)))
  # 32 -> pool 16 -> conv -> pool 8 (8*8*100) and -> conv -> pool 4 (4*4*200).
  assert variables["params"]["dense_0"]["kernel"].shape == (8 * 8 * 100 + 4 * 4 * 200, 100)


@pytest.mark.parametrize("call,message", [
    (lambda: stnjax.linen.TutorialLocalization().init(jax.random.key(0), random_input(1, (12, 12, 1))),
     r"needs a larger input than \(12, 12, 1\).*padding='SAME'"),
    (lambda: stnjax.nnx.PaperMnistLocalization((20, 20, 1), rngs=nnx.Rngs(0)),
     "needs a larger input"),
    (lambda: stnjax.SpatialTransformer().init(jax.random.key(0), jnp.zeros((13, 17, 2))),
     r"takes \[B, H, W, C\] inputs, got \(13, 17, 2\)"),
    (lambda: stnjax.SpatialTransformer(transform="shear").init(jax.random.key(0), random_input()),
     "Unknown transform family 'shear'"),
    (lambda: stnjax.SpatialTransformer(heads="sum").init(jax.random.key(0), random_input()),
     r"heads must be one of \('stack', 'concat'\), got 'sum'"),
    (lambda: stnjax.nnx.SpatialTransformer(SHAPE, num_heads=0, rngs=nnx.Rngs(0)),
     "num_heads must be a positive int"),
    (lambda: stnjax.nnx.SpatialTransformer(SHAPE, rngs=nnx.Rngs(0))(random_input(shape=(13, 16, 2))),
     r"built for inputs \[B, 13, 17, 2\], got \(3, 13, 16, 2\)"),
    (lambda: stnjax.SpatialTransformer(iterations=0).init(jax.random.key(0), random_input()),
     "iterations must be a positive int, got 0"),
    (lambda: stnjax.nnx.SpatialTransformer(SHAPE, transform="tps", iterations=2,
                                           rngs=nnx.Rngs(0)),
     "iterations > 1 composes matrices; the 'tps' family has none"),
    (lambda: stnjax.SpatialTransformer(iterations=2, num_heads=2).init(jax.random.key(0),
                                                                       random_input()),
     "iterations > 1 refines one transform; got num_heads=2"),
    (lambda: stnjax.linen.Localization(padding="same").init(jax.random.key(0), random_input()),
     "padding must be 'VALID' or 'SAME', got 'same'"),
])
def test_bad_configuration_messages(call, message):
  with pytest.raises((ValueError, TypeError), match=message):
    call()
