"""Bilinear sampling as JAX primitives, so that every transformation composes with it.

Four primitives, in two pairs that are each other's transposes:

  * `read_p(images, *coords)`: the bilinear (trilinear) read, linear in the images,
    and `image_gradient_p(cotangent, *coords)`, its transpose in the images;
  * `coordinate_tangent_p(*tangents, images, *coords)`: the read's change along
    tangents of the coordinates (its JVP in them), linear in the tangents, and
    `coordinate_cotangent_p(cotangent, images, *coords)`, its transpose: the gradient
    with respect to the coordinates, recomputed from the image in the backward pass
    rather than stored.

`read_p`'s JVP is `read_p` of the image's tangent plus `coordinate_tangent_p`, linear
in the tangents, so JAX transposes it for reverse mode. The other three differentiate
in their nonlinear arguments by plain autodiff of the reference code in `_corners`, so
derivatives of every order and mode hold. Batching folds the mapped axis into the
image batch. Each lowers to the reference code; on the CPU the backward pieces run
in a loop over chunks of the batch: the coordinate pieces over two halves
(`_corners.in_two_chunks`) with written-out channel sums and the coordinate gradient's
components in one loop; the image gradient over chunks whose gradient fits in cache
(`_corners.in_chunks`), or in the compiled kernel for 2-D images with
`implementation="cpu_kernel"`.

Every bind goes through `bind`: inside `shard_map` the operands are made to vary over
the same mesh axes, and arrays whose types carry explicit sharding are read per device
(`shard_map` over the axes that shard the batch).

Each primitive takes `unchecked`: no bounds checks, for callers that promise every
corner inside the flattened batch (`_corners.corners`; the antialiased atlas reads).

Shapes: images float32 `[B, *spatial, C]` with spatial `(H, W)` or `(D, H, W)`;
coords `(x, y)` or `(x, y, z)` and their tangents float32 `[B, N]` (padding applied);
reads and their cotangents float32 `[B, N, C]`.
"""

import functools
import math

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp

from stnjax import _corners
from stnjax import _cpu_kernel
from stnjax import _jax_private

read_p = Primitive("stnjax_bilinear_read")
image_gradient_p = Primitive("stnjax_bilinear_image_gradient")
coordinate_tangent_p = Primitive("stnjax_bilinear_coordinate_tangent")
coordinate_cotangent_p = Primitive("stnjax_bilinear_coordinate_cotangent")
coordinate_cotangent_p.multiple_results = True


def read(images, coords, implementation, unchecked=False):
  return bind(read_p, images, *coords, implementation=implementation,
              unchecked=unchecked)


# Binding under shard_map and explicit sharding. Every operand's leading axis is the
# image batch, and image i's points read only image i.


def _explicit_axes(aval, dim):
  """The explicit mesh axes that shard axis `dim` of an array's type, as a tuple."""
  sharding = getattr(aval, "sharding", None)
  if sharding is None or sharding.mesh.empty or dim >= len(sharding.spec):
    return ()
  entry = sharding.spec[dim]
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
  return tuple(n for n in names if types[n] == jax.sharding.AxisType.Explicit)


def bind(primitive, *args, **params):
  """`primitive.bind`, also with operands whose types carry explicit sharding: sharded
  along the batch, each device reads its own images (`shard_map` over those axes);
  sharded along any other axis, the operands are gathered first."""
  # Inside shard_map, an image that is the same on every device gets its gradient summed
  # over them (the transpose of `pcast`).
  args = _corners.vary_alike(args)
  avals = [jax.typeof(a) for a in args]
  if not any(_explicit_axes(aval, d) for aval in avals for d in range(aval.ndim)):
    return primitive.bind(*args, **params)
  batch_axes = next((axes for aval in avals if (axes := _explicit_axes(aval, 0))), ())
  mesh = next(aval.sharding.mesh for aval in avals if not aval.sharding.mesh.empty)
  spec = jax.sharding.PartitionSpec(batch_axes or None)
  args = [jax.sharding.reshard(a, spec) for a in args]
  if not batch_axes:
    return primitive.bind(*args, **params)
  return jax.shard_map(functools.partial(primitive.bind, **params), mesh=mesh,
                       in_specs=spec, out_specs=spec, axis_names=set(batch_axes))(*args)


def _dims(args):
  """The number of coordinates of `coordinate_tangent_p`'s `(*tangents, images, *coords)`."""
  return (len(args) - 1) // 2


# Shapes.


def _points_aval(x, channels=None):
  shape = x.shape if channels is None else x.shape + (channels,)
  return x.update(shape=shape, dtype=jnp.float32)


read_p.def_abstract_eval(lambda images, x, *_, **__: _points_aval(x, images.shape[-1]))
image_gradient_p.def_abstract_eval(
    lambda cotangent, x, *_, spatial, **__: cotangent.update(
        shape=(x.shape[0],) + spatial + (cotangent.shape[-1],), dtype=jnp.float32))
