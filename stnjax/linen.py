"""Flax Linen spatial transformer and localization-net presets.

A `SpatialTransformer` goes in a model as any Linen layer does::

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
  """A localization net from a layer spec: `[B, H, W, C] -> [B, F]`.

  The spec is a tuple of layers, each a tuple `(kind, *args)`: `("conv", features,
  kernel)` (a kernel x kernel convolution), `("max_pool", window)` and
  `("avg_pool", window)` (stride = window), `("relu",)`, `("tap",)` (keep the current
  maps for a multi-scale concat), `("flatten",)` (flatten, after every tapped map) and
  `("dense", features)`. Parameters are named `conv_0, conv_1, ..., dense_0, ...`, as
  in the NNX twin `stnjax.nnx.Localization`.

  Attributes:
    layers: the layer spec; defaults to `TutorialLocalization`'s.
    padding: `"VALID"` (default) or `"SAME"`, for the convolutions and pools.

  Raises:
    ValueError: when called, for an input that is not `[B, H, W, C]`, a padding other
      than "VALID" or "SAME", an unknown layer kind, or (with "VALID") an input too
      small for the spec.

  Example:
    >>> import jax
    >>> net = Localization(layers=(("conv", 4, 3), ("relu",), ("flatten",), ("dense", 6)))
    >>> x = jnp.ones((2, 5, 5, 1))
    >>> net.apply(net.init(jax.random.key(0), x), x).shape
    (2, 6)
  """
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
  """PyTorch's STN tutorial localization net (MNIST): 32 features.

  Conv 8@7x7, max-pool, ReLU, conv 10@5x5, max-pool, ReLU, fc 32, ReLU. Source: the
  PyTorch "Spatial Transformer Networks" tutorial. With padding="VALID" (the
  source's) inputs must be at least 20x20; "SAME" fits any size.
  """
  layers: tuple = _layers.TUTORIAL


class PaperMnistLocalization(Localization):
  """The paper's distorted-MNIST localization net: 20 features.

  2x average-pool downsampling, conv 20@5x5, ReLU, max-pool, conv 20@5x5, ReLU, fc 20,
  ReLU. Source: Jaderberg et al. 2015, appendix. With padding="VALID" inputs must be
  at least 28x28.
  """
  layers: tuple = _layers.PAPER_MNIST


class IdsiaLocalization(Localization):
  """The GTSRB localization net of the ConvNets series (IDSIA-like): 100 features.

  Max-pool, conv 5x5x100, ReLU, max-pool, conv 5x5x200, ReLU, max-pool, the two pooled
  stages flattened and concatenated (multi-scale), fc 100, ReLU. SAME padding, as in
  its TensorFlow source.
  """
  layers: tuple = _layers.IDSIA
  padding: str = "SAME"


class SpatialTransformer(nn.Module):
  """Localization net + regression to a transform family + sampling (Flax Linen).

  Call with `x` `[B, H, W, C]` (float); it returns the warped `[B, Ho, Wo, C]` in x's
  dtype (with K > 1 heads, see `heads`). `return_transform=True` also returns a
  `stnjax.TransformOutput` (params, theta or TPS grid) from the same forward pass. The
  params are also sown as `intermediates/transform_params`.

  The regression layer (`regression`, a Dense layer from the localization net's
  flattened features to the family's params) starts with a zero kernel and the
  family's identity params as bias, so at initialization the module returns its input
  exactly (for `out_shape` equal to the input size).

  Attributes:
    localization: any module `[B, H, W, C] -> [B, ...]` (flattened); defaults to
      `TutorialLocalization(padding="SAME")`, which fits any input size. Its parameters
      live under the transformer's `localization`, also when it was built inside
      another module's `compact` method (Flax would otherwise bind it there); so one
      module given to two transformers gives each its own copy.
    transform: a 2-D family name from `stnjax.transforms.names(dims=2)` or a
      `stnjax.transforms.Transform`; default "affine".
    out_shape: `(Ho, Wo)` of the output; defaults to the input's.
    num_heads: K transformers sharing one localization net (the paper's 2x/4x ST-CNN);
      default 1.
    heads: with K > 1, "stack" (default) gives `[B, K, Ho, Wo, C]`, "concat"
      `[B, Ho, Wo, K * C]`.
    method: the sampler's interpolation, as in `stnjax.sample`; default "bilinear".
    padding_mode: what reads beyond the input see, as in `stnjax.sample`; default
      "zeros".
    align_corners: as in `stnjax.sample`; default False.
    implementation: "xla" (default) or "cpu_kernel", as in `stnjax.sample`.
    antialias: filter where the transform shrinks the input, e.g. a glimpse smaller
      than the region it covers, as in `stnjax.sample`; default False.
    iterations: N > 1 refines the transform N - 1 times, as the inverse compositional
      STN (Lin & Lucey 2017): the localization net sees the input warped by the
      transform so far and regresses a correction, composed after it
      (`stnjax.compose_theta`); the output samples the input once, with the
      composition. The steps share the localization net and the regression layer.
      Matrix families and one head only. Default 1.

  Raises:
    ValueError: when called, for an input that is not `[B, H, W, C]`, an unknown family
      name or a volume family, or an option that is invalid (as `stnjax.sample` checks
      them; `num_heads` or `iterations` not a positive int, `heads` neither "stack"
      nor "concat", `iterations > 1` with `tps` or with several heads).
    TypeError: when called, for a `transform` that is neither a name nor a
      `Transform`, or an `antialias` that is not a bool.

  Example:
    >>> import jax
    >>> stn = SpatialTransformer(transform="scale_translation")
    >>> x = jnp.ones((2, 12, 12, 1))
    >>> variables = stn.init(jax.random.key(0), x)
    >>> y, info = stn.apply(variables, x, return_transform=True)
    >>> y.shape, info.params.shape, info.theta.shape
    ((2, 12, 12, 1), (2, 3), (2, 2, 3))
    >>> bool((y == x).all())  # At initialization, the identity.
    True
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
