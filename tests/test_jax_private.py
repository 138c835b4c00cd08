"""Each use of JAX beyond its documented API (stnjax/_jax_private.py), checked directly:
a JAX release that changes one fails here, in a test that names it."""

import contextlib

import jax
from jax.extend.core import Primitive
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from stnjax import _bilinear
from stnjax import _jax_private


@contextlib.contextmanager
def jax_changed(what):
  """Turns any error in the block into a failure that names the private use."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    pytest.fail(f"JAX changed {what}; see stnjax/_jax_private.py. "
                f"{type(error).__name__}: {error}")


def test_varying_axes_reads_the_manual_mesh_axes_an_array_varies_over():
  what = "how an array's type names the manual mesh axes it varies over (varying_axes)"
  mesh = jax.make_mesh((jax.device_count(),), ("a",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  seen = {}

  def per_device(sharded, replicated):
    seen["sharded"] = _jax_private.varying_axes(sharded)
    seen["replicated"] = _jax_private.varying_axes(replicated)
    seen["cast"] = _jax_private.varying_axes(jax.lax.pcast(replicated, "a", to="varying"))
    return sharded

  with jax_changed(what):
    outside = _jax_private.varying_axes(jnp.zeros(3))
    jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec("a"), PartitionSpec()),
                  out_specs=PartitionSpec("a"))(jnp.zeros(2 * jax.device_count()),
                                                jnp.zeros(3))
  expected = {"sharded": {"a"}, "replicated": set(), "cast": {"a"}}
  assert outside == frozenset() and seen == expected, (
      f"JAX changed {what}; see stnjax/_jax_private.py. Outside shard_map: {outside}; "
      f"inside: {seen}, expected {expected}.")


def test_compilations_counts_the_traces_lowerings_and_compilations_of_one_function():
  what = "the jax.monitoring events that report compilations (compilations)"

  def stnjax_private_probe(x):
    return x * 2 + 1

  probe = jax.jit(stnjax_private_probe)
  with jax_changed(what):
    with _jax_private.compilations("stnjax_private_probe") as first:
      probe(jnp.zeros(3)).block_until_ready()
    with _jax_private.compilations("stnjax_private_probe") as again:
      probe(jnp.ones(3)).block_until_ready()
    with _jax_private.compilations("stnjax_private_probe") as other_shape:
      probe(jnp.ones(4)).block_until_ready()
  assert first and other_shape and not again, (
      f"JAX changed {what}; see stnjax/_jax_private.py. Events of a first call: {first}; "
      f"of a second call (expected none): {again}; of a call with a new shape: {other_shape}.")
  assert all(e.startswith(_jax_private.COMPILE_EVENT_PREFIX) for e in first + other_shape)


# The public replacement for jax._src.dispatch.apply_primitive (`_bilinear.compiled_impl`):
# a primitive bound outside jit compiles on its own, also under jax.disable_jit(), once per
# set of parameters, and computes what it computes under jit.


def test_primitives_outside_jit_compile_once_and_match_jit():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 5, 7, 3)), jnp.float32)
  coords = tuple(jnp.asarray(np.random.default_rng(i).uniform(-1, 8, (2, 11)), jnp.float32)
                 for i in (1, 2))
  read = lambda i, c: _bilinear.read(i, c, "xla")
  jitted = jax.jit(read)(images, coords)
  np.testing.assert_array_equal(read(images, coords), jitted)
  with jax.disable_jit():
    np.testing.assert_array_equal(read(images, coords), jitted)
  with _jax_private.compilations(_bilinear.read_p.name) as compiled:
    np.testing.assert_array_equal(read(images + 0, coords), jitted)
  assert not compiled, f"A second call outside jit compiled again: {compiled}"


def test_derivatives_under_disable_jit_match_jit():
  images = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 6, 9, 2)), jnp.float32)
  coords = tuple(jnp.asarray(np.random.default_rng(i).uniform(0, 5, (2, 7)), jnp.float32)
                 for i in (5, 6))
  weights = jnp.asarray(np.random.default_rng(7).uniform(size=(2, 7, 2)), jnp.float32)

  def loss(images, coords):
    return jnp.sum(_bilinear.read(images, coords, "xla") * weights)

  gradient = jax.grad(loss, argnums=(0, 1))
  expected = jax.jit(gradient)(images, coords)
  with jax.disable_jit():
    eager = gradient(images, coords)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# `with_operand_types`: a lowering rule that passes its operands on in another order
# gives the next rule a context with their types in that order.

_swapped_concat_p = Primitive("stnjax_private_swapped_concat")
_swapped_concat_p.def_abstract_eval(
    lambda a, b: jax.core.ShapedArray((a.shape[0] + b.shape[0],), a.dtype))


def _swapped_concat_lowering(ctx, a, b):
  concat = mlir.lower_fun(lambda b, a: jnp.concatenate([b, a]), multiple_results=False)
  return concat(_jax_private.with_operand_types(ctx, (ctx.avals_in[1], ctx.avals_in[0])), b, a)


mlir.register_lowering(_swapped_concat_p, _swapped_concat_lowering)


def test_a_lowering_context_takes_other_operand_types():
  a, b = jnp.arange(2.0), jnp.arange(10.0, 13.0)
  try:
    out = jax.jit(_swapped_concat_p.bind)(a, b)
  except Exception as error:  # noqa: BLE001 (any failure means JAX changed it)
    raise AssertionError("JAX changed LoweringRuleContext.replace(avals_in=...); see "
                         f"stnjax/_jax_private.py: {error!r}") from error
  np.testing.assert_array_equal(out, [10.0, 11.0, 12.0, 0.0, 1.0])
