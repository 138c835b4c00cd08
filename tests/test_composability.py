"""Every public function and module under every JAX transformation, with the defaults.

Each case is a function of float arrays. Its first and second derivatives, forward and
reverse (jvp, vjp, jvp of jvp, vjp of vjp), are checked against central finite
differences at points that keep every sampling position at least 0.1 pixel from the
kinks of the samplers (whole and half pixels), where those differences are exact up to
rounding. Every other transformation is checked against one already checked: jacfwd
against jacrev, hessian against finite differences of the gradient, linearize against
jvp, vmap against a loop, checkpoint, shard_map and jax.export (cpu, cuda, tpu; called
back on this host) against the plain call. Bilinear cases, whose derivatives come from
stnjax's primitives, are also compared with a plain-autodiff sampler written here.
"""

import functools

from flax import nnx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import stnjax
from stnjax import _corners
from stnjax import _cpu_kernel
from stnjax import _interpolation
from stnjax import transforms

# Every check here compares to a tolerance, over hundreds of compiled programs.
pytestmark = pytest.mark.usefixtures("fast_compiles")

IN_SHAPE = (5, 7)
OUT_SHAPE = (3, 4)
# s = 0.54 and t = 0.09 keep every sampled point >= 0.1 px from whole and half pixels
# at these sizes (checked by `assert_clear_of_kinks`).
THETA = np.array([[[0.54, 0.0, 0.09], [0.0, 0.54, 0.09]]] * 2, np.float32)
FINITE_DIFFERENCE_STEP = 2e-3
TOLERANCE = dict(atol=2e-3, rtol=2e-3)
METHODS = ("bilinear", "nearest", "bicubic")


