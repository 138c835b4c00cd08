"""Antialiased sampling (`antialias=True`): plain where the warp does not shrink, close to
the box-filtered warp where it does, and smooth in theta.

The reference is the issue's: for each output pixel, the mean of plain bilinear samples
at 16 x 16 evenly spaced points inside the output pixel's square, mapped through theta
(sampling at 16 times the output size and averaging 16 x 16 blocks does exactly that).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import stnjax
from stnjax import _antialias
from stnjax import _interpolation
from stnjax import _pyramid


def zone_plate(size):
  """cos(k r^2): every frequency up to Nyquist, in every direction."""
  y, x = np.mgrid[:size, :size] - (size - 1) / 2
  return jnp.asarray((0.5 + 0.5 * np.cos(np.pi / size * (x * x + y * y)))[..., None],
                     jnp.float32)


def rotation(degrees, scale_x=1.0, scale_y=1.0, shift=(0.0, 0.0)):
  angle = np.deg2rad(degrees)
  linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  linear = linear @ np.diag([scale_x, scale_y])
  return jnp.asarray(np.concatenate([linear, np.array(shift)[:, None]], axis=1), jnp.float32)


def box_filtered(theta, image, out_shape, **options):
  height, width = out_shape
  dense = stnjax.sample(theta, image, (16 * height, 16 * width), **options)
  return dense.reshape(height, 16, width, 16, -1).mean(axis=(1, 3))


def rms(a, b):
  return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def error_ratio(theta, image, out_shape, **options):
  """RMS error against the box-filtered warp, antialiased over plain."""
  reference = box_filtered(theta, image, out_shape, **options)
  plain = stnjax.sample(theta, image, out_shape, **options)
  filtered = stnjax.sample(theta, image, out_shape, antialias=True, **options)
  return rms(filtered, reference) / rms(plain, reference)


# The bounds: 0.5 at 2x and anisotropic, 0.3 at 4x and 8x with rotations.
# Measured on a 256 zone plate by benchmarks/antialias.py; 128 here to stay quick.
@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("name,theta,out_shape,bound", [
    ("2x", rotation(0), (64, 64), 0.5),
    ("4x, rotated 30", rotation(30), (32, 32), 0.3),
    ("4x, rotated 10, shifted", rotation(10, shift=(0.1, -0.05)), (32, 32), 0.3),
    ("8x, rotated 30", rotation(30), (16, 16), 0.3),
    ("x shrunk 4x, y not", rotation(0), (128, 32), 0.5),
    ("x shrunk 4x, y not, rotated 30", rotation(30), (128, 32), 0.5),
])
def test_closer_to_the_box_filtered_warp_than_plain_sampling(name, theta, out_shape, bound):
  assert error_ratio(theta, zone_plate(128), out_shape) <= bound, name


@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
def test_other_padding_modes_filter_too(padding_mode):
  # Zoomed out past the edges, so that the padding is read.
  theta = rotation(20, 1.3, 1.3)
  assert error_ratio(theta, zone_plate(128), (24, 24), padding_mode=padding_mode) <= 0.35


@pytest.mark.parametrize("theta,out_shape", [
    (rotation(0), (12, 10)),  # The identity.
    (rotation(90), (10, 12)),  # A quarter turn, onto the transposed shape.
    (rotation(0, 0.5, 0.5), (24, 20)),  # Magnified: exact coordinates.
    (rotation(0, shift=(2 / 10, -4 / 12)), (12, 10)),  # Whole-pixel shifts.
])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_plain_sampling_bit_for_bit_where_nothing_shrinks(theta, out_shape, padding_mode):
  image = jnp.asarray(np.random.default_rng(0).uniform(size=(12, 10, 3)), jnp.float32)
  plain = stnjax.sample(theta, image, out_shape, padding_mode=padding_mode)
  filtered = stnjax.sample(theta, image, out_shape, padding_mode=padding_mode, antialias=True)
  np.testing.assert_array_equal(filtered, plain)


def test_plain_sampling_where_rotated_or_magnified():
  # XLA may round the coordinate arithmetic differently in the two programs: equal to
  # float32 rounding of the coordinates.
  image = zone_plate(64)
  for theta in (rotation(10), rotation(33, 0.7, 0.9, (0.1, 0.2))):
    np.testing.assert_allclose(stnjax.sample(theta, image, antialias=True),
                               stnjax.sample(theta, image), atol=2e-5)


def test_projective_footprint_is_per_pixel():
  """A homography that magnifies the top of the image and shrinks the bottom up to 5x:
  the top rows are plain sampling, the bottom ones are filtered. Its footprints are
  anisotropic, which the isotropic filter blurs along their short axis too, so the gain
  is smaller than for affine shrinking (benchmarks/antialias.py measures it)."""
  image = zone_plate(64)
  theta = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -0.6, 1.0]], jnp.float32)
  plain = stnjax.sample(theta, image)
  filtered = stnjax.sample(theta, image, antialias=True)
  x, y = stnjax.grid.source_pixels(theta, (64, 64), (64, 64), False)
  stretch = np.sqrt(np.asarray(_antialias.squared_stretches(_antialias.pointwise_jacobian(x, y))[0]))
  magnified = stretch.max(axis=1) < 1
  assert magnified.sum() > 10
  np.testing.assert_allclose(filtered[magnified], plain[magnified], atol=2e-5)
  reference = box_filtered(theta, image, (64, 64))
  inside = (x > 0) & (x < 63) & (y > 0) & (y < 63)
  shrunk = np.asarray((stretch > 2.5) & inside)
  assert shrunk.sum() > 30
  assert rms(filtered[shrunk], reference[shrunk]) <= 0.7 * rms(plain[shrunk], reference[shrunk])


def test_grid_sample_takes_the_footprint_from_the_grid():
  image = zone_plate(64)
  theta = rotation(25, 3.0, 2.0)
  grid = stnjax.affine_grid(theta, (16, 16))
  np.testing.assert_allclose(stnjax.grid_sample(image, grid, antialias=True),
                             stnjax.sample(theta, image, (16, 16), antialias=True), atol=1e-5)
  tps = stnjax.transforms.get("tps")
  params = jnp.zeros(tps.num_params)
  np.testing.assert_allclose(stnjax.transforms.warp(tps, params, image, (16, 16), antialias=True),
                             stnjax.sample(jnp.eye(2, 3), image, (16, 16), antialias=True),
                             atol=1e-5)


def test_nan_theta_gives_zeros_as_plain_sampling_does():
  out = stnjax.sample(jnp.full((2, 3), jnp.nan), zone_plate(32), (8, 8), antialias=True)
  np.testing.assert_array_equal(out, 0.0)


def test_an_infinite_pixel_stays_where_it_is():
  """Each point reads two of three places; the one it does not need is selected away,
  never multiplied by a zero weight, so an inf elsewhere does not reach it."""
  image = zone_plate(32).at[0, 0].set(jnp.inf)
  for theta, out_shape in [(rotation(0), (32, 32)), (rotation(0, 0.5, 0.5), (8, 8)),
                           (rotation(20, 0.5, 0.5), (4, 4))]:
    out = np.asarray(stnjax.sample(theta, image, out_shape, antialias=True))
    plain = np.asarray(stnjax.sample(theta, image, out_shape))
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(plain))
    assert np.isfinite(out[1:-1, 1:-1]).all()


def test_an_unused_read_of_an_infinite_pixel_stays_out_of_the_gradient():
  """Where nothing shrinks, the coarser reads (which meet the inf) are unused: the gradient
  of a loss on pixels away from it is finite, as in plain sampling."""
  image = zone_plate(32).at[0, 0].set(jnp.inf)
  for theta in (rotation(0), rotation(0, 0.5, 0.5)):
    def loss(theta):
      return jnp.sum(stnjax.sample(theta, image, antialias=True,
                                   padding_mode="border")[2:-2, 2:-2])
    assert np.isfinite(np.asarray(jax.grad(loss)(theta))).all()


@pytest.mark.usefixtures("fast_compiles")
def test_shard_map_over_a_sharded_batch():
  """Each device reads its own images (the skipped reads' zeros vary as the reads do)."""
  devices = len(jax.devices())
  mesh = jax.make_mesh((devices,), ("devices",))
  spec = jax.sharding.PartitionSpec("devices")
  thetas = jnp.stack([rotation(10 * i, 0.3 + 0.5 * (i % 3)) for i in range(2 * devices)])
  images = jnp.stack([zone_plate(16)] * (2 * devices)) * jnp.arange(1, 2 * devices + 1.0)[
      :, None, None, None]

  def warp(thetas, images):
    return stnjax.sample(thetas, images, (6, 6), antialias=True)

  def loss(thetas, images):
    return jnp.sum(warp(thetas, images) ** 2)

  sharded = jax.jit(jax.shard_map(
      lambda t, i: (warp(t, i), jax.grad(loss, (0, 1))(t, i)),
      mesh=mesh, in_specs=spec, out_specs=spec))
  on_mesh = jax.sharding.NamedSharding(mesh, spec)
  out, grads = sharded(jax.device_put(thetas, on_mesh), jax.device_put(images, on_mesh))
  # The images are scaled up to 8x: float32 rounding is relative.
  np.testing.assert_allclose(out, warp(thetas, images), rtol=1e-6, atol=1e-6)
  for got, expected in zip(grads, jax.grad(loss, (0, 1))(thetas, images)):
    # Sums over another split of the batch: float32 rounding of the largest component.
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_constant_image_stays_constant_inside():
  image = jnp.full((64, 64, 2), 0.25, jnp.float32)
  out = stnjax.sample(rotation(30, 0.5, 0.5), image, (8, 8), antialias=True,
                      padding_mode="border")
  np.testing.assert_allclose(out, 0.25, rtol=1e-6)


@pytest.mark.usefixtures("fast_compiles")
def test_gradients_match_finite_differences():
  """To theta and image, forward and reverse, on a footprint between levels 1 and 2."""
  image = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 12, 2)), jnp.float32)
  theta = jnp.asarray([[2.24, 0.0, 0.0], [0.0, 1.87, -0.06]], jnp.float32)

  @jax.jit
  def warp(theta, image):
    return stnjax.sample(theta, image, (3, 4), antialias=True)

  check_grads(warp, (theta, image), order=1, modes=["fwd", "rev"], eps=1e-3, atol=2e-2,
              rtol=2e-2)


