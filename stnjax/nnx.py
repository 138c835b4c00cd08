"""Flax NNX spatial transformer and localization-net presets: twins of `stnjax.linen`.

::

    stn = stnjax.nnx.SpatialTransformer((28, 28, 1), transform="affine", rngs=nnx.Rngs(0))
    y = stn(x)  # x: [B, 28, 28, 1]

NNX builds parameters eagerly, so modules take the input shape `(H, W, C)`. Parameter
names and layouts match the Linen modules: the same values give the same outputs.
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from stnjax import _heads
from stnjax import _layers
from stnjax import transforms


class Localization(nnx.Module):
  """A localization net from a layer spec: `[B, H, W, C] -> [B, F]`.

  The spec is as in `stnjax.linen.Localization`; the parameters (`conv_0, ...,
  dense_0, ...`) have the Linen twin's names and layouts.

  Args:
    input_shape: `(H, W, C)` of the inputs; calls with another shape raise.
    layers: the layer spec; defaults to `TutorialLocalization`'s.
    padding: `"VALID"` (default) or `"SAME"`, for the convolutions and pools.
    rngs: for parameter initialization.

  Attributes:
    num_features: the length F of the output.

  Raises:
    ValueError: at construction, for a padding other than "VALID" or "SAME", an
      unknown layer kind, or (with "VALID") an input too small for the spec; when
      called, for an input that is not `[B, *input_shape]`.

  Example:
    >>> net = Localization((5, 5, 1), layers=(("conv", 4, 3), ("relu",), ("flatten",),
    ...                                       ("dense", 6)), rngs=nnx.Rngs(0))
    >>> net.num_features, net(jnp.ones((2, 5, 5, 1))).shape
    (6, (2, 6))
  """

  def __init__(self, input_shape, *, layers=_layers.TUTORIAL, padding="VALID",
               rngs: nnx.Rngs):
    name = type(self).__name__
    in_features, self.num_features = _layers.trace(layers, tuple(input_shape), padding, name)
    self.input_shape, self.spec, self.padding = tuple(input_shape), tuple(layers), padding
    # Attributes conv_0, conv_1, ..., dense_0, ...: the parameter paths of the Linen twin.
    widths, convs, denses = iter(in_features), 0, 0
    for kind, *args in layers:
      if kind == "conv":
        setattr(self, f"conv_{convs}", nnx.Conv(
            next(widths), args[0], (args[1], args[1]), padding=padding, rngs=rngs))
        convs += 1
      elif kind == "dense":
        setattr(self, f"dense_{denses}", nnx.Linear(next(widths), args[0], rngs=rngs))
        denses += 1

  def __call__(self, x):
    _heads.check_input(x, type(self).__name__)
    if tuple(x.shape[1:]) != self.input_shape:
      raise ValueError(f"{type(self).__name__} was built for inputs [B, "
                       f"{', '.join(map(str, self.input_shape))}], got {tuple(x.shape)}.")
    taps, convs, denses = [], 0, 0
    for kind, *args in self.spec:
      if kind == "conv":
        x = getattr(self, f"conv_{convs}")(x)
        convs += 1
      elif kind in ("max_pool", "avg_pool"):
        pool = nnx.max_pool if kind == "max_pool" else nnx.avg_pool
        x = pool(x, (args[0], args[0]), strides=(args[0], args[0]), padding=self.padding)
      elif kind == "relu":
        x = jax.nn.relu(x)
      elif kind == "tap":
        taps.append(x.reshape(x.shape[0], -1))
      elif kind == "flatten":
        x = jnp.concatenate(taps + [x.reshape(x.shape[0], -1)], axis=-1)
      elif kind == "dense":
        x = getattr(self, f"dense_{denses}")(x)
        denses += 1
    return x


class TutorialLocalization(Localization):
  """PyTorch's STN tutorial net (32 features); see `stnjax.linen.TutorialLocalization`."""

  def __init__(self, input_shape, *, padding="VALID", rngs: nnx.Rngs):
    super().__init__(input_shape, layers=_layers.TUTORIAL, padding=padding, rngs=rngs)


class PaperMnistLocalization(Localization):
  """The paper's distorted-MNIST net (20 features); see `stnjax.linen.PaperMnistLocalization`."""

  def __init__(self, input_shape, *, padding="VALID", rngs: nnx.Rngs):
    super().__init__(input_shape, layers=_layers.PAPER_MNIST, padding=padding, rngs=rngs)