def random_array(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


IMAGE = random_array((2,) + IN_SHAPE + (1,), 0)


def assert_clear_of_kinks(grid, in_shape, align_corners=False, margin=0.09):
  pixels = np.asarray(stnjax.normalized_to_pixel(grid, in_shape, align_corners=align_corners))
  distance = np.abs(pixels * 2 - np.round(pixels * 2)) / 2
  assert distance.min() >= margin, distance.min()


def plain_bilinear(image, grid, padding_mode, align_corners):
  """Bilinear (trilinear) grid_sample by plain autodiff of gathers: no stnjax primitive."""
  dims = grid.shape[-1]
  spatial = image.shape[-dims - 1:-1]
  pixels = stnjax.normalized_to_pixel(grid, spatial, align_corners=align_corners)
  batch = image.shape[0]
  coords = [_interpolation.apply_padding(pixels[..., axis], size, padding_mode,
                                         align_corners).reshape(batch, -1)
            for axis, size in enumerate(spatial[::-1])]
  out = _corners.read(image, *coords)
  return out.reshape(grid.shape[:-1] + image.shape[-1:])


class Case:
  """A function of float arrays, the point to check it at, and a plain reference."""

  def __init__(self, name, function, args, reference=None, second_order=True,
               step=FINITE_DIFFERENCE_STEP, tolerance=TOLERANCE, float64=False,
               export_checks=(), second_step=FINITE_DIFFERENCE_STEP,
               second_tolerance=TOLERANCE):
    self.name, self.function, self.args = name, function, tuple(args)
    # The CPU kernel's custom call has no compatibility guarantee: export asks the
    # caller to say so.
    self.export_checks = export_checks
    self.reference, self.second_order = reference, second_order
    # Modules: finite differences in float64 with a tiny step for the localization
    # nets (ReLU kinks); a smaller float32 step for the spatial transformers.
    self.step, self.tolerance, self.float64 = step, tolerance, float64
    # Second derivatives: float32 central differences of the first.
    self.second_step, self.second_tolerance = second_step, second_tolerance

  def __repr__(self):
    return self.name

  @property
  def param(self):
    """The case as a pytest parameter; marked slow where another case covers the same
    reads (a method's extra padding modes, whose derivatives test_parity.py checks
    against PyTorch's; grid_sample beside sample, the warps of the affine families
    beside warp-affine and their .theta cases, the linear 3-D families, the widest preset,
    integrate_velocity beside warp_flow, antialiased sampling),
    so that the default run stays short: `pytest -m slow` runs these."""
    slow = (any(self.name.startswith(f"sample-{m}-{p}") for m in METHODS
                for p in ("border", "reflection"))
            or self.name in ("grid_sample-nearest", "grid_sample-bicubic")
            # sample(family.theta(params)): the .theta cases and warp-affine cover them.
            or self.name in ("warp-translation", "warp-scale_translation", "warp-similarity")
            or "IdsiaLocalization" in self.name
            or self.name == "integrate_velocity"  # Its steps are warp_flow's reads.
            # Two minutes of compiling; test_antialias.py checks its first derivatives,
            # jit and vmap in the default run.
            or self.name == "sample-antialias"
            # Linear in their params, beside rigid_3d and similarity_3d.
            or self.name in ("affine_3d.theta", "translation_3d.theta",
                             "scale_translation_3d.theta"))
    return pytest.param(self, id=self.name, marks=[pytest.mark.slow] if slow else [])


def sampler_cases():
  cases = []
  grid = stnjax.affine_grid(THETA, OUT_SHAPE)
  assert_clear_of_kinks(grid, IN_SHAPE)
  for method in ("bilinear", "nearest", "bicubic"):
    for padding_mode in ("zeros", "border", "reflection"):
      options = dict(method=method, padding_mode=padding_mode)
      reference = None
      if method == "bilinear":
        reference = lambda theta, image, p=padding_mode: plain_bilinear(
            image, stnjax.affine_grid(theta, OUT_SHAPE), p, False)
      cases.append(Case(f"sample-{method}-{padding_mode}",
                        functools.partial(stnjax.sample, out_shape=OUT_SHAPE, **options),
                        (THETA, IMAGE), reference))
    cases.append(Case(f"grid_sample-{method}",
                      lambda grid, image, m=method: stnjax.grid_sample(image, grid, method=m),
                      (grid, IMAGE)))
  aligned = stnjax.affine_grid(THETA, OUT_SHAPE, align_corners=True)
  assert_clear_of_kinks(aligned, IN_SHAPE, align_corners=True)
  cases.append(Case("sample-bilinear-aligned",
                    functools.partial(stnjax.sample, out_shape=OUT_SHAPE, align_corners=True),
                    (THETA, IMAGE),
                    lambda theta, image: plain_bilinear(
                        image, stnjax.affine_grid(theta, OUT_SHAPE, align_corners=True),
                        "zeros", True)))
  if stnjax.has_cpu_kernel():
    cases.append(Case("sample-bilinear-cpu_kernel",
                      functools.partial(stnjax.sample, out_shape=OUT_SHAPE,
                                        implementation="cpu_kernel"),
                      (THETA, IMAGE), cases[0].reference,
                      export_checks=(jax.export.DisabledSafetyCheck.custom_call(
                          _cpu_kernel.TARGET),)))
  return cases


def family_params(name):
  """Params near THETA's scale and shift for each family (all clear of kinks)."""
  scale, shift = 0.54, 0.09
  params = {
      "affine": THETA.reshape(2, 6),
      "translation": np.full((2, 2), shift),
      "scale_translation": np.array([[scale, shift, shift]] * 2),
      "similarity": np.array([[0.0, np.log(scale), shift, shift]] * 2),
      "projective": np.concatenate([THETA.reshape(2, 6), np.zeros((2, 2))], axis=1),
      # Equal offsets at every control point: a translation.
      "tps": np.full((2, 32), shift),
  }[name]
  return jnp.asarray(params, jnp.float32)


def transform_cases():
  cases = []
  for name in transforms.names(dims=2):
    family = transforms.get(name)
    params = family_params(name)
    out_shape = IN_SHAPE if name in ("translation", "tps") else OUT_SHAPE
    assert_clear_of_kinks(family.grid(params, out_shape), IN_SHAPE)
    cases.append(Case(f"warp-{name}",
                      lambda p, image, f=family, s=out_shape: transforms.warp(f, p, image, s),
                      (params, IMAGE),
                      lambda p, image, f=family, s=out_shape: plain_bilinear(
                          image, f.grid(p, s), "zeros", False)))
    cases.append(Case(f"{name}.grid", lambda p, f=family: f.grid(p, OUT_SHAPE), (params,)))
    if family.theta is not None:
      cases.append(Case(f"{name}.theta", family.theta, (params,)))
  return cases


def grid_function_cases():
  coords = random_array((2, 3, 2), 4)
  homography = jnp.asarray([[1.1, 0.1, 0.5], [-0.2, 0.9, 0.3], [0.01, 0.02, 1.0]], jnp.float32)
  return [
      Case("affine_grid", lambda t: stnjax.affine_grid(t, OUT_SHAPE), (THETA,)),
      Case("affine_grid-projective", lambda t: stnjax.affine_grid(t, OUT_SHAPE),
           (jnp.asarray(np.stack([np.eye(3) * 0.9] * 2) + 0.05, jnp.float32),)),
      Case("normalized_to_pixel", lambda c: stnjax.normalized_to_pixel(c, IN_SHAPE), (coords,)),
      Case("pixel_to_normalized", lambda c: stnjax.pixel_to_normalized(c, IN_SHAPE), (coords,)),
      Case("pixel_matrix_from_theta",
           lambda t: stnjax.pixel_matrix_from_theta(t, IN_SHAPE, OUT_SHAPE), (THETA,)),
      Case("theta_from_pixel_matrix",
           lambda m: stnjax.theta_from_pixel_matrix(m, IN_SHAPE), (homography,)),
      # The four derivatives of the antialiased footprint, stacked into one array.
      Case("grid.source_jacobian", lambda t: jnp.stack(jax.tree.leaves(
          stnjax.grid.source_jacobian(t, IN_SHAPE, OUT_SHAPE, False)), axis=-1), (THETA,)),
  ]


VOLUME_IN_SHAPE, VOLUME_OUT_SHAPE = (4, 5, 7), (2, 3, 4)
VOLUME_THETA = np.array([[[0.54, 0.0, 0.0, 0.09], [0.0, 0.54, 0.0, 0.09],
                          [0.0, 0.0, 0.54, 0.09]]] * 2, np.float32)
# Reads reach past the border, where the fill shows.
ZOOMED_OUT_THETA = np.array([[[1.5, 0.0, 0.08], [0.0, 1.5, 0.08]]] * 2, np.float32)


def volume_and_flow_cases():
  volume = random_array((2,) + VOLUME_IN_SHAPE + (2,), 5)
  assert_clear_of_kinks(stnjax.affine_grid(VOLUME_THETA, VOLUME_OUT_SHAPE), VOLUME_IN_SHAPE)
  assert_clear_of_kinks(stnjax.affine_grid(ZOOMED_OUT_THETA, IN_SHAPE), IN_SHAPE)
  # Every read 0.21-0.41 px past a pixel centre.
  flow = 0.31 + 0.1 * random_array((2,) + IN_SHAPE + (2,), 6)
  velocity = 0.5 + 0.1 * random_array((2,) + IN_SHAPE + (2,), 7)
  return [
      Case("sample-volume", functools.partial(stnjax.sample, out_shape=VOLUME_OUT_SHAPE),
           (VOLUME_THETA, volume),
           lambda theta, volume: plain_bilinear(
               volume, stnjax.affine_grid(theta, VOLUME_OUT_SHAPE), "zeros", False)),
      Case("sample-constant_fill",
           lambda theta, image, fill: stnjax.sample(theta, image, padding_mode="constant",
                                                    fill_value=fill),
           (ZOOMED_OUT_THETA, IMAGE, jnp.array([0.7], jnp.float32))),
      Case("warp_flow", stnjax.warp_flow, (IMAGE, flow)),
      Case("integrate_velocity", lambda v: stnjax.integrate_velocity(v, num_steps=2),
           (velocity,)),
  ]


def ndimage_cases():
  """map_coordinates (scipy's conventions: no channel axis, (row, col) points) at points
  0.2-0.8 px from the pixels and inside the image, away from mirror's folds."""
  image = random_array(IN_SHAPE, 8)
  rng = np.random.default_rng(9)
  points = np.stack([rng.integers(1, size - 2, 12) + rng.uniform(0.2, 0.8, 12)
                     for size in IN_SHAPE]).astype(np.float32)
  return [
      Case("map_coordinates-order1",
           lambda image, points: stnjax.map_coordinates(image, points, 1), (image, points)),
      # Order 3 has continuous second derivatives everywhere; the prefilter included.
      Case("map_coordinates-order3",
           lambda image, points: stnjax.map_coordinates(image, points, 3, "mirror"),
           (image, points)),
  ]


def antialias_cases():
  """Antialiased sampling between levels 0 and 1 (first image) and 1 and 2 (second), each
  read >= 0.1 px from the whole pixels of its levels and each blend inside (0.1, 0.9)."""
  theta = np.array([[[0.84, -0.01, 0.0], [0.01, 0.75, -0.02]],
                    [[2.24, 0.0, 0.0], [0.0, 1.87, -0.06]]], np.float32)
  image = random_array((2, 8, 12, 1), 8)
  # Curved there (the blend is a ratio of the reads' spreads): second differences
  # with a halved step, whose truncation error is a quarter.
  return [Case("sample-antialias",
               functools.partial(stnjax.sample, out_shape=OUT_SHAPE, antialias=True),
               (theta, image), second_step=FINITE_DIFFERENCE_STEP / 2)]


def volume_family_and_geometry_cases():
  """The 3-D families' theta and grid, and the geometry helpers: smooth functions."""
  quaternion = jnp.asarray([[0.9, 0.2, -0.3, 0.1]] * 2, jnp.float32)
  params = {
      "affine_3d": VOLUME_THETA.reshape(2, 12),
      "translation_3d": np.full((2, 3), 0.09),
      "scale_translation_3d": np.array([[0.54, 0.09, 0.09, 0.09]] * 2),
      "rigid_3d": np.concatenate([quaternion, np.full((2, 3), 0.09)], axis=1),
      "similarity_3d": np.concatenate([quaternion, np.full((2, 1), -0.6),
                                       np.full((2, 3), 0.09)], axis=1),
  }
  cases = []
  for name in transforms.names(dims=3):
    family = transforms.get(name)
    cases.append(Case(f"{name}.theta", family.theta,
                      (jnp.asarray(params[name], jnp.float32),)))
  cases.append(Case("rigid_3d.grid", lambda p: transforms.rigid_3d().grid(p, VOLUME_OUT_SHAPE),
                    (jnp.asarray(params["rigid_3d"], jnp.float32),)))
  square = np.array([[0, 0], [6, 0], [6, 4], [0, 4]], np.float32)
  quad = square + np.array([[0.3, -0.2], [0.5, 0.4], [-0.4, 0.2], [0.1, 0.3]], np.float32)
  return cases + [
      Case("rotation_matrix", stnjax.rotation_matrix,
           (jnp.asarray([[3.0, 2.0]] * 2), jnp.asarray([30.0, -50.0]), jnp.asarray([0.9, 1.2]))),
      Case("perspective_matrix", stnjax.perspective_matrix,
           (jnp.asarray(np.stack([square] * 2)), jnp.asarray(np.stack([quad] * 2)))),
      Case("invert_theta", stnjax.invert_theta, (jnp.asarray(THETA),)),
      Case("invert_theta-volume", stnjax.invert_theta, (jnp.asarray(VOLUME_THETA),)),
      Case("compose_theta", stnjax.compose_theta,
           (jnp.asarray(THETA), jnp.asarray(THETA)[..., ::-1, :])),
      Case("theta_from_boxes", lambda boxes: stnjax.theta_from_boxes(boxes, IN_SHAPE),
           (jnp.asarray([[1.0, 0.5, 5.5, 4.0]] * 2),)),
  ]


# The spatial transformers' regression bias: scale 0.5 and shift -0.125 (for the affine
# family; a shift of 0.06 for TPS) keep 12x12 -> 6x6 (TPS: 12x12) reads clear of kinks.
# Two steps (iterations=2) at scale 0.5 without a shift keep both the 12x12 glimpse and
# the 6x6 output (scale 0.25) clear of kinks.
MODULE_BIAS = {"affine": [0.5, 0.0, -0.125, 0.0, 0.5, -0.125], "tps": [0.06] * 32,
               "affine-iterations": [0.5, 0.0, 0.0, 0.0, 0.5, 0.0]}


def perturbed(tree, scale=1e-3, iterated=False):
  """Small random changes to every parameter, so that the localization net moves the
  transform; a spatial transformer's regression bias is set to MODULE_BIAS."""
  def change(path, leaf):
    names = "/".join(str(getattr(k, "key", k)) for k in path)
    if "regression" in names and "bias" in names:
      family = "tps" if leaf.shape[-1] % 32 == 0 else "affine"
      family += "-iterations" if iterated else ""
      return jnp.asarray(np.resize(MODULE_BIAS[family], leaf.shape), leaf.dtype)
    return leaf + scale * random_array(leaf.shape, len(names))
  return jax.tree_util.tree_map_with_path(change, tree)


MODULE_CHECKS = dict(second_order=False, step=2e-4, tolerance=dict(atol=1e-2, rtol=1e-2))
LOCALIZATION_CHECKS = dict(second_order=False, step=1e-7, float64=True,
                           tolerance=dict(atol=1e-4, rtol=1e-4))


def linen_case(name, module, x):
  variables = perturbed(module.init(jax.random.key(0), x),
                        iterated=getattr(module, "iterations", 1) > 1)
  if isinstance(module, stnjax.SpatialTransformer):
    assert_reads_clear_of_kinks(module.apply(variables, x, return_transform=True)[1], module)
  checks = MODULE_CHECKS if isinstance(module, stnjax.SpatialTransformer) else LOCALIZATION_CHECKS
  return Case(name, lambda x: module.apply(variables, x), (x,), **checks)


def nnx_case(name, module, x):
  graph, state = nnx.split(module)
  state = perturbed(state)
  if isinstance(module, stnjax.nnx.SpatialTransformer):
    transformed = nnx.merge(graph, state)(x, return_transform=True)[1]
    assert_reads_clear_of_kinks(transformed, module)
  checks = (MODULE_CHECKS if isinstance(module, stnjax.nnx.SpatialTransformer)
            else LOCALIZATION_CHECKS)
  return Case(name, lambda x: nnx.merge(graph, state)(x), (x,), **checks)


def assert_reads_clear_of_kinks(transform_output, module):
  grid = transform_output.grid
  if grid is None:
    grid = stnjax.affine_grid(transform_output.theta, module.out_shape or (12, 12))
  assert_clear_of_kinks(grid, (12, 12), margin=0.05)
  if getattr(module, "iterations", 1) > 1:  # And the glimpse each later step sees.
    theta = transforms.affine().theta(transform_output.params[:, 0])
    for step in range(1, module.iterations):
      assert_clear_of_kinks(stnjax.affine_grid(theta, (12, 12)), (12, 12), margin=0.05)
      step_theta = transforms.affine().theta(transform_output.params[:, step])
      theta = stnjax.compose_theta(theta, step_theta)


MODULE_INPUT = random_array((2, 12, 12, 1), 5)
MODULES = {
    "linen.SpatialTransformer": stnjax.SpatialTransformer(out_shape=(6, 6)),
    "linen.SpatialTransformer-2iterations": stnjax.SpatialTransformer(out_shape=(6, 6),
                                                                      iterations=2),
    "linen.SpatialTransformer-tps-2heads": stnjax.SpatialTransformer(
        transform="tps", num_heads=2, heads="concat"),
    "nnx.SpatialTransformer": stnjax.nnx.SpatialTransformer((12, 12, 1), out_shape=(6, 6),
                                                            rngs=nnx.Rngs(0)),
}
for _preset in ("TutorialLocalization", "PaperMnistLocalization", "IdsiaLocalization"):
  MODULES[f"linen.{_preset}"] = getattr(stnjax.linen, _preset)(padding="SAME")
  MODULES[f"nnx.{_preset}"] = getattr(stnjax.nnx, _preset)((12, 12, 1), padding="SAME",
                                                           rngs=nnx.Rngs(0))


def module_cases():
  return [(linen_case if name.startswith("linen") else nnx_case)(name, module, MODULE_INPUT)
          for name, module in MODULES.items()]


CASES = (sampler_cases() + transform_cases() + grid_function_cases() + volume_and_flow_cases()
         + ndimage_cases() + antialias_cases() + volume_family_and_geometry_cases() + module_cases())


def scalar_loss(case):
  """`<function(args), W>` for a fixed random W: a scalar to differentiate."""
  out_shape = jax.eval_shape(case.function, *case.args).shape
  weights = random_array(out_shape, 7)
  return lambda *args: jnp.vdot(case.function(*args), weights)


def assert_trees_close(actual, expected, **tolerance):
  tolerance = tolerance or TOLERANCE
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a, np.float64),
                                                       np.asarray(e, np.float64), **tolerance),
               actual, expected)