@pytest.mark.usefixtures("fast_compiles")
def test_gradients_match_finite_differences_where_the_image_is_phased_out():
  """A footprint of about 3.0 x 3.0 pixels: between the short sides (2.4 and 3.2) over
  which the target is raised to level 1's largest spread. Smaller steps than above: at
  1e-3 some cross a kink of the bilinear weights (a whole pixel) on this small image."""
  image = jnp.asarray(np.random.default_rng(2).uniform(size=(14, 16, 1)), jnp.float32)
  theta = jnp.asarray([[0.7363, -0.0859, 0.01], [0.0739, 0.8557, 0.03]], jnp.float32)

  @jax.jit
  def warp(theta, image):
    return stnjax.sample(theta, image, (4, 4), antialias=True)

  check_grads(warp, (theta, image), order=1, modes=["fwd", "rev"], eps=3e-4, atol=2e-2,
              rtol=2e-2)


def test_the_target_reaches_level_one_before_a_short_side_of_3_2_pixels(monkeypatch):
  long_squared = jnp.linspace(1.0, 30.0, 300)
  plain_spread = jnp.full_like(long_squared, 0.1)
  for ratio in (1.0, 2.0):  # Isotropic and anisotropic footprints.
    short_squared = long_squared / ratio
    target = _antialias._target_spread(plain_spread, long_squared, short_squared)
    beyond = short_squared >= _antialias._PYRAMID_ONLY_SHORT_SQUARED[1]
    assert (target[beyond] >= _antialias._LEVEL_ONE_MOST_SPREAD).all()
    assert np.abs(np.diff(np.asarray(target))).max() < 0.2  # Continuous.
  # Below a short side of about 2.4 pixels it is the box's, as without the rule.
  short_squared = jnp.full_like(long_squared, _antialias._PYRAMID_ONLY_SHORT_SQUARED[0])
  with_rule = _antialias._target_spread(plain_spread, long_squared, short_squared)
  monkeypatch.setattr(_antialias, "_PYRAMID_ONLY_SHORT_SQUARED", (1e9, 2e9))
  np.testing.assert_array_equal(
      with_rule, _antialias._target_spread(plain_spread, long_squared, short_squared))


