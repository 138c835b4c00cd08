"""Flax Linen spatial transformer and localization-net presets.

    class Classifier(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = stnjax.SpatialTransformer(transform="affine")(x)   # [B, H, W, C] -> same
        ...

The module owns the localization net and the regression layer; the warping is
`stnjax.transforms.warp`. At initialization the regression layer has a zero kernel
and the family's identity parameters as bias, so the module returns its input
exactly (for `out_shape` equal to the input size).
"""

from typing import Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from stnjax import _heads
from stnjax import _layers
from stnjax import transforms


class Localization(nn.Module):
  """A localization net from a layer spec (see `stnjax._layers`): `[B, H, W, C] -> [B, F]`."""
  layers: tuple = _layers.TUTORIAL
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x):
    _heads.check_input(x, type(self).__name__)
    _layers.trace(self.layers, x.shape[1:], self.padding, type(self).__name__)
    taps, convs, denses = [], 0, 0
    for kind, *args in self.layers:
      if kind == "conv":
        x = nn.Conv(args[0], (args[1], args[1]), padding=self.padding, name=f"conv_{convs}")(x)
        convs += 1
      elif kind in ("max_pool", "avg_pool"):
        pool = nn.max_pool if kind == "max_pool" else nn.avg_pool
        x = pool(x, (args[0], args[0]), strides=(args[0], args[0]), padding=self.padding)
      elif kind == "relu":
        x = nn.relu(x)
      elif kind == "tap":
        taps.append(x.reshape(x.shape[0], -1))
      elif kind == "flatten":
        x = jnp.concatenate(taps + [x.reshape(x.shape[0], -1)], axis=-1)
      elif kind == "dense":
        x = nn.Dense(args[0], name=f"dense_{denses}")(x)
        denses += 1
    return x


class TutorialLocalization(Localization):
  """PyTorch's STN tutorial (MNIST): conv 8@7x7, max-pool, ReLU, conv 10@5x5, max-pool,
  ReLU, fc 32, ReLU. Source: the PyTorch "Spatial Transformer Networks" tutorial.

  With padding="VALID" (the source's) inputs must be at least 20x20; "SAME" fits any size.
  """
  layers: tuple = _layers.TUTORIAL


class PaperMnistLocalization(Localization):
  """The paper's distorted-MNIST localization net: 2x average-pool downsampling, conv
  20@5x5, ReLU, max-pool, conv 20@5x5, ReLU, fc 20, ReLU. Source: Jaderberg et al. 2015,
  appendix. With padding="VALID" inputs must be at least 28x28.
  """
  layers: tuple = _layers.PAPER_MNIST


class IdsiaLocalization(Localization):
  """The GTSRB localization net of the ConvNets series (IDSIA-like): max-pool, conv
  5x5x100, ReLU, max-pool, conv 5x5x200, ReLU, max-pool, the two pooled stages flattened
  and concatenated (multi-scale), fc 100, ReLU. SAME padding, as in its TensorFlow source.
  """
  layers: tuple = _layers.IDSIA
  padding: str = "SAME"


class SpatialTransformer(nn.Module):
  """Localization net + regression to a transform family + sampling.

  Attributes:
    localization: any module `[B, H, W, C] -> [B, ...]` (flattened); defaults to
      `TutorialLocalization(padding="SAME")`, which fits any input size. Its parameters
      live under the transformer's `localization`, also when it was built inside
      another module's `compact` method (Flax would otherwise bind it there); so one
      module given to two transformers gives each its own copy.
    transform: a family name from `stnjax.transforms.names()` or a `Transform`.
    out_shape: `(Ho, Wo)` of the output; defaults to the input's.
    num_heads: K transformers sharing one localization net (the paper's 2x/4x ST-CNN).
    heads: with K > 1, "stack" gives `[B, K, Ho, Wo, C]`, "concat" `[B, Ho, Wo, K * C]`.
    method, padding_mode, align_corners, implementation, antialias: passed to the
      sampler (see `stnjax.sample`); `antialias=True` filters where the transform
      shrinks the input, e.g. a glimpse smaller than the region it covers.
    iterations: N > 1 refines the transform N - 1 times, as the inverse compositional
      STN (Lin & Lucey 2017): the localization net sees the input warped by the
      transform so far and regresses a correction, composed after it
      (`stnjax.compose_theta`); the output samples the input once, with the
      composition. The steps share the localization net and the regression layer.
      Matrix families and one head only.

  Call with `x` `[B, H, W, C]`; `return_transform=True` also returns a
  `TransformOutput` (params, theta or TPS grid) from the same forward pass. The params
  are also sown as `intermediates/transform_params`.
  """
  localization: Optional[nn.Module] = None
  transform: Union[str, transforms.Transform] = "affine"
  out_shape: Optional[tuple] = None
  num_heads: int = 1
  heads: str = "stack"
  method: str = "bilinear"
  padding_mode: str = "zeros"
  align_corners: bool = False
  implementation: str = "xla"
  antialias: bool = False
  iterations: int = 1

  @nn.compact
  def __call__(self, x, *, return_transform: bool = False):
    _heads.check_input(x, "SpatialTransformer")
    _heads.check_options(self.num_heads, self.heads, self.method, self.padding_mode,
                         self.implementation, self.antialias)
    family = _heads.resolve_transform(self.transform)
    _heads.check_iterations(self.iterations, family, self.num_heads)
    localization = self.localization
    if localization is None:
      localization = TutorialLocalization(padding="SAME", name="localization")
    elif isinstance(localization.parent, nn.Module) and localization.parent is not self:
      # Bound to the module that built it: the transformer takes its own copy, so that
      # a path under the transformer names every parameter it learns.
      localization = localization.clone(parent=self, name="localization")
    bias = _heads.identity_bias(family, self.num_heads)
    regression = nn.Dense(
        len(bias), kernel_init=nn.initializers.zeros,
        bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype),
        name="regression")

    def localize(image):
      features = localization(image)
      return regression(features.reshape(features.shape[0], -1))

    out, info = _heads.localize_and_warp(
        family, localize, x, iterations=self.iterations, num_heads=self.num_heads,
        heads=self.heads, out_shape=self.out_shape, method=self.method,
        padding_mode=self.padding_mode, align_corners=self.align_corners,
        implementation=self.implementation, antialias=self.antialias)
    self.sow("intermediates", "transform_params", info.params)
    return (out, info) if return_transform else out
