"""What the Linen and NNX spatial transformers share: regression init, warping the heads."""

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from stnjax import _validation
from stnjax import geometry
from stnjax import sampling
from stnjax import transforms

HEAD_LAYOUTS = ("stack", "concat")


class TransformOutput(NamedTuple):
  """The transform a spatial transformer applied, for visualization and losses.

  `stnjax.linen.SpatialTransformer` and `stnjax.nnx.SpatialTransformer` return it
  beside their output when called with `return_transform=True`. Arrays are in the
  regression layer's dtype (float32 by default).

  Attributes:
    params: `[B, P]` (or `[B, K, P]` with K heads) parameters of the family; with
      N > 1 iterations, each step's `[B, N, P]`, of which theta is the composition.
    theta: `[B, (K,) 2 or 3, 3]` for matrix families, else None.
    grid: `[B, (K,) Ho, Wo, 2]` normalized sampling grid for `tps`, else None.
  """
  params: jax.Array
  theta: Optional[jax.Array]
  grid: Optional[jax.Array]


def resolve_transform(transform: Union[str, transforms.Transform]) -> transforms.Transform:
  if isinstance(transform, str):
    transform = transforms.get(transform)
  if not isinstance(transform, transforms.Transform):
    raise TypeError(f"transform must be a family name {transforms.names(dims=2)} or a "
                    f"stnjax.transforms.Transform, got {type(transform).__name__}.")
  if transform.dims != 2:
    raise ValueError(f"SpatialTransformer warps 2-D images; {transform.name!r} transforms "
                     f"volumes. For volumes, regress its params with your own network and "
                     f"call stnjax.transforms.warp.")
  return transform


def check_options(num_heads, heads, method, padding_mode, implementation, antialias=False):
  if not isinstance(num_heads, int) or num_heads < 1:
    raise ValueError(f"num_heads must be a positive int, got {num_heads!r}.")
  if heads not in HEAD_LAYOUTS:
    raise ValueError(f"heads must be one of {HEAD_LAYOUTS}, got {heads!r}.")
  _validation.check_options(method, padding_mode)
  _validation.check_antialias(antialias, method, padding_mode)
  sampling.check_implementation(implementation)


def check_iterations(iterations, family: transforms.Transform, num_heads: int):
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations must be a positive int, got {iterations!r}.")
  if iterations > 1 and family.theta is None:
    raise ValueError(f"iterations > 1 composes matrices; the {family.name!r} family has "
                     f"none (use a matrix family, e.g. 'affine' or 'projective').")
  if iterations > 1 and num_heads > 1:
    raise ValueError(f"iterations > 1 refines one transform; got num_heads={num_heads}.")


def check_input(x, name):
  if not hasattr(x, "ndim") or x.ndim != 4:
    shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
    raise ValueError(f"{name} takes [B, H, W, C] inputs, got {shape}.")


def identity_bias(family: transforms.Transform, num_heads: int) -> np.ndarray:
  """Bias of the regression layer: the identity parameters, once per head."""
  return np.tile(np.asarray(family.identity_params, np.float32), num_heads)


def localize_and_warp(family, localize, x, *, iterations, num_heads, heads, **sampler):
  """Regresses the transform with `localize` (`[B, H, W, C] -> [B, K * P]`) and warps x,
  in one step or, with `iterations` > 1, in several (`warp_iteratively`).

  `sampler`: out_shape, method, padding_mode, align_corners, implementation, antialias.
  """
  if iterations > 1:
    return warp_iteratively(family, localize(x), x, localize, iterations=iterations, **sampler)
  return warp_heads(family, localize(x), x, num_heads=num_heads, heads=heads, **sampler)


def warp_heads(family, raw_params, x, *, num_heads, heads, out_shape, method, padding_mode,
               align_corners, implementation, antialias=False):
  """Warps x `[B, H, W, C]` with regressed `raw_params` `[B, K * P]`.

  Returns:
    `(out, TransformOutput)`. out is `[B, Ho, Wo, C]` for one head; with K > 1 heads,
    `[B, K, Ho, Wo, C]` (heads="stack") or `[B, Ho, Wo, K * C]` (heads="concat").
  """
  batch = x.shape[0]
  params = raw_params.reshape(batch, num_heads, family.num_params)
  if num_heads == 1:
    params = params[:, 0]
  out = transforms.warp(family, params, x, out_shape, method=method, padding_mode=padding_mode,
                        align_corners=align_corners, implementation=implementation,
                        antialias=antialias)
  if num_heads > 1 and heads == "concat":
    out = jnp.moveaxis(out, 1, -2).reshape(out.shape[:1] + out.shape[2:-1] + (-1,))
  out_shape = out_shape or x.shape[1:3]
  if family.theta is not None:
    info = TransformOutput(params, family.theta(params), None)
  else:
    info = TransformOutput(params, None, family.grid(params, out_shape,
                                                     align_corners=align_corners))
  return out, info


def warp_iteratively(family, raw_params, x, localize, *, iterations, out_shape, method,
                     padding_mode, align_corners, implementation, antialias=False):
  """The inverse compositional STN (Lin & Lucey 2017): each step after the first
  regresses a correction, `localize(glimpse) -> [B, P]`, from the input warped by the
  transform so far (at the input's size), and composes it after that transform. The
  output samples the input once, with the composition.

  Returns:
    `(out, TransformOutput)`: out `[B, Ho, Wo, C]`; params `[B, N, P]`, one row per step.
  """
  options = dict(method=method, padding_mode=padding_mode, align_corners=align_corners,
                 implementation=implementation, antialias=antialias)
  steps = [raw_params]
  theta = family.theta(raw_params)
  for _ in range(iterations - 1):
    glimpse = sampling.sample(theta, x, **options)
    steps.append(localize(glimpse))
    theta = geometry.compose_theta(theta, family.theta(steps[-1]))
  out = sampling.sample(theta, x, out_shape, **options)
  return out, TransformOutput(jnp.stack(steps, axis=1), theta, None)
