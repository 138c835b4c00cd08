"""Localization-net architectures as layer specs, shared by the Linen and NNX modules.

A spec is a tuple of layers, each a tuple `(kind, *args)`:
  ("conv", features, kernel)   convolution, kernel x kernel, then nothing else
  ("max_pool", window)         window x window max pooling, stride = window
  ("avg_pool", window)         the same with averaging (used to downsample)
  ("relu",)
  ("tap",)                     keep the current maps for a multi-scale concat
  ("flatten",)                 flatten, concatenated after every tapped map
  ("dense", features)
The `padding` of a localization net ("VALID" or "SAME") applies to convs and pools.
"""

import math

# PyTorch's STN tutorial (MNIST): conv 8@7x7, pool, relu, conv 10@5x5, pool, relu, fc 32.
TUTORIAL = (
    ("conv", 8, 7), ("max_pool", 2), ("relu",),
    ("conv", 10, 5), ("max_pool", 2), ("relu",),
    ("flatten",), ("dense", 32), ("relu",),
)

# The paper's distorted-MNIST localization net: two conv 20@5x5 on a 2x downsampled
# input (max-pooling between them), fc 20.
PAPER_MNIST = (
    ("avg_pool", 2),
    ("conv", 20, 5), ("relu",), ("max_pool", 2),
    ("conv", 20, 5), ("relu",),
    ("flatten",), ("dense", 20), ("relu",),
)

# The ConvNets series' GTSRB localization net (IDSIA-like): maxpool, conv 5x5x100, pool,
# conv 5x5x200, pool, both pooled stages flattened and concatenated, fc 100.
IDSIA = (
    ("max_pool", 2),
    ("conv", 100, 5), ("relu",), ("max_pool", 2), ("tap",),
    ("conv", 200, 5), ("relu",), ("max_pool", 2),
    ("flatten",), ("dense", 100), ("relu",),
)


def _spatial(size, window, padding, is_conv):
  if padding == "SAME":
    return size if is_conv else math.ceil(size / window)
  return size - window + 1 if is_conv else size // window


def trace(layers, input_shape, padding, name):
  """Sizes through a spec for an `(H, W, C)` input.

  Returns:
    `(in_features, num_features)`: the input width of each conv and dense layer, in
    order, and the length of the output feature vector.

  Raises:
    ValueError: if the padding is unknown or the input is too small for the spec.
  """
  if padding not in ("VALID", "SAME"):
    raise ValueError(f"{name}: padding must be 'VALID' or 'SAME', got {padding!r}.")
  if len(input_shape) != 3:
    raise ValueError(f"{name}: input shape must be (H, W, C), got {tuple(input_shape)}.")
  height, width, channels = input_shape
  in_features, tapped = [], 0
  for index, layer in enumerate(layers):
    kind = layer[0]
    if kind in ("conv", "max_pool", "avg_pool"):
      window = layer[2] if kind == "conv" else layer[1]
      height = _spatial(height, window, padding, kind == "conv")
      width = _spatial(width, window, padding, kind == "conv")
      if height < 1 or width < 1:
        raise ValueError(
            f"{name} with padding={padding!r} needs a larger input than "
            f"{tuple(input_shape)}: layer {index} {layer} leaves {height}x{width} maps. "
            "Use padding='SAME' for small feature maps.")
      if kind == "conv":
        in_features.append(channels)
        channels = layer[1]
    elif kind == "tap":
      tapped += height * width * channels
    elif kind == "flatten":
      channels, height, width = tapped + height * width * channels, 1, 1
    elif kind == "dense":
      in_features.append(channels)
      channels = layer[1]
    elif kind != "relu":
      raise ValueError(f"{name}: unknown layer kind {kind!r}.")
  return in_features, channels