class IdsiaLocalization(Localization):
  """The IDSIA-like GTSRB net (100 features); see `stnjax.linen.IdsiaLocalization`."""

  def __init__(self, input_shape, *, padding="SAME", rngs: nnx.Rngs):
    super().__init__(input_shape, layers=_layers.IDSIA, padding=padding, rngs=rngs)


class SpatialTransformer(nnx.Module):
  """Localization net + regression to a transform family + sampling (Flax NNX).

  The twin of `stnjax.linen.SpatialTransformer`: the same options, parameter names
  (`localization`, `regression`) and outputs. Call with `x` `[B, H, W, C]`; it
  returns the warped `[B, Ho, Wo, C]` (with K > 1 heads, as `heads` says), and with
  `return_transform=True` also the `stnjax.TransformOutput` (params, theta or TPS grid)
  from the same forward pass. At initialization it returns its input exactly.

  Args:
    input_shape: `(H, W, C)` of the inputs.
    localization: any NNX module `[B, H, W, C] -> [B, ...]`; defaults to
      `TutorialLocalization(input_shape, padding="SAME")`.
    transform: a 2-D family name or a `stnjax.transforms.Transform`; default "affine".
    out_shape: `(Ho, Wo)` of the output; defaults to the input's.
    num_heads: K transformers sharing one localization net; default 1.
    heads: with K > 1, "stack" (default) gives `[B, K, Ho, Wo, C]`, "concat"
      `[B, Ho, Wo, K * C]`.
    method: the sampler's interpolation, as in `stnjax.sample`; default "bilinear".
    padding_mode: what reads beyond the input see, as in `stnjax.sample`; default
      "zeros".
    align_corners: as in `stnjax.sample`; default False.
    implementation: "xla" (default) or "cpu_kernel", as in `stnjax.sample`.
    antialias: filter where the transform shrinks the input, as in `stnjax.sample`;
      default False.
    iterations: N > 1 refines the transform N - 1 times (the inverse compositional
      STN), as in `stnjax.linen.SpatialTransformer`; default 1.
    rngs: for parameter initialization.

  Raises:
    ValueError: at construction, for an unknown family name, a volume family or an
      invalid option (as in the Linen module); when called, for an input that is not
      `[B, H, W, C]`.
    TypeError: at construction, for a `transform` that is neither a name nor a
      `Transform`, or an `antialias` that is not a bool.

  Example:
    >>> stn = SpatialTransformer((12, 12, 1), transform="scale_translation",
    ...                          rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 12, 12, 1))
    >>> y, info = stn(x, return_transform=True)
    >>> y.shape, info.params.shape, info.theta.shape
    ((2, 12, 12, 1), (2, 3), (2, 2, 3))
    >>> bool((y == x).all())  # At initialization, the identity.
    True
  """

  def __init__(self, input_shape, *, localization: Optional[nnx.Module] = None,
               transform: Union[str, transforms.Transform] = "affine", out_shape=None,
               num_heads: int = 1, heads: str = "stack", method: str = "bilinear",
               padding_mode: str = "zeros", align_corners: bool = False,
               implementation: str = "xla", antialias: bool = False, iterations: int = 1,
               rngs: nnx.Rngs):
    _heads.check_options(num_heads, heads, method, padding_mode, implementation, antialias)
    self.family = _heads.resolve_transform(transform)
    _heads.check_iterations(iterations, self.family, num_heads)
    self.iterations = iterations
    self.out_shape, self.num_heads, self.heads = out_shape, num_heads, heads
    self.method, self.padding_mode, self.align_corners = method, padding_mode, align_corners
    self.implementation, self.antialias = implementation, antialias
    self.localization = localization or TutorialLocalization(input_shape, padding="SAME",
                                                             rngs=rngs)
    features = jax.eval_shape(self.localization, jnp.zeros((1,) + tuple(input_shape)))
    bias = _heads.identity_bias(self.family, num_heads)
    self.regression = nnx.Linear(
        features.size, len(bias), kernel_init=nnx.initializers.zeros,
        bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype), rngs=rngs)

  def __call__(self, x, *, return_transform: bool = False):
    _heads.check_input(x, "SpatialTransformer")

    def localize(image):
      features = self.localization(image)
      return self.regression(features.reshape(features.shape[0], -1))

    out, info = _heads.localize_and_warp(
        self.family, localize, x, iterations=self.iterations, num_heads=self.num_heads,
        heads=self.heads, out_shape=self.out_shape, method=self.method,
        padding_mode=self.padding_mode, align_corners=self.align_corners,
        implementation=self.implementation, antialias=self.antialias)
    return (out, info) if return_transform else out