coordinate_tangent_p.def_abstract_eval(
    lambda *args, **_: _points_aval(args[_dims(args) + 1], args[_dims(args)].shape[-1]))
coordinate_cotangent_p.def_abstract_eval(
    lambda cotangent, images, *coords, **_: [_points_aval(c) for c in coords])


def compiled_impl(primitive):
  """An impl rule (`Primitive.def_impl`) that compiles `primitive` on its own and runs
  it, as JAX runs its own primitives outside jit (also under `jax.disable_jit()`): one
  compiled function per set of parameters, named after the primitive."""
  @functools.cache
  def compiled(params):
    def run(*args):
      return primitive.bind(*args, **dict(params))
    run.__name__ = run.__qualname__ = primitive.name
    return jax.jit(run)

  def impl(*args, **params):
    with jax.disable_jit(False):
      return compiled(tuple(sorted(params.items())))(*args)

  return impl


_PRIMITIVES = (read_p, image_gradient_p, coordinate_tangent_p, coordinate_cotangent_p)
for _primitive in _PRIMITIVES:
  _primitive.def_impl(compiled_impl(_primitive))


# The reference code for each primitive (plain JAX, differentiable in every argument).


def _read_reference(images, *coords, implementation, unchecked):
  del implementation
  return _corners.read(images, *coords, unchecked=unchecked)


def _image_gradient_reference(cotangent, *coords, spatial, implementation, unchecked):
  del implementation
  return _corners.image_gradient(cotangent, *coords, spatial=spatial,
                                 unchecked=unchecked)


_REFERENCES = {
    read_p: _read_reference,
    image_gradient_p: _image_gradient_reference,
    coordinate_tangent_p: _corners.coordinate_tangent,
    coordinate_cotangent_p: lambda *args, **params: list(
        _corners.coordinate_cotangent(*args, **params)),
}


# Lowering: the reference code; on the CPU in chunks of the batch, or the compiled kernel.
# The image gradient's scatter-adds land several times faster in a chunk of images
# whose gradient fits in a core's cache (L2, commonly 1-2 MiB).
CACHED_GRADIENT_BYTES = 1 << 20


def _image_gradient_on_cpu(cotangent, *coords, spatial, implementation, unchecked):
  del implementation
  image_bytes = math.prod(spatial) * cotangent.shape[-1] * cotangent.dtype.itemsize
  return _corners.in_chunks(functools.partial(_corners.image_gradient, spatial=spatial,
                                              unchecked=unchecked),
                            cotangent, *coords,
                            max_images=CACHED_GRADIENT_BYTES // image_bytes)


def _image_gradient_cpu_lowering(ctx, cotangent, *coords, spatial, implementation,
                                 unchecked):
  # The kernel checks each axis's bounds even when unchecked: a corner that would wrap to
  # the next row is dropped (the atlas's, whose cotangent its transpose discards anyway).
  if implementation == "cpu_kernel" and len(coords) == 2:
    # The kernel takes (x, y, cotangent); ffi_lowering reads the operands' types from ctx.
    kernel_ctx = _jax_private.with_operand_types(
        ctx, (ctx.avals_in[1], ctx.avals_in[2], ctx.avals_in[0]))
    return jax.ffi.ffi_lowering(_cpu_kernel.TARGET)(kernel_ctx, *coords, cotangent)
  return mlir.lower_fun(functools.partial(
      _image_gradient_on_cpu, spatial=spatial, implementation=implementation,
      unchecked=unchecked), multiple_results=False)(ctx, cotangent, *coords)


def _coordinate_tangent_on_cpu(*args, unchecked):
  return _corners.in_two_chunks(functools.partial(
      _corners.coordinate_tangent, unchecked=unchecked), *args)


def _coordinate_cotangent_on_cpu(cotangent, images, *coords, unchecked):
  return list(_corners.in_two_chunks(
      functools.partial(_corners.coordinate_cotangent, unchecked=unchecked,
                        unrolled=True, one_loop=True),
      cotangent, images, *coords))


for _primitive in _PRIMITIVES:
  mlir.register_lowering(_primitive, mlir.lower_fun(
      _REFERENCES[_primitive], multiple_results=_primitive.multiple_results))
mlir.register_lowering(image_gradient_p, _image_gradient_cpu_lowering, platform="cpu")
mlir.register_lowering(coordinate_tangent_p, mlir.lower_fun(
    _coordinate_tangent_on_cpu, multiple_results=False), platform="cpu")
mlir.register_lowering(coordinate_cotangent_p, mlir.lower_fun(
    _coordinate_cotangent_on_cpu, multiple_results=True), platform="cpu")


# Derivatives. Each primitive is linear in its first `_linear(p, args)` arguments.


def _linear(primitive, args):
  return _dims(args) if primitive is coordinate_tangent_p else 1


def _is_zero(tangent):
  return type(tangent) is ad.Zero


def _sum_terms(terms):
  return functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), terms)