@pytest.mark.parametrize("scale,degrees,image_reads,atlas_reads", [
    (0.25, 30, 0, 2), (0.5, 0, 1, 1), (1.0, 30, 1, 0)])
def test_which_reads_run(scale, degrees, image_reads, atlas_reads, monkeypatch):
  """Shrunk 4x, no point reads the image, only two levels of the pyramid; shrunk 2x
  along the axes, the image and level 1; not shrunk, the image alone. The atlas reads
  check no bounds, the image read does."""
  widths = []
  bilinear = _interpolation.bilinear

  def counted(array, coords, implementation, unchecked=False):
    assert unchecked == (array.shape[2] != 64)
    jax.debug.callback(lambda: widths.append(array.shape[2]))
    return bilinear(array, coords, implementation, unchecked)

  monkeypatch.setattr(_interpolation, "bilinear", counted)
  size = int(64 * scale)
  coords = stnjax.grid.source_pixels(rotation(degrees)[None], (64, 64), (size, size), False)
  jax.block_until_ready(jax.jit(lambda images, coords: _antialias.read(
      images, coords, "zeros", False, "xla"))(zone_plate(64)[None], coords))
  jax.effects_barrier()
  assert (widths.count(64), len(widths) - widths.count(64)) == (image_reads, atlas_reads)


