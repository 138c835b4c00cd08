"""scipy.ndimage's spline interpolation in JAX: `map_coordinates`, `spline_filter`,
`spline_filter1d`.

The same arguments and the same results as `scipy.ndimage` (orders 0-5, any number of
dimensions, every mode), differentiable with respect to the input, the coordinates and
`cval`, under every JAX transformation. Unlike the rest of stnjax, these functions take
scipy's conventions: an array without a channel axis, and coordinates as array indices
in axis order (row before column), not `(x, y)`.

How scipy computes, and so how this module does (scipy/ndimage/src/ni_interpolation.c):
  * For order > 1 with `prefilter`, the input is first replaced by its B-spline
    coefficients (`spline_filter`), with the boundary condition of the mode; modes
    `nearest` and `grid-constant` first pad 12 pixels (edge values, `cval`).
  * A point's coordinate is folded into the array by the mode (`constant` gives `cval`
    off `[0, n - 1]`; `nearest` and `grid-constant` are not folded), then the order + 1
    taps around it are read, each folded again (`constant` and `wrap` fold taps by
    `mirror`; `grid-constant` reads `cval` off the array), weighted by the B-spline.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("constant", "grid-constant", "nearest", "mirror", "reflect", "grid-mirror", "wrap",
         "grid-wrap")

# The poles of the B-spline prefilter of each order (Unser, Aldroubi and Eden, 1991).
_POLES = {
    2: (math.sqrt(8.0) - 3.0,),
    3: (math.sqrt(3.0) - 2.0,),
    4: (math.sqrt(664.0 - math.sqrt(438976.0)) + math.sqrt(304.0) - 19.0,
        math.sqrt(664.0 + math.sqrt(438976.0)) - math.sqrt(304.0) - 19.0),
    5: (math.sqrt(67.5 - math.sqrt(4436.25)) + math.sqrt(26.25) - 6.5,
        math.sqrt(67.5 + math.sqrt(4436.25)) - math.sqrt(26.25) - 6.5),
}
# How the prefilter extends a line beyond its ends, for each mode (scipy's apply_filter),
# as jnp.pad names the extension: whole-sample symmetric ("reflect" in numpy, "mirror"
# in scipy), half-sample symmetric, periodic.
_FILTER_PADDING = {"constant": "reflect", "grid-constant": "reflect", "mirror": "reflect",
                   "wrap": "reflect", "nearest": "symmetric", "reflect": "symmetric",
                   "grid-mirror": "symmetric", "grid-wrap": "wrap"}
# How the taps of a point are folded into the array (scipy's _get_spline_boundary_mode).
_TAP_MODE = {"constant": "mirror", "wrap": "mirror", "grid-mirror": "reflect"}
# scipy pads these modes before prefiltering, as their exact boundary has no closed form.
_PREPAD = 12


def _check_order(order, low, high=5):
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not low <= order <= high:
    raise ValueError(f"order must be an integer from {low} to {high}, got {order!r}.")


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")


def _float_dtype(*dtypes):
  """float64 where an operand is float64 (under x64), float32 otherwise."""
  wide = any(jnp.dtype(d) == jnp.float64 for d in dtypes)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


@functools.cache
def _prefilter_taps(order):
  """The prefilter's impulse response `h[-r..r]` in float64 (a tuple of floats).

  Each pole z contributes `(1 - z)(1 - 1/z) * -z * z**|k| / (1 - z**2)`, the response of
  scipy's causal and anticausal passes with their gain; the product over poles is their
  convolution. r is where the slowest pole's response falls below 1e-19, so cutting it
  there changes no float64 result.
  """
  poles = _POLES[order]
  radius = math.ceil(math.log(1e-19) / math.log(max(abs(z) for z in poles)))
  wide = radius + 40  # Each factor computed further out, so that the cut is the only error.
  k = np.abs(np.arange(-wide, wide + 1, dtype=np.float64))
  response = np.ones(1)
  for z in poles:
    response = np.convolve(response, (1 - z) * (1 - 1 / z) * -z * z**k / (1 - z * z))
  middle = (len(response) - 1) // 2
  return tuple(response[middle - radius:middle + radius + 1].tolist())


# Lines up to this long are filtered by a dense matrix (at most 4 MiB in float32), longer
# ones by a convolution with the response, whose transpose XLA:CPU runs several times
# slower than the matrix's.
_DENSE_FILTER_SIZE = 1024


@functools.cache
def _filter_matrix(size, order, padding):
  """The prefilter of a line of `size`, extended as jnp.pad's `padding`, as a float64
  `[size, size]` matrix: the response's taps summed where the extension folds them."""
  taps = np.asarray(_prefilter_taps(order))
  radius = (len(taps) - 1) // 2
  extended = np.pad(np.arange(size), radius, mode=padding)
  windows = np.lib.stride_tricks.sliding_window_view(extended, len(taps))  # [size, taps]
  matrix = np.zeros((size, size))
  np.add.at(matrix, (np.repeat(np.arange(size), len(taps)), windows.reshape(-1)),
            np.tile(taps, size))
  return matrix