def random_tangents(args, seed):
  leaves, tree = jax.tree.flatten(args)
  return jax.tree.unflatten(tree, [random_array(l.shape, seed + i) for i, l in enumerate(leaves)])


def shifted(args, tangents, step):
  return jax.tree.map(lambda a, t: a + step * t, args, tangents)


def central_difference(function, args, tangents, step=FINITE_DIFFERENCE_STEP, float64=False):
  """(f(args + step t) - f(args - step t)) / 2 step; with float64, in double precision
  (for ReLU nets: a step small enough never to straddle a kink)."""
  if float64:
    with jax.enable_x64(True):
      as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
      return jax.tree.map(np.asarray, central_difference(function, as64(args), as64(tangents),
                                                         step))
  return jax.tree.map(lambda plus, minus: (plus - minus) / (2 * step),
                      function(*shifted(args, tangents, step)),
                      function(*shifted(args, tangents, -step)))


def single_argument(case, args):
  """The case as a function of one pytree (for jacfwd, jacrev, hessian)."""
  return lambda packed: case.function(*packed)


ALL_CASES = [case.param for case in CASES]
# For jit against the plain call, every case by default but antialiased sampling, whose
# compiling takes minutes (test_antialias.py checks its jit, vmap and gradients).
EVERY_CASE = [pytest.param(case, id=case.name,
                           marks=[pytest.mark.slow] if case.name == "sample-antialias" else [])
              for case in CASES]


