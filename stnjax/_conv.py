"""`conv_general_dilated`: `lax.conv_general_dilated` with a compiled CPU kernel for the
small convolutions of localization nets.

XLA:CPU's convolution gradients are slow for layers with few channels (the kernel
gradient is a convolution whose window is the whole output map). Where the compiled
kernel is built and the call is a plain, small one (NHWC input, HWIO kernel, stride 1,
no dilation, no groups, float32, at most `MAX_KERNEL_CHANNELS` in and out), this runs
the convolution and both its gradients with it on the CPU; on GPU and TPU, and for
every other call, it is `lax.conv_general_dilated` itself.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

from stnjax import _cpu_kernel

_NHWC = ("NHWC", "HWIO", "NHWC")

# (in, out) channels up to which the kernel runs. Timed against XLA:CPU (forward +
# backward, 2 cores): 2.6-6x faster for the tutorial's layers (1 to 10 in, 8 to 20
# out) and for 1 -> 32 channels at 9x9; 0.5x for 20 -> 20 and for 32 -> 64 and more,
# where XLA's matrix kernels win.
MAX_KERNEL_CHANNELS = (16, 32)


def _xla_conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _xla_kernel_grad(x, cotangent, padding, precision):
  (top, bottom), (left, right) = padding
  kernel_shape = (x.shape[1] + top + bottom - cotangent.shape[1] + 1,
                  x.shape[2] + left + right - cotangent.shape[2] + 1,
                  x.shape[3], cotangent.shape[3])
  _, vjp = jax.vjp(lambda kernel: _xla_conv(x, kernel, padding, precision),
                   jnp.zeros(kernel_shape, x.dtype))
  return vjp(cotangent)[0]


# The convolution (stride 1, zero padding `((top, bottom), (left, right))`) and its
# kernel gradient are linear in each argument, and the VJPs of each are made of the
# two: derivatives of any order in reverse mode.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, precision):
  return lax.platform_dependent(
      x, kernel, cpu=functools.partial(_cpu_kernel.conv2d, padding=padding),
      default=functools.partial(_xla_conv, padding=padding, precision=precision))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_grad(x, cotangent, padding, precision):
  return lax.platform_dependent(
      x, cotangent, cpu=functools.partial(_cpu_kernel.conv2d_kernel_grad, padding=padding),
      default=functools.partial(_xla_kernel_grad, padding=padding, precision=precision))


def _input_grad(cotangent, kernel, padding, input_shape, precision):
  """The input gradient of `_conv(x, kernel, padding)`: the cotangent convolved with the
  kernel flipped and its channel axes swapped, padded to give the input's size."""
  (top, bottom), (left, right) = padding
  kernel_h, kernel_w = kernel.shape[:2]
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  full = ((kernel_h - 1 - top, kernel_h - 1 - bottom), (kernel_w - 1 - left, kernel_w - 1 - right))
  if min(min(pair) for pair in full) >= 0:
    return _conv(cotangent, flipped, full, precision)
  # Padding wider than the kernel: the gradient of the padded input, cropped.
  grad = _conv(cotangent, flipped, ((kernel_h - 1,) * 2, (kernel_w - 1,) * 2), precision)
  return grad[:, top:top + input_shape[1], left:left + input_shape[2]]


def _conv_fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _conv_bwd(padding, precision, residuals, cotangent):
  x, kernel = residuals
  return (_input_grad(cotangent, kernel, padding, x.shape, precision),
          _kernel_grad(x, cotangent, padding, precision))


def _kernel_grad_fwd(x, cotangent, padding, precision):
  return _kernel_grad(x, cotangent, padding, precision), (x, cotangent)


def _kernel_grad_bwd(padding, precision, residuals, kernel_cotangent):
  x, cotangent = residuals
  return (_input_grad(cotangent, kernel_cotangent, padding, x.shape, precision),
          _conv(x, kernel_cotangent, padding, precision))


_conv.defvjp(_conv_fwd, _conv_bwd)
_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def _all_ones(values):
  return values is None or all(v == 1 for v in values)


def _kernel_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count,
                    preferred_element_type):
  """The `((top, bottom), (left, right))` padding when the CPU kernel can run the call,
  else None (the call then goes to `lax.conv_general_dilated`, which also reports
  invalid arguments)."""
  if not _cpu_kernel.AVAILABLE or getattr(lhs, "ndim", None) != 4 or getattr(rhs, "ndim", None) != 4:
    return None
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    return None
  if preferred_element_type is not None and jnp.dtype(preferred_element_type) != jnp.float32:
    return None
  if (feature_group_count != 1 or batch_group_count != 1 or not _all_ones(window_strides)
      or not _all_ones(lhs_dilation) or not _all_ones(rhs_dilation)):
    return None
  try:
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  except (TypeError, ValueError):
    return None
  if numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return None
  if lhs.shape[3] != rhs.shape[2] or 0 in lhs.shape or 0 in rhs.shape:
    return None
  if lhs.shape[3] > MAX_KERNEL_CHANNELS[0] or rhs.shape[3] > MAX_KERNEL_CHANNELS[1]:
    return None
  if isinstance(padding, str):
    try:
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    except (TypeError, ValueError):
      return None
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if len(padding) != 2 or any(len(pair) != 2 or min(pair) < 0 for pair in padding):
    return None
  if any(lhs.shape[1 + axis] + sum(padding[axis]) < rhs.shape[axis] for axis in (0, 1)):
    return None
  return padding


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         out_sharding=None):
  """`lax.conv_general_dilated`, with the compiled CPU kernel where it applies.

  A drop-in for Flax: `nn.Conv(..., conv_general_dilated=stnjax.conv_general_dilated)`
  (Linen or NNX). The kernel runs calls with an NHWC input, an HWIO kernel, stride 1,
  no dilation and no groups, in float32 (what `nn.Conv` passes for `[B, H, W, C]`
  inputs), with at most 16 input and 32 output channels, on the CPU; it sums in a
  fixed order, so results are deterministic. Every other call (one with an
  `out_sharding` included), and every call on GPU and TPU, is
  `lax.conv_general_dilated`.

  Reverse-mode derivatives of any order work on both paths. Forward mode
  (`jax.jvp`, `jax.jacfwd`) does not: use `lax.conv_general_dilated` for it.
  """
  pads = _kernel_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count, batch_group_count,
                         preferred_element_type)
  if pads is None or out_sharding is not None:
    # out_sharding is passed on only when given: older jax versions lack it.
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type, **extra)
  return _conv(lhs, rhs, pads, precision)