def test_blur_grows_smoothly_with_the_zoom():
  """The output is continuous in the scale: no jumps where the levels change."""
  image = zone_plate(64)
  scales = np.linspace(1.0, 6.0, 201)
  outs = jax.vmap(lambda s: stnjax.sample(rotation(17) * s, image, (16, 16),
                                          antialias=True))(jnp.asarray(scales, jnp.float32))
  steps = np.abs(np.diff(np.asarray(outs), axis=0)).max(axis=(1, 2, 3))
  assert steps.max() < 10 * np.median(steps)


def test_pyramid_levels_and_atlas_layout():
  images = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 5, 9, 3)), jnp.float32)
  assert _pyramid.level_sizes(5, 9) == [(5, 9), (3, 5), (2, 3), (1, 2), (1, 1)]
  table = _pyramid.level_table(5, 9)
  atlas = np.asarray(jax.jit(lambda i: _pyramid.atlas(i, "zeros"))(images))
  assert atlas.shape == _pyramid.atlas_shape(images.shape)
  column = _pyramid.LEVEL_COLUMN
  outside = np.ones(atlas.shape[1:3], bool)
  for (row, height, width), level in zip(table.astype(int), range(1, 5)):
    block = atlas[:, row:row + height, column:column + width]
    assert block.shape[1:3] == _pyramid.level_sizes(5, 9)[level]
    assert np.abs(block).min() > 0
    outside[row:row + height, column:column + width] = False
    assert row >= 1 and column >= 1 and column + width + 1 <= atlas.shape[2]
  # Every level has a ring of zeros one pixel wide, two zero rows below it (three below
  # the last), and nothing but zeros around it.
  rows, heights = table[:, 0], table[:, 1]
  np.testing.assert_array_equal(rows[1:], rows[:-1] + heights[:-1] + 2)
  assert atlas.shape[1] == rows[-1] + heights[-1] + 3
  assert np.abs(atlas[:, outside]).max() == 0
  # Level 1 is the [1, 3, 3, 1] / 8 filter of the zero-padded image, every second pixel.
  taps = np.array([1, 3, 3, 1]) / 8
  padded = np.pad(np.asarray(images), ((0, 0), (1, 2), (1, 2), (0, 0)))
  expected = np.einsum("i,j,bijc->bc", taps, taps, padded[:, 2:6, 4:8])
  np.testing.assert_allclose(atlas[:, table[0, 0] + 1, column + 2], expected, rtol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_unchecked_atlas_reads_stay_in_the_atlas_and_read_each_level_padded(padding_mode):
  """The atlas reads check no bounds (`unchecked`). At the coordinates `_in_atlas` gives
  any point of any level (on it, at its edges, beyond it, infinite, NaN), every corner's
  index in the flattened atlas is inside it, and the read equals a checked read of that
  level alone: zero padding, or clamped to the level for border and reflection (whose
  coordinates are mirrored on the image before)."""
  edges = np.array([-np.inf, -1e30, -3.0, -1.0, -0.5, -1e-7, 0.0, 0.25, 1.0, 1.5])
  for height, width in [(1, 2), (2, 1), (5, 9), (8, 8), (33, 7)]:
    images = jnp.asarray(np.random.default_rng(height).uniform(
        0.5, 1.5, size=(2, height, width, 2)), jnp.float32)
    atlas = _pyramid.atlas(images, padding_mode)
    rows, columns = atlas.shape[1:3]
    for level, (row, level_height, level_width) in enumerate(
        _pyramid.level_table(height, width), start=1):
      along_x = np.concatenate([edges, level_width - 1 - edges, [np.nan, np.inf, 1e30]])
      along_y = np.concatenate([edges, level_height - 1 - edges, [np.nan, np.inf, 1e30]])
      at = [jnp.asarray(np.broadcast_to(c, (2,) + c.shape), jnp.float32)
            for c in np.meshgrid(along_x, along_y)]
      x, y = jax.jit(lambda x, y, l=level: _antialias._in_atlas(
          x, y, jnp.full(x.shape, l, jnp.int32), (height, width), padding_mode))(*at)
      first = np.floor(np.asarray(y)) * columns + np.floor(np.asarray(x))
      assert first.min() >= 0 and (first + columns + 1).max() < rows * columns
      read = _interpolation.bilinear(atlas, (x, y), "xla", unchecked=True)
      block = atlas[:, row:row + level_height,
                    _pyramid.LEVEL_COLUMN:_pyramid.LEVEL_COLUMN + level_width]
      mode = "zeros" if padding_mode == "zeros" else "border"
      padded = [_interpolation.apply_padding(c, size, mode, False)
                for c, size in zip(at, (level_width, level_height))]
      expected = _interpolation.bilinear(block, padded, "xla")
      finite = np.isfinite(np.asarray(at[0] + at[1]))
      np.testing.assert_allclose(np.asarray(read)[finite], np.asarray(expected)[finite],
                                 rtol=1e-6, atol=1e-7,
                                 err_msg=f"{height}x{width} level {level}")


def test_levels_are_placed_by_arithmetic_as_the_table_says():
  """The per-point level arithmetic (bit-built powers of two, the atlas rows from popcounts)
  agrees with the table the atlas is built from, for every level of many sizes."""
  for height, width in [(1, 2), (2, 1), (5, 9), (7, 7), (64, 48), (257, 100), (1000, 3),
                        (4097, 2)]:
    table = _pyramid.level_table(height, width)
    levels = jnp.arange(1, len(table) + 1, dtype=jnp.int32)
    place = jax.jit(lambda l, h=height, w=width: _antialias._place(l, h, w))(levels)
    np.testing.assert_array_equal(np.stack(place, axis=-1), table, err_msg=f"{height}x{width}")
  exponents = jnp.arange(-126, 128, dtype=jnp.int32)
  np.testing.assert_array_equal(_antialias._power_of_two(exponents),
                                2.0 ** np.arange(-126, 128, dtype=np.float64))
  values = np.float32(2.0) ** np.arange(0, 100, dtype=np.float32)
  values = np.concatenate([values, np.nextafter(values, np.float32(np.inf)),
                           np.nextafter(values[1:], np.float32(0))])
  np.testing.assert_array_equal(_antialias._floor_log2(jnp.asarray(values)),
                                np.floor(np.log2(values.astype(np.float64))).astype(np.int32))


@pytest.mark.parametrize("padding_mode,numpy_mode", [
    ("zeros", "constant"), ("border", "edge"), ("reflection", "symmetric")])
def test_each_level_filters_the_image_extended_as_its_padding_mode_says(padding_mode,
                                                                         numpy_mode):
  rng = np.random.default_rng(3)
  for size in range(1, 10):
    image = rng.uniform(size=(2, size, 3, 1)).astype(np.float32)
    half = (size + 1) // 2
    padded = np.pad(image, ((0, 0), (1, 2 * half + 1 - size), (0, 0), (0, 0)), mode=numpy_mode)
    expected = sum(weight * padded[:, start:start + 2 * half - 1:2]
                   for start, weight in enumerate(np.array([1, 3, 3, 1]) / 8))
    np.testing.assert_allclose(_pyramid._halve_axis(jnp.asarray(image), 1, padding_mode),
                               expected, rtol=1e-6, err_msg=f"size {size}")


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_the_atlas_transpose_is_the_filters_transpose(padding_mode):
  """The written-out transpose (`_pyramid._atlas_transpose_reference`) is autodiff's
  transpose of the atlas, for even and odd sizes, one pixel wide or high included."""
  rng = np.random.default_rng(4)
  for height, width in [(1, 2), (2, 1), (1, 7), (2, 2), (3, 3), (5, 9), (8, 6), (9, 4)]:
    images = jnp.asarray(rng.normal(size=(2, height, width, 2)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=_pyramid.atlas_shape(images.shape)), jnp.float32)
    autodiff, = jax.linear_transpose(
        lambda i: _pyramid._atlas_reference(i, padding_mode), images)(cotangent)
    written = _pyramid._atlas_transpose_reference(cotangent, padding_mode, (height, width))
    np.testing.assert_allclose(written, autodiff, rtol=1e-6, atol=1e-6,
                               err_msg=f"{height}x{width}")


def test_atlas_derivatives_of_every_order_and_vmap():
  """The atlas and its transpose are primitives: derivatives of both orders and modes
  against finite differences, the gradient against the reference's, vmap against a loop."""
  rng = np.random.default_rng(5)
  images = jnp.asarray(rng.uniform(size=(2, 5, 6, 1)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=_pyramid.atlas_shape(images.shape)), jnp.float32)
  loss = lambda i: jnp.sum(jnp.sin(3 * _pyramid.atlas(i, "reflection")) * weights)
  check_grads(loss, (images,), order=2, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)
  reference = lambda i: jnp.sum(jnp.sin(3 * _pyramid._atlas_reference(i, "reflection")) * weights)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(images), jax.grad(reference)(images),
                             rtol=1e-5, atol=1e-6)
  stacked = jnp.stack([images, images[::-1] * 2])
  mapped = jax.vmap(lambda i: _pyramid.atlas(i, "zeros"))(stacked)
  np.testing.assert_array_equal(mapped[1], _pyramid.atlas(stacked[1], "zeros"))
  transposed = jax.vmap(jax.grad(lambda i: jnp.sum(_pyramid.atlas(i, "border") * weights)))(
      stacked)
  np.testing.assert_allclose(transposed[1], jax.grad(
      lambda i: jnp.sum(_pyramid._atlas_reference(i, "border") * weights))(stacked[1]),
                             rtol=1e-5, atol=1e-6)