@pytest.mark.parametrize("case", EVERY_CASE)
def test_jit_and_plain_reference(case):
  expected = case.function(*case.args)
  with jax.disable_jit():
    assert_trees_close(case.function(*case.args), expected, atol=1e-5, rtol=1e-5)
  assert_trees_close(jax.jit(case.function)(*case.args), expected, atol=1e-5, rtol=1e-5)
  if case.reference is not None:
    assert_trees_close(expected, case.reference(*case.args), atol=1e-5, rtol=1e-5)


def dot(tree, other):
  return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, tree, other)))


@pytest.mark.parametrize("case", ALL_CASES)
def test_first_and_second_derivatives_match_finite_differences(case):
  loss = scalar_loss(case)
  argnums = tuple(range(len(case.args)))
  tangents = random_tangents(case.args, 10)
  # jvp and grad (reverse mode) against central differences of the function.
  forward = jax.jit(lambda *args: jax.jvp(case.function, args, tangents)[1])(*case.args)
  function = case.function if case.float64 else jax.jit(case.function)
  assert_trees_close(forward, central_difference(function, case.args, tangents, case.step,
                                                case.float64), **case.tolerance)
  grad_of = jax.jit(jax.grad(loss, argnums))
  directional = dot(grad_of(*case.args), tangents)
  assert_trees_close(directional, central_difference(loss, case.args, tangents, case.step,
                                                    case.float64), **case.tolerance)
  if not case.second_order:
    return
  # Forward over forward, reverse over reverse, forward over reverse and the Hessian,
  # against central differences of the first derivatives.
  other = random_tangents(case.args, 20)
  jvp_of = jax.jit(lambda *args: jax.jvp(case.function, args, tangents)[1])
  second_forward = jax.jit(lambda *args: jax.jvp(jvp_of, args, other)[1])(*case.args)
  assert_trees_close(second_forward, central_difference(jvp_of, case.args, other, case.second_step),
                     **case.second_tolerance)
  expected = central_difference(grad_of, case.args, other, case.second_step)
  grad_of_grad = jax.jit(jax.grad(lambda *args: dot(grad_of(*args), other), argnums))
  assert_trees_close(grad_of_grad(*case.args), expected, **case.second_tolerance)
  assert_trees_close(jax.jit(lambda *args: jax.jvp(grad_of, args, other)[1])(*case.args),
                     expected, **case.second_tolerance)
  flat_args, unravel = jax.flatten_util.ravel_pytree(case.args)
  hessian = jax.jit(jax.hessian(lambda flat: loss(*unravel(flat))))(flat_args)
  flat_other = jax.flatten_util.ravel_pytree(other)[0]
  assert_trees_close(hessian @ flat_other, jax.flatten_util.ravel_pytree(expected)[0],
                     **case.second_tolerance)
  if case.reference is not None:
    reference_loss = scalar_loss(Case("reference", case.reference, case.args))
    reference = jax.jit(jax.hessian(lambda flat: reference_loss(*unravel(flat))))(flat_args)
    assert_trees_close(reference, hessian, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ALL_CASES)