def _read_jvp(primals, tangents, *, implementation, unchecked):
  images, coords = primals[0], primals[1:]
  tangent_images, tangent_coords = tangents[0], tangents[1:]
  terms = []
  if not all(_is_zero(t) for t in tangent_coords):
    terms.append(bind(coordinate_tangent_p, *(ad.instantiate_zeros(t) for t in tangent_coords),
                      images, *coords, unchecked=unchecked))
  if not _is_zero(tangent_images):
    terms.append(read(tangent_images, coords, implementation, unchecked))
  return read(images, coords, implementation, unchecked), _sum_terms(terms)


def _linear_jvp(primitive):
  """JVP of a primitive linear in its first arguments: itself for their tangents, plain
  autodiff of the reference code for the others'."""
  def jvp(primals, tangents, **params):
    linear = _linear(primitive, primals)
    out = bind(primitive, *primals, **params)
    fixed, varying = primals[:linear], primals[linear:]
    terms = []
    if not all(_is_zero(t) for t in tangents[:linear]):
      linear_tangents = [ad.instantiate_zeros(t) for t in tangents[:linear]]
      terms.append(bind(primitive, *linear_tangents, *varying, **params))
    if not all(_is_zero(t) for t in tangents[linear:]):
      reference = lambda *varying: _REFERENCES[primitive](*fixed, *varying, **params)
      terms.append(jax.jvp(reference, tuple(varying),
                           tuple(ad.instantiate_zeros(t) for t in tangents[linear:]))[1])
    return out, _sum_terms(terms)

  return jvp


def _transpose_rule(primitive, transposed, transposed_params):
  """Transpose of `primitive` in its linear arguments: `transposed` of the cotangent(s)."""
  def transpose(cotangent, *args, **params):
    linear = _linear(primitive, args)
    linear_args, others = args[:linear], args[linear:]
    if any(ad.is_undefined_primal(a) for a in others):
      raise ValueError(f"{primitive.name} is linear in its first {linear} argument(s) only; "
                       "transposing it needs the others known.")
    cotangents = cotangent if primitive.multiple_results else [cotangent]
    if all(_is_zero(c) for c in cotangents):
      return [ad.Zero(a.aval) for a in linear_args] + [None] * len(others)
    cotangents = [ad.instantiate_zeros(c) for c in cotangents]
    out = bind(transposed, *cotangents, *others, **transposed_params(args, params))
    return list(out if transposed.multiple_results else [out]) + [None] * len(others)

  return transpose


ad.primitive_jvps[read_p] = _read_jvp
for _primitive in (image_gradient_p, coordinate_tangent_p, coordinate_cotangent_p):
  ad.primitive_jvps[_primitive] = _linear_jvp(_primitive)
ad.primitive_transposes[read_p] = _transpose_rule(
    read_p, image_gradient_p,
    lambda args, params: dict(spatial=tuple(args[0].aval.shape[1:-1]), **params))
ad.primitive_transposes[image_gradient_p] = _transpose_rule(
    image_gradient_p, read_p,
    lambda args, params: {k: v for k, v in params.items() if k != "spatial"})
ad.primitive_transposes[coordinate_tangent_p] = _transpose_rule(
    coordinate_tangent_p, coordinate_cotangent_p, lambda args, params: params)
ad.primitive_transposes[coordinate_cotangent_p] = _transpose_rule(
    coordinate_cotangent_p, coordinate_tangent_p, lambda args, params: params)


# Batching: the mapped axis becomes more images.


def _fold_mapped_axis(args, dims):
  """Moves each argument's mapped axis to the front (broadcasting unmapped ones) and
  folds it into the image batch: returns the folded arguments and the mapped size."""
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  folded = []
  for arg, dim in zip(args, dims):
    arg = jnp.broadcast_to(arg, (size,) + arg.shape) if dim is None else jnp.moveaxis(arg, dim, 0)
    folded.append(arg.reshape((size * arg.shape[1],) + arg.shape[2:]))
  return folded, size


def batch_rule(primitive):
  def rule(args, dims, **params):
    folded, size = _fold_mapped_axis(args, dims)
    out = bind(primitive, *folded, **params)
    unfold = lambda o: o.reshape((size, -1) + o.shape[1:])
    if primitive.multiple_results:
      return [unfold(o) for o in out], [0] * len(out)
    return unfold(out), 0
  return rule


for _primitive in _PRIMITIVES:
  batching.primitive_batchers[_primitive] = batch_rule(_primitive)