def test_modules_and_transforms_take_antialias():
  x = zone_plate(32)[None]
  # At initialization the transform is the identity: a 4x shrink of the whole image.
  expected = stnjax.sample(jnp.eye(2, 3), x[0], (8, 8), antialias=True)[None]
  module = stnjax.SpatialTransformer(out_shape=(8, 8), antialias=True)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(jax.jit(module.apply)(params, x), expected, atol=1e-6)
  family = stnjax.transforms.get("similarity")
  params = jnp.asarray([0.5, 0.2, 0.1, -0.1], jnp.float32)
  np.testing.assert_array_equal(
      stnjax.transforms.warp(family, params, x[0], (8, 8), antialias=True),
      stnjax.sample(family.theta(params), x[0], (8, 8), antialias=True))


@pytest.mark.slow
def test_nnx_module_takes_antialias():
  from flax import nnx
  x = zone_plate(32)[None]
  module = stnjax.nnx.SpatialTransformer((32, 32, 1), out_shape=(8, 8), antialias=True,
                                         rngs=nnx.Rngs(0))
  np.testing.assert_allclose(
      nnx.jit(lambda module, x: module(x))(module, x),
      stnjax.sample(jnp.eye(2, 3), x[0], (8, 8), antialias=True)[None], atol=1e-6)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(method="nearest"), ValueError, "bilinear sampling only"),
    (dict(padding_mode="constant"), ValueError, "not 'constant'"),
    (dict(antialias="yes"), TypeError, "True or False"),
])
def test_bad_options(kwargs, error, message):
  options = dict(antialias=True)
  options.update(kwargs)
  with pytest.raises(error, match=message):
    stnjax.sample(jnp.eye(2, 3), jnp.zeros((4, 4, 1)), **options)


def test_volumes_are_refused():
  with pytest.raises(ValueError, match="2-D images only"):
    stnjax.sample(jnp.eye(3, 4), jnp.zeros((4, 4, 4, 1)), antialias=True)
