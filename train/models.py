"""Classifiers with and without spatial transformers in front (Flax Linen).

Spatial transformers are submodules named `stn_0`, `stn_1`, ...; the optimizer gives
their parameters the localization learning-rate scale (see `is_localization`).
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

import stnjax


def is_localization(path) -> bool:
  """True for parameters inside a spatial transformer (localization net + regression)."""
  return any(str(getattr(p, "key", p)).startswith("stn_") for p in path)


# The localization nets DigitCnn can put in its transformer (layer specs, stnjax._layers).
DIGIT_LOCALIZATIONS = {
    # The paper's: conv 20@5x5 x2 on a 2x downsampled input, fc 20.
    "paper": stnjax.linen.PaperMnistLocalization.layers,
    # Full resolution, wider: it tells which way is up where the paper's cannot (R).
    "large": (("conv", 32, 5), ("relu",), ("max_pool", 2),
              ("conv", 64, 5), ("relu",), ("max_pool", 2),
              ("flatten",), ("dense", 64), ("relu",)),
}


class DigitCnn(nn.Module):
  """The paper's CNN baseline for distorted MNIST, optionally behind an ST (ST-CNN).

  Two convolution + max-pooling stages (32@9x9, 64@7x7, SAME) and a 10-way softmax
  classifier on a 128-unit hidden layer. With `stn`, a spatial transformer of that
  family (its localization net from DIGIT_LOCALIZATIONS; "paper": conv 20@5x5 x2 on a
  2x downsampled input, fc 20) warps the input first, to `stn_out_size` (default: the
  input's size), with antialiased sampling if `antialias`, in `stn_iterations` steps
  (`stnjax.SpatialTransformer`'s `iterations`).
  """
  num_classes: int = 10
  stn: Optional[str] = None
  stn_out_size: Optional[int] = None
  antialias: bool = False
  localization: str = "paper"
  stn_iterations: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False, return_transform: bool = False):
    del train  # No dropout or batch norm.
    transform = None
    if self.stn:
      x, transform = stnjax.SpatialTransformer(
          localization=stnjax.linen.Localization(
              layers=DIGIT_LOCALIZATIONS[self.localization], padding="SAME"),
          transform=self.stn, out_shape=self.stn_out_size and (self.stn_out_size,) * 2,
          antialias=self.antialias, iterations=self.stn_iterations,
          name="stn_0")(x, return_transform=True)
    x = nn.max_pool(nn.relu(nn.Conv(32, (9, 9))(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(64, (7, 7))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(self.num_classes)(x)
    return (logits, [transform] if transform else []) if return_transform else logits


class IdsiaNet(nn.Module):
  """The IDSIA-like multi-scale traffic-sign net of the ConvNets series.

  conv 7x7x100 -> pool -> conv 5x5x150 -> pool -> conv 5x5x250 -> pool, each stage's
  pooled output (pooled again to a common 4x4 grid) concatenated (multi-scale), fc 300,
  43 classes; batch norm after each convolution, dropout before the classifier.
  `num_transformers` 1 puts an ST (IDSIA localization net) on the input; 2 adds one
  before the second conv block, as Moodstocks did. Each transformer takes
  `stn_iterations` steps (`stnjax.SpatialTransformer`'s `iterations`).
  """
  num_classes: int = 43
  stn: Optional[str] = None
  num_transformers: int = 1
  dropout: float = 0.3
  antialias: bool = False
  stn_iterations: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False, return_transform: bool = False):
    transforms = []

    def transformer(x, index):
      x, transform = stnjax.SpatialTransformer(
          localization=stnjax.linen.IdsiaLocalization(), transform=self.stn,
          antialias=self.antialias, iterations=self.stn_iterations,
          name=f"stn_{index}")(x, return_transform=True)
      transforms.append(transform)
      return x

    if self.stn:
      x = transformer(x, 0)
    scales = []
    for stage, (features, kernel) in enumerate(((100, 7), (150, 5), (250, 5))):
      if stage == 1 and self.stn and self.num_transformers > 1:
        x = transformer(x, 1)
      x = nn.Conv(features, (kernel, kernel))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
      window = max(1, x.shape[1] // 4)
      scales.append(nn.max_pool(x, (window, window), (window, window), padding="SAME"))
    x = jnp.concatenate([s.reshape(s.shape[0], -1) for s in scales], axis=-1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(300)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes)(x)
    return (logits, transforms) if return_transform else logits
