"""Every use of JAX beyond its documented API, in one place.

Each entry says what it does, why no public API serves, and which public API would
replace it. `tests/test_jax_private.py` checks each one directly, so a JAX release that
changes one fails there, in a test that names it.

Everything else in stnjax uses JAX's documented API, including the extension points JAX
documents for defining primitives ("JAX Internals: primitives", the FFI guide):
`jax.extend.core.Primitive`; `jax.interpreters.ad`, `batching` and `mlir` for their
rules (`ad.primitive_jvps`, `ad.primitive_transposes`, `ad.deflinear2`, `ad.Zero`,
`batching.primitive_batchers`, `mlir.register_lowering`, `mlir.lower_fun`); a lowering
context's `avals_in`; `jax.ffi`; and `jax.jit` with `jax.disable_jit(False)` to run a primitive on its own.
"""

import contextlib

import jax


def with_operand_types(ctx, avals_in):
  """The lowering context `ctx` with the operand types `avals_in` (for a lowering rule
  that hands its operands to another rule in another order).

  Why private: `ctx.replace` is a dataclass method of the context JAX passes to lowering
  rules; jax.extend lists the class (`jax.extend.lowering.LoweringRuleContext`, from jax
  0.10), but jax.extend promises no compatibility, and nothing documents building a
  context anew.
  Public replacement: `jax.ffi.ffi_lowering` taking the operand types, or an FFI call
  whose operand order is chosen at binding (`jax.ffi.ffi_call`, which has no custom
  transpose or batching rules of its own).
  """
  return ctx.replace(avals_in=tuple(avals_in))


def varying_axes(x):
  """The manual mesh axes (inside `shard_map`) that `x` varies over: a frozenset.

  Why private: `jax.typeof(x)` is public, but the attributes of the type it returns
  (`jax.core.ShapedArray`) are not documented. The varying axes are its
  `manual_axis_type.varying` from jax 0.10 on (the field `jax.ShapeDtypeStruct` documents,
  of type `jax.sharding.ManualAxisType`; `mat` is an undocumented alias) and its `vma`
  before (the spelling jax 0.7-0.9's shard_map guide showed).
  Public replacement: a documented accessor for an array type's varying manual axes.
  """
  aval = jax.typeof(x)
  manual_axis_type = getattr(aval, "manual_axis_type", None)
  return aval.vma if manual_axis_type is None else manual_axis_type.varying


# Why private: `jax.monitoring` (public) reports each trace, lowering and compilation of a
# jitted function to its listeners, but the event names (which start with this prefix)
# and their `fun_name` argument ("f" for the trace, "jit(f)" for the lowering and the
# compilation) are not documented.
# Public replacement: none counts one function's compilations; the private alternative
# is a jitted function's `_cache_size()`.
COMPILE_EVENT_PREFIX = "/jax/core/compile/"


@contextlib.contextmanager
def compilations(function_name):
  """Yields a list to which each trace, lowering or compilation of a jitted function
  named `function_name` within the block appends its event's name (for tests: a second
  call that does not compile leaves it empty)."""
  events = []

  def listen(event, duration, **kwargs):
    del duration
    if (event.startswith(COMPILE_EVENT_PREFIX)
        and kwargs.get("fun_name") in (function_name, f"jit({function_name})")):
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
