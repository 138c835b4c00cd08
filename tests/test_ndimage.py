"""stnjax.map_coordinates, spline_filter and spline_filter1d against scipy.ndimage.

scipy is the reference (jax requires it, so it is always installed): every order 0-5,
every mode, 1-D to 3-D, float32 and float64, at points on, between and far beyond the
array's points. The derivatives are checked against finite differences here, and under
every transformation in test_composability.py.
"""

import functools

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import stnjax
from stnjax import ndimage

pytestmark = pytest.mark.usefixtures("fast_compiles")

SHAPES = {1: (7,), 2: (5, 6), 3: (4, 3, 5)}
CVAL = 0.7
# Before scipy 1.18 the prefilter's half-sample boundary (modes reflect and grid-mirror)
# was off by about |z|**(2 n) on a line of n pixels (scipy#24615): it matters on lines
# shorter than about 24 pixels, which the small shapes here have.
OLD_SCIPY = tuple(int(part) for part in scipy.__version__.split(".")[:2]) < (1, 18)


def compared_modes(order, shape, prepadded=True):
  """The modes to compare with this scipy; `prepadded`: map_coordinates, which pads
  mode nearest's lines by 24 pixels before filtering (spline_filter does not)."""
  old = ("reflect", "grid-mirror") if prepadded else ("reflect", "grid-mirror", "nearest")
  return [mode for mode in ndimage.MODES
          if not (OLD_SCIPY and order >= 2 and mode in old and min(shape) < 24)]


def tolerance(order, dtype):
  """Of max(1, |reference|): float32 rounding (the IIR prefilters of orders 4 and 5
  amplify it), float64 rounding."""
  if dtype == np.float64:
    return 1e-10
  return 2e-5 if order <= 3 else 1e-4


def points(shape, count, seed):
  """Points `[ndim, count]`: whole pixels, half pixels, and uniform ones from 8 pixels
  before the array to 8 beyond it (beyond the 12 that scipy pads for some modes, too)."""
  rng = np.random.default_rng(seed)
  sizes = np.array(shape, np.float64)[:, None]
  out = rng.uniform(-8.0, sizes + 7.0, size=(len(shape), count))
  out[:, :12] = np.round(out[:, :12])
  out[:, 12:24] = np.round(out[:, 12:24]) + 0.5
  out[:, 24:28] = sizes + np.array([-1, 0, 12.5, 20.25])  # at, beyond the far edge
  return out


@functools.partial(jax.jit, static_argnames=("order", "prefilter"))
def every_mode(image, coords, order, prefilter=True):
  """map_coordinates in every mode, in one program."""
  return {mode: stnjax.map_coordinates(image, coords, order, mode, CVAL, prefilter=prefilter)
          for mode in ndimage.MODES}


@functools.partial(jax.jit, static_argnames=("order", "axes"))
def every_filter(image, order, axes):
  """spline_filter and spline_filter1d along each of axes, in every mode, in one program."""
  return {mode: (stnjax.spline_filter(image, order, mode),
                 [stnjax.spline_filter1d(image, order, axis, mode) for axis in axes])
          for mode in ndimage.MODES}


map_coordinates = jax.jit(stnjax.map_coordinates, static_argnums=(2, 3),
                          static_argnames=("prefilter",))


@pytest.mark.parametrize("dims, dtype", [(1, np.float64), (2, np.float32), (2, np.float64),
                                         (3, np.float32)])
@pytest.mark.parametrize("order", range(6))
def test_map_coordinates_equals_scipy(dims, order, dtype):
  shape = SHAPES[dims]
  image = np.random.default_rng(dims).normal(size=shape).astype(dtype)
  coords = points(shape, 200, seed=order).astype(dtype)
  with jax.enable_x64(dtype == np.float64):
    got = every_mode(image, coords, order)
  for mode in compared_modes(order, shape):
    reference = scipy.ndimage.map_coordinates(image.astype(np.float64), coords, order=order,
                                              mode=mode, cval=CVAL)
    assert got[mode].dtype == dtype
    error = np.abs(np.asarray(got[mode], np.float64) - reference) / np.maximum(
        1.0, np.abs(reference))
    assert error.max() <= tolerance(order, dtype), (mode, error.max())


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_half_sample_modes_on_lines_long_enough_for_any_scipy(order):
  shape = (24, 26)
  image = np.random.default_rng(order).normal(size=shape)
  coords = points(shape, 200, seed=order)
  with jax.enable_x64(True):
    for mode in ("reflect", "grid-mirror"):
      reference = scipy.ndimage.map_coordinates(image, coords, order=order, mode=mode)
      np.testing.assert_allclose(stnjax.map_coordinates(image, coords, order, mode), reference,
                                 atol=1e-10, err_msg=mode)
      np.testing.assert_allclose(stnjax.spline_filter(image, order, mode),
                                 scipy.ndimage.spline_filter(image, order, mode=mode),
                                 atol=1e-12, err_msg=mode)