def test_jacobians_linearize_vmap_and_checkpoint(case):
  function = single_argument(case, case.args)
  forward = jax.jit(jax.jacfwd(function))(case.args)
  reverse = jax.jit(jax.jacrev(function))(case.args)
  assert_trees_close(forward, reverse, atol=1e-5, rtol=1e-5)
  tangents = random_tangents(case.args, 30)
  out, linear = jax.linearize(case.function, *case.args)
  assert_trees_close(jax.jit(linear)(*tangents),
                     jax.jit(lambda *args: jax.jvp(case.function, args, tangents)[1])(*case.args),
                     atol=1e-5, rtol=1e-5)
  # vmap over a stack of two points against the function at each.
  second = shifted(case.args, tangents, 0.01)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), case.args, second)
  mapped = jax.jit(jax.vmap(case.function))(*stacked)
  assert_trees_close(jax.tree.map(lambda m: m[0], mapped), out, atol=1e-5, rtol=1e-5)
  assert_trees_close(jax.tree.map(lambda m: m[1], mapped), case.function(*second),
                     atol=1e-5, rtol=1e-5)
  loss = scalar_loss(case)
  argnums = tuple(range(len(case.args)))
  grad_of = jax.jit(jax.grad(loss, argnums))
  mapped_grads = jax.jit(jax.vmap(jax.grad(loss, argnums)))(*stacked)
  assert_trees_close(jax.tree.map(lambda m: m[1], mapped_grads), grad_of(*second),
                     atol=1e-5, rtol=1e-5)
  assert_trees_close(jax.jit(jax.grad(jax.checkpoint(loss), argnums))(*case.args),
                     grad_of(*case.args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ALL_CASES)
def test_shard_map_and_export(case):
  loss = scalar_loss(case)
  argnums = tuple(range(len(case.args)))
  gradient = jax.jit(jax.grad(loss, argnums))
  # shard_map over the devices this host has (one on a plain CPU machine), each
  # computing the function and a gradient on its share of nothing: replicated inputs.
  mesh = jax.make_mesh((len(jax.devices()),), ("devices",))
  spec = jax.sharding.PartitionSpec()
  sharded = jax.jit(jax.shard_map(lambda *args: (case.function(*args), gradient(*args)),
                                  mesh=mesh, in_specs=spec, out_specs=spec))
  out, grads = sharded(*case.args)
  assert_trees_close(out, case.function(*case.args), atol=1e-5, rtol=1e-5)
  assert_trees_close(grads, gradient(*case.args), atol=1e-5, rtol=1e-5)
  # jax.export for every platform, serialized and called back here: forward and the
  # gradient of a training loss.
  for function in (jax.jit(case.function), gradient):
    assert_exports(function, case.args, case.export_checks)


def assert_exports(function, args, disabled_checks=()):
  """jax.export for cpu, cuda and tpu, serialized and called back here."""
  exported = jax.export.export(function, platforms=("cpu", "cuda", "tpu"),
                               disabled_checks=disabled_checks)(*args)
  restored = jax.export.deserialize(exported.serialize())
  assert_trees_within_roundings(restored.call(*args), function(*args))


def assert_trees_within_roundings(actual, expected, roundings=16):
  """Two compilations of one function agree leaf by leaf to `roundings` roundings of the
  leaf's largest magnitude (at least 1e-6): XLA may fuse and sum them in another order.

  A float32 result is not exact: the tps-2heads module gradient's largest leaf (|g| up
  to 17) is 8e-6 = 4 float32 roundings of 17 from its float64 value, on jax 0.10.2 and
  0.12.1 alike. Two compilations within that of it differ by up to twice that; 16 leaves
  a factor of 2. A real difference (a wrong term) moves a leaf by far more.
  """
  def check(a, e):
    e = np.asarray(e)
    eps = float(jnp.finfo(e.dtype).eps) if jnp.issubdtype(e.dtype, jnp.floating) else 0.0
    scale = float(np.abs(e.astype(np.float64)).max(initial=0.0))
    np.testing.assert_allclose(np.asarray(a, np.float64), e.astype(np.float64), rtol=1e-6,
                               atol=max(1e-6, roundings * eps * scale))
  jax.tree.map(check, actual, expected)


@pytest.mark.parametrize("name", list(MODULES))
def test_module_training_gradient_under_jit_shard_map_and_export(name):
  """The gradient of a loss with respect to a module's parameters: a training step."""
  module = MODULES[name]
  if name.startswith("linen"):
    params = perturbed(module.init(jax.random.key(0), MODULE_INPUT))
    apply = lambda params, x: module.apply(params, x)
  else:
    graph, params = nnx.split(module)
    params = perturbed(params)
    apply = lambda params, x: nnx.merge(graph, params)(x)
  weights = random_array(jax.eval_shape(apply, params, MODULE_INPUT).shape, 8)
  loss = lambda params, x: jnp.vdot(apply(params, x), weights)
  gradient = jax.jit(jax.grad(loss))
  expected = gradient(params, MODULE_INPUT)
  # Against central differences along a random direction in parameter space.
  direction = random_tangents(params, 40)
  directional = sum(jax.tree.leaves(jax.tree.map(jnp.vdot, expected, direction)))
  transformer = "SpatialTransformer" in name
  assert_trees_close(directional, central_difference(
      lambda p: loss(p, MODULE_INPUT), (params,), (direction,), step=2e-4 if transformer else 1e-7,
      float64=not transformer), atol=1e-2 if transformer else 1e-4, rtol=1e-2)
  mesh = jax.make_mesh((len(jax.devices()),), ("devices",))
  spec = jax.sharding.PartitionSpec()
  sharded = jax.jit(jax.shard_map(gradient, mesh=mesh, in_specs=spec, out_specs=spec))
  assert_trees_close(sharded(params, MODULE_INPUT), expected, atol=1e-5, rtol=1e-5)
  # Exported functions take arrays, lists and dicts: pass the parameters as a list.
  leaves, structure = jax.tree.flatten(params)
  flat_gradient = jax.jit(lambda leaves, x: jax.tree.leaves(
      gradient(jax.tree.unflatten(structure, leaves), x)))
  assert_exports(flat_gradient, (leaves, MODULE_INPUT))