def spline_filter1d(input, order=3, axis=-1, mode="mirror"):
  """The B-spline coefficients of `input` along one axis, as `scipy.ndimage.spline_filter1d`.

  Interpolating the coefficients with a B-spline of the same order (`map_coordinates`
  with `prefilter=False`) passes through the input's values at the array's points.

  Args:
    input: an array of any shape and real dtype.
    order: the spline order, 0 to 5; orders 0 and 1 return the input (as floats).
    axis: the axis to filter.
    mode: how the line extends beyond its ends, one of `MODES`: `mirror`, `constant`,
      `grid-constant` and `wrap` extend it whole-sample symmetrically, `reflect`,
      `grid-mirror` and `nearest` half-sample symmetrically, `grid-wrap` periodically,
      as scipy's filter does.

  Returns:
    The coefficients, shaped like `input`: float64 where `input` is float64, float32
    otherwise.

  Raises:
    ValueError: for an order outside 0-5, an unknown mode or an axis out of range.
    TypeError: for a complex input.

  Example:
    >>> import numpy as np, stnjax
    >>> stnjax.spline_filter1d(np.array([0.0, 6.0, 0.0]), order=3)
    Array([-6., 12., -6.], dtype=float32)
  """
  _check_order(order, 0)
  _check_mode(mode)
  input = _as_real_array(input, "input")
  if not -input.ndim <= axis < max(input.ndim, 1):
    raise ValueError(f"axis {axis} is out of range for an input of shape {input.shape}.")
  values = input.astype(_float_dtype(input.dtype))
  if order < 2 or input.ndim == 0:
    return values
  axis = axis % input.ndim
  size = values.shape[axis]
  if size <= _DENSE_FILTER_SIZE:
    # One matrix product: the fastest way at these sizes, forward and transposed.
    matrix = jnp.asarray(_filter_matrix(size, order, _FILTER_PADDING[mode]), values.dtype)
    out = jnp.tensordot(matrix, values, axes=(1, axis), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, 0, axis)
  # Longer lines: the response as a convolution over the line extended by the mode.
  taps = _prefilter_taps(order)
  radius = (len(taps) - 1) // 2
  lines = jnp.moveaxis(values, axis, -1)
  widths = [(0, 0)] * (lines.ndim - 1) + [(radius, radius)]
  padded = jnp.pad(lines, widths, mode=_FILTER_PADDING[mode]).reshape(-1, 1, size + 2 * radius)
  kernel = jnp.asarray(taps, values.dtype).reshape(1, 1, -1)
  out = jax.lax.conv_general_dilated(padded, kernel, (1,), "VALID",
                                     precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(out.reshape(lines.shape), -1, axis)


def spline_filter(input, order=3, mode="mirror"):
  """The B-spline coefficients of `input` along every axis, as `scipy.ndimage.spline_filter`.

  `spline_filter1d` along each axis in turn. `map_coordinates` calls it for orders above
  1 unless given `prefilter=False`.

  Args:
    input: an array of any shape and real dtype.
    order: the spline order, 2 to 5.
    mode: the boundary condition, as in `spline_filter1d`.

  Returns:
    The coefficients, shaped like `input`: float64 where `input` is float64, float32
    otherwise.

  Raises:
    ValueError: for an order outside 2-5 or an unknown mode.
    TypeError: for a complex input.

  Example:
    >>> import numpy as np, stnjax
    >>> image = np.arange(12.0).reshape(3, 4) ** 2
    >>> coefficients = stnjax.spline_filter(image, order=3)
    >>> points = np.array([[1.0, 2.0], [3.0, 0.0]])  # pixels (1, 3) and (2, 0)
    >>> values = stnjax.map_coordinates(coefficients, points, order=3, prefilter=False)
    >>> [round(float(v), 3) for v in values]
    [49.0, 64.0]
  """
  _check_order(order, 2)
  _check_mode(mode)
  input = _as_real_array(input, "input")
  values = input.astype(_float_dtype(input.dtype))
  for axis in range(values.ndim):
    values = spline_filter1d(values, order, axis, mode)
  return values


def _as_real_array(value, name):
  value = jnp.asarray(value)
  if jnp.issubdtype(value.dtype, jnp.complexfloating):
    raise TypeError(f"{name} must be real, got dtype {value.dtype}; filter or map the real "
                    "and imaginary parts apart.")
  return value


def _fold_coordinate(coord, size, mode):
  """scipy's map_coordinate: a coordinate off `[0, size - 1]` folded into the array, and
  for mode `constant` whether it lies off it."""
  outside = (coord < 0) | (coord > size - 1)
  if mode == "constant":
    return coord, outside
  if size <= 1:
    return jnp.where(outside, 0.0, coord).astype(coord.dtype), None
  trunc = jnp.trunc
  if mode == "mirror":
    period = 2 * size - 2
    low = period * trunc(-coord / period) + coord
    low = jnp.where(low <= 1 - size, low + period, -low)
    high = coord - period * trunc(coord / period)
    high = jnp.where(high >= size, period - high, high)
  elif mode in ("reflect", "grid-mirror"):
    period = 2 * size
    low = jnp.where(coord < -period, period * trunc(-coord / period) + coord, coord)
    low = jnp.where(low < -size, low + period, jnp.where(low > -1e-15, 1e-15, -low) - 1)
    high = coord - period * trunc(coord / period)
    high = jnp.where(high >= size, period - high - 1, high)
  elif mode == "wrap":
    period = size - 1
    low = coord + period * (trunc(-coord / period) + 1)
    high = coord - period * trunc(coord / period)
  else:  # grid-wrap
    low = coord + size * (trunc((-1 - coord) / size) + 1)
    high = coord - size * trunc(coord / size)
  folded = jnp.where(coord < 0, low, jnp.where(coord > size - 1, high, coord))
  return folded, None


def _fold_taps(index, size, mode):
  """Integer tap indices folded into `[0, size)` by the taps' mode; for `grid-constant`,
  clipped, with whether each lies inside."""
  if mode == "grid-constant":
    inside = (index >= 0) & (index < size)
    return jnp.clip(index, 0, size - 1), inside
  if mode == "nearest" or size == 1:
    return jnp.clip(index, 0, size - 1), None
  if mode == "mirror":
    period = 2 * size - 2
    index = index % period
    return jnp.where(index >= size, period - index, index), None
  if mode == "reflect":
    period = 2 * size
    index = index % period
    return jnp.where(index >= size, period - 1 - index, index), None
  return index % size, None  # grid-wrap


def _bspline_weights(x, order):
  """The weights of the order + 1 taps for x, the offset from the middle tap (in
  `[0, 1)` for odd orders, `[-0.5, 0.5)` for even ones), as scipy computes them."""
  if order == 0:
    return [jnp.ones_like(x)]
  if order == 1:
    weights = [1.0 - x]
  elif order == 2:
    weights = [0.5 * (0.5 - x) ** 2, 0.75 - x * x]
  elif order == 3:
    z = 1.0 - x
    weights = [z * z * z / 6.0, (x * x * (x - 2.0) * 3.0 + 4.0) / 6.0,
               (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0]
  elif order == 4:
    t = x * x
    y, z = 1.0 + x, 1.0 - x

    def side(s):
      return s * (s * (s * (5.0 - s) / 6.0 - 1.25) + 5.0 / 24.0) + 55.0 / 96.0

    weights = [(0.5 - x) ** 4 / 24.0, side(y), t * (t * 0.25 - 0.625) + 115.0 / 192.0,
               side(z)]
  else:
    z = 1.0 - x

    def middle(s):
      t = s * s
      return t * (t * (0.25 - s / 12.0) - 0.5) + 0.55

    def side(s):
      return s * (s * (s * (s * (s / 24.0 - 0.375) + 1.25) - 1.75) + 0.625) + 0.425

    weights = [z**5 / 120.0, side(1.0 + x), middle(x), middle(z), side(2.0 - x)]
  # The weights sum to one; scipy gives the last what the others leave.
  return weights + [1.0 - sum(weights[1:], weights[0])]


def _interpolate(data, coords, order, mode, cval):
  """The spline of `data` (its coefficients) at coords, a list of one float array per axis."""
  tap_mode = _TAP_MODE.get(mode, mode)
  taps_per_axis, off_array = [], None
  for coord, size in zip(coords, data.shape):
    if mode in ("nearest", "grid-constant"):
      # Not folded: beyond these bounds every tap is on the edge (or off the array).
      coord = jnp.clip(coord, -order - 2.0, size + order + 1.0)
    else:
      coord, outside = _fold_coordinate(coord, size, mode)
      if outside is not None:
        off_array = outside if off_array is None else off_array | outside
    middle = jnp.floor(coord if order % 2 else coord + 0.5)
    first = middle.astype(jnp.int32) - order // 2
    weights = _bspline_weights(coord - middle, order)
    taps_per_axis.append([(*_fold_taps(first + k, size, tap_mode), weight)
                          for k, weight in enumerate(weights)])

  flat_data = data.reshape(-1)
  strides = [math.prod(data.shape[axis + 1:]) for axis in range(data.ndim)]

  def accumulate(axis, flat_index, inside):
    """The sum over the taps of the axes from `axis` on, the earlier ones fixed."""
    if axis == data.ndim:
      value = flat_data.at[flat_index].get(mode="promise_in_bounds")
      return value if inside is None else jnp.where(inside, value, cval)
    total = None
    for index, tap_inside, weight in taps_per_axis[axis]:
      index = index * strides[axis]
      term = accumulate(axis + 1, index if flat_index is None else flat_index + index,
                        tap_inside if inside is None or tap_inside is None
                        else inside & tap_inside)
      term = term if order == 0 else weight * term
      total = term if total is None else total + term
    return total

  out = accumulate(0, None, None)
  return out if off_array is None else jnp.where(off_array, cval, out)


def _round_to(values, dtype):
  """Floats to an integer dtype as scipy stores them: half away from zero, then clipped."""
  if dtype == jnp.bool_:
    return values != 0
  info = jnp.iinfo(dtype)
  rounded = jnp.trunc(values + jnp.where(values > 0, 0.5, -0.5))
  return jnp.clip(rounded, info.min, info.max).astype(dtype)


def map_coordinates(input, coordinates, order, mode="constant", cval=0.0, *, prefilter=True):
  """`input` interpolated at `coordinates` by a B-spline, as `scipy.ndimage.map_coordinates`.

  Called as `jax.scipy.ndimage.map_coordinates` is, and equal to scipy's for every order
  0-5, number of dimensions and mode (to float rounding; see the correctness page).
  Differentiable with respect to `input`, `coordinates` and `cval`, to any order
  (the spline of order k has k - 1 continuous derivatives in the coordinates).

  Args:
    input: an array `[n0, n1, ...]` of any real dtype (no channel axis: map channels
      with `jax.vmap`).
    coordinates: the points, in array indices along each axis (row before column): an
      array `[input.ndim, *points]` or a sequence of `input.ndim` arrays `[*points]`.
    order: 0 (the nearest pixel, halves rounding up), 1 (linear), 2-5 (B-splines).
    mode: how the input extends beyond its edges, one of `MODES`, with scipy's meanings:
      `constant` gives `cval` for points off `[0, n - 1]` along some axis;
      `grid-constant` reads `cval` for each tap off the array (so it blends at the
      edges); `nearest` repeats the edge pixel; `mirror` reflects about the edge
      pixels' centres; `reflect` (alias `grid-mirror`) about their outer edges;
      `grid-wrap` repeats the array with period n; `wrap` is scipy's older periodic
      mode, period n - 1. `jax.scipy`'s `constant` is scipy's `grid-constant` and its
      `wrap` is `grid-wrap`.
    cval: the value off the array for `constant` and `grid-constant`.
    prefilter: for order > 1, replace `input` by its B-spline coefficients first
      (`spline_filter` with `mode`) so that the spline passes through the input's values;
      pass False where `input` already holds coefficients.

  Returns:
    The values `[*points]` in `input`'s dtype (integers rounded half away from zero and
    clipped, as scipy stores them). Computed in float64 where `input` or the coordinates
    are float64 (under x64), in float32 otherwise.

  Raises:
    ValueError: for an order outside 0-5, an unknown mode, a number of coordinate arrays
      other than `input.ndim`, or coordinate arrays of different shapes.
    TypeError: for complex input or coordinates.

  Example:
    >>> import numpy as np, stnjax
    >>> image = np.arange(12.0).reshape(3, 4) ** 2
    >>> rows, cols = [0.5, 1.0], [2.0, 2.5]  # two points: (0.5, 2.0) and (1.0, 2.5)
    >>> stnjax.map_coordinates(image, np.array([rows, cols]), order=1)
    Array([20. , 42.5], dtype=float32)
    >>> [round(float(v), 3) for v in stnjax.map_coordinates(image, np.array([rows, cols]), 3)]
    [11.0, 44.4]
  """
  _check_order(order, 0)
  _check_mode(mode)
  input = _as_real_array(input, "input")
  if input.ndim == 0:
    raise ValueError("input must have at least one dimension, got a scalar.")
  if isinstance(coordinates, (list, tuple)):
    coords = [_as_real_array(c, "coordinates") for c in coordinates]
  else:
    coordinates = _as_real_array(coordinates, "coordinates")
    if coordinates.ndim == 0:
      raise ValueError("coordinates must be an array [input.ndim, *points] or a sequence of "
                       "input.ndim arrays, got a scalar.")
    coords = list(coordinates)
  if len(coords) != input.ndim:
    raise ValueError(f"coordinates must give one array per axis of input: input has "
                     f"{input.ndim} axes (shape {input.shape}), got {len(coords)} coordinate "
                     "arrays.")
  if len({c.shape for c in coords}) > 1:
    raise ValueError(f"the coordinate arrays must have one shape, got "
                     f"{[c.shape for c in coords]}.")
  dtype = _float_dtype(input.dtype, *(c.dtype for c in coords))
  coords = [c.astype(dtype) for c in coords]
  cval = jnp.asarray(cval, dtype)
  data = input.astype(dtype)
  if prefilter and order > 1:
    if mode in ("nearest", "grid-constant"):
      data = (jnp.pad(data, _PREPAD, mode="edge") if mode == "nearest"
              else jnp.pad(data, _PREPAD, constant_values=cval))
      coords = [c + _PREPAD for c in coords]
    data = spline_filter(data, order, mode)
  out = _interpolate(data, coords, order, mode, cval)
  if jnp.issubdtype(input.dtype, jnp.floating):
    return out.astype(input.dtype)
  return _round_to(out, input.dtype)