def test_map_coordinates_on_a_single_pixel_axis_and_without_prefilter():
  image = np.random.default_rng(0).normal(size=(1, 6))
  coords = points((1, 6), 60, seed=1)
  with jax.enable_x64(True):
    for order in (0, 1, 3, 4):
      for prefilter in (True, False):
        got = every_mode(image, coords, order, prefilter)
        for mode in compared_modes(order, (1, 6)):
          reference = scipy.ndimage.map_coordinates(image, coords, order=order, mode=mode,
                                                    cval=CVAL, prefilter=prefilter)
          np.testing.assert_allclose(got[mode], reference, atol=1e-10, err_msg=(order, mode))


@pytest.mark.parametrize("order", range(2, 6))
def test_spline_filters_equal_scipy(order):
  image = np.random.default_rng(order).normal(size=(6, 1, 9))
  axes = (0, 1, -1)
  with jax.enable_x64(True):
    got = every_filter(image, order, axes)
    for mode in compared_modes(order, image.shape, prepadded=False):
      whole, lines = got[mode]
      np.testing.assert_allclose(whole, scipy.ndimage.spline_filter(image, order, mode=mode),
                                 atol=1e-12, err_msg=mode)
      for axis, line in zip(axes, lines):
        np.testing.assert_allclose(
            line, scipy.ndimage.spline_filter1d(image, order, axis, mode=mode), atol=1e-12,
            err_msg=(mode, axis))
    # A long line (a convolution, not a matrix): the filter's response is cut where it
    # falls below float64 rounding.
    line = np.random.default_rng(1).normal(size=ndimage._DENSE_FILTER_SIZE + 40)
    np.testing.assert_allclose(jax.jit(stnjax.spline_filter1d, static_argnums=1)(line, order),
                               scipy.ndimage.spline_filter1d(line, order), atol=1e-12)
  whole32, _ = every_filter(image.astype(np.float32), order, ())["mirror"]
  assert whole32.dtype == jnp.float32
  np.testing.assert_allclose(whole32, scipy.ndimage.spline_filter(image, order), atol=2e-5)


def test_orders_0_and_1_of_the_1d_filter_return_the_input_as_floats():
  image = np.arange(6, dtype=np.int32).reshape(2, 3)
  for order in (0, 1):
    got = stnjax.spline_filter1d(image, order)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, image)


def test_the_spline_passes_through_the_input_at_its_points():
  image = np.random.default_rng(3).normal(size=(6, 7)).astype(np.float32)
  rows, cols = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
  for order in range(6):
    got = every_mode(image, np.stack([rows, cols]), order)
    for mode in ("mirror", "reflect", "grid-wrap", "nearest"):
      np.testing.assert_allclose(got[mode], image, atol=2e-5 if order <= 3 else 1e-4,
                                 err_msg=(order, mode))


def test_integer_inputs_round_half_away_from_zero_and_clip_as_scipy():
  image = np.array([[-3, 100, 7], [250, 0, -128]], np.int16)
  coords = np.array([[0.5, 0.5, 0.25, 1.0, 0.3], [0.5, 1.5, 0.0, 1.5, 2.0]])
  for order in (1, 3):
    got = map_coordinates(image, coords, order, "constant")
    assert got.dtype == jnp.int16
    np.testing.assert_array_equal(got, scipy.ndimage.map_coordinates(image, coords,
                                                                      order=order))
  small = np.array([0, 255], np.uint8)
  np.testing.assert_array_equal(
      map_coordinates(small, [np.array([0.5, 1.5])], 1, "grid-constant"),
      scipy.ndimage.map_coordinates(small, [np.array([0.5, 1.5])], order=1,
                                    mode="grid-constant"))


def test_coordinates_as_an_array_or_a_sequence_of_arrays_under_jit_and_vmap():
  image = jnp.asarray(np.random.default_rng(4).normal(size=(5, 6)), jnp.float32)
  coords = jnp.asarray(points((5, 6), 30, seed=4).reshape(2, 5, 6), jnp.float32)
  expected = map_coordinates(image, coords, 3, "reflect")
  assert expected.shape == (5, 6)
  np.testing.assert_array_equal(map_coordinates(image, list(coords), 3, "reflect"), expected)
  # Channels, by vmap over a trailing axis.
  channels = jnp.stack([image, 2 * image], axis=-1)
  per_channel = jax.jit(jax.vmap(lambda c: stnjax.map_coordinates(c, coords, 3, "reflect"),
                                 in_axes=-1, out_axes=-1))(channels)
  np.testing.assert_allclose(per_channel[..., 0], expected, atol=1e-6)
  np.testing.assert_allclose(per_channel[..., 1], 2 * expected, atol=1e-5)


def test_jax_scipy_modes_read_as_scipy_modes():
  """jax.scipy's `constant` is scipy's `grid-constant`, its `wrap` scipy's `grid-wrap`;
  `nearest`, `mirror` and `reflect` mean the same. (Order 0 rounds halves differently:
  jax.scipy away from zero, scipy and stnjax up; the points avoid halves.)"""
  image = np.random.default_rng(5).normal(size=(5, 6)).astype(np.float32)
  coords = points((5, 6), 100, seed=5)[:, 28:].astype(np.float32)
  renamed = {"constant": "grid-constant", "wrap": "grid-wrap", "nearest": "nearest",
             "mirror": "mirror", "reflect": "reflect"}
  theirs = jax.jit(lambda i, c, order, mode: jax.scipy.ndimage.map_coordinates(
      i, c, order, mode, CVAL), static_argnums=(2, 3))
  for order in (0, 1):
    ours = every_mode(image, coords, order)
    for jax_mode, mode in renamed.items():
      np.testing.assert_allclose(ours[mode], theirs(image, coords, order, jax_mode),
                                 atol=2e-6, err_msg=(order, jax_mode))


@pytest.mark.parametrize("order, modes", [
    (1, ("constant", "grid-constant", "reflect", "wrap", "nearest")),
    (2, ("grid-constant",)),
    (3, ("mirror", "grid-wrap")),
    (5, ("nearest",)),
])
def test_gradients_match_finite_differences(order, modes):
  """Forward and reverse, in float64: first derivatives to the input and cval (the
  value is linear in them) and to the coordinates, second ones to the coordinates for
  orders 2 and 3 (order 1 has kinks at the pixels; test_composability.py takes
  every transformation of order 3)."""
  rng = np.random.default_rng(order)
  with jax.enable_x64(True):
    image = jnp.asarray(rng.normal(size=(4, 5)))
    # Clear of the kinks at whole (odd orders) and half (even orders) pixels.
    offset = 0.3 if order % 2 else -0.2
    coords = jnp.asarray(np.floor(points((4, 5), 40, seed=6)) + offset
                         + 0.4 * rng.uniform(size=(2, 40)))
    for mode in modes:
      of_input = jax.jit(lambda i, v, mode=mode: stnjax.map_coordinates(i, coords, order,
                                                                         mode, v))
      jax.test_util.check_grads(of_input, (image, 0.5), order=1, modes=("fwd", "rev"),
                                eps=1e-6)
      of_coords = jax.jit(lambda c, mode=mode: stnjax.map_coordinates(image, c, order, mode,
                                                                       0.5))
      jax.test_util.check_grads(of_coords, (coords,), order=2 if order in (2, 3) else 1,
                                modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("call, error, message", [
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), np.zeros((2, 5)), 6), ValueError,
     "order must be an integer from 0 to 5, got 6"),
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), np.zeros((2, 5)), 1.0), ValueError,
     "order must be an integer"),
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), np.zeros((2, 5)), 1, "zeros"),
     ValueError, "mode must be one of"),
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), np.zeros((3, 5)), 1), ValueError,
     r"input has 2 axes \(shape \(3, 4\)\), got 3 coordinate arrays"),
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), [np.zeros(5), np.zeros(4)], 1),
     ValueError, r"one shape, got \[\(5,\), \(4,\)\]"),
    (lambda: stnjax.map_coordinates(np.ones(()), [np.zeros(5)], 1), ValueError,
     "at least one dimension"),
    (lambda: stnjax.map_coordinates(np.ones((3, 4)), np.zeros(()), 1), ValueError,
     "got a scalar"),
    (lambda: stnjax.map_coordinates(np.ones(3, np.complex64), [np.zeros(5)], 1), TypeError,
     "input must be real"),
    (lambda: stnjax.map_coordinates(np.ones(3), [np.zeros(5, np.complex64)], 1), TypeError,
     "coordinates must be real"),
    (lambda: stnjax.spline_filter(np.ones(3), 1), ValueError,
     "order must be an integer from 2 to 5, got 1"),
    (lambda: stnjax.spline_filter1d(np.ones((3, 4)), 3, axis=2), ValueError,
     r"axis 2 is out of range for an input of shape \(3, 4\)"),
    (lambda: stnjax.spline_filter1d(np.ones(3), 3, mode="edge"), ValueError,
     "mode must be one of"),
])
def test_bad_arguments_say_what_was_expected(call, error, message):
  with pytest.raises(error, match=message):
    call()
