"""The compiled CPU kernel for the bilinear image gradient against XLA's scatter-add.

The kernel runs only for `implementation="cpu_kernel"`; the default `"xla"` never
uses it. Both must give the same gradients (to float32 rounding: the sums run in a
different order) in every case the sampler supports, and every transformation must
compose through the kernel (tests/test_composability.py has it as a case too). The
PyTorch parity tests check the default against stored references; these tie the
kernel to it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import stnjax
from stnjax import _cpu_kernel

# The kernel runs on the CPU backend; on a GPU or TPU host the programs these tests
# inspect are lowered for that backend instead.
needs_kernel = pytest.mark.skipif(
    not stnjax.has_cpu_kernel() or jax.default_backend() != "cpu",
    reason="stnjax's CPU kernel is not built (no C++ compiler), or the default backend "
           "is not the CPU")


def gradients(theta, image, cotangent, implementation, **options):
  def loss(theta, image):
    out = stnjax.sample(theta, image, cotangent.shape[-3:-1], implementation=implementation,
                        **options)
    return jnp.vdot(out.astype(jnp.float32), cotangent)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, image)


def random_case(batch_shape, size, out_size, channels, scale=0.6, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  theta = np.eye(2, 3) + rng.normal(0, scale, batch_shape + (2, 3))
  image = rng.uniform(-1, 1, batch_shape[:1] + size + (channels,))
  cotangent = rng.normal(size=batch_shape + out_size + (channels,))
  return (jnp.asarray(theta, jnp.float32), jnp.asarray(image, dtype),
          jnp.asarray(cotangent, jnp.float32))


def assert_same_gradients(case, **options):
  kernel = gradients(*case, "cpu_kernel", **options)
  xla = gradients(*case, "xla", **options)
  for name, a, b in zip(("theta", "image"), kernel, xla):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-5, err_msg=name)


@needs_kernel
@pytest.mark.parametrize("channels", [1, 3, 5])  # 1 and 3 have their own loops.
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_kernel_matches_xla(channels, padding_mode):
  # Large random thetas put many points off the image and on its edges.
  case = random_case((3,), (9, 11), (7, 6), channels, scale=0.8)
  assert_same_gradients(case, padding_mode=padding_mode)


@needs_kernel
def test_kernel_matches_xla_with_glimpses_and_align_corners():
  # theta [B, K, 2, 3]: several outputs read each image; their gradients add up.
  assert_same_gradients(random_case((2, 3), (8, 8), (5, 4), 2), align_corners=True)


@needs_kernel
def test_kernel_matches_xla_for_half_precision_images():
  assert_same_gradients(random_case((2,), (6, 7), (6, 7), 3, dtype=np.float16))


@needs_kernel
def test_kernel_image_gradient_is_deterministic_and_exact_on_integer_points():
  # Integer translations put every point on a pixel: the gradient is the cotangent
  # moved by the shift, exactly, with zeros where nothing lands.
  image = jnp.zeros((2, 5, 6, 1))
  theta = jnp.asarray([[[1.0, 0.0, 2 / 6], [0.0, 1.0, 0.0]],
                       [[1.0, 0.0, 0.0], [0.0, 1.0, -2 / 5]]])  # +1 column, -1 row.
  cotangent = jnp.arange(60.0).reshape(2, 5, 6, 1)
  _, grad_image = gradients(theta, image, cotangent, "cpu_kernel")
  expected = np.zeros((2, 5, 6, 1))
  expected[0, :, 1:] = np.asarray(cotangent)[0, :, :-1]
  expected[1, :-1] = np.asarray(cotangent)[1, 1:]
  np.testing.assert_array_equal(grad_image, expected)
  again = gradients(theta, image, cotangent, "cpu_kernel")[1]
  assert np.asarray(again).tobytes() == np.asarray(grad_image).tobytes()


@needs_kernel
def test_kernel_gives_zero_gradient_for_nan_and_far_points():
  image = jnp.ones((3, 4, 4, 2))
  theta = jnp.stack([jnp.full((2, 3), jnp.nan),                  # NaN: reads nothing.
                     jnp.asarray([[1.0, 0, 9.0], [0, 1.0, 0]]),    # Far to the right.
                     jnp.asarray([[1.0, 0, 0], [0, 1.0, -1.25]])])  # Partly off the top.
  cotangent = jnp.ones((3, 4, 4, 2))
  kernel = np.asarray(gradients(theta, image, cotangent, "cpu_kernel")[1])
  xla = np.asarray(gradients(theta, image, cotangent, "xla")[1])
  assert not kernel[:2].any()
  np.testing.assert_allclose(kernel, xla, rtol=1e-6)
  assert kernel[2].any()


@needs_kernel
def test_kernel_under_vmap_and_in_the_compiled_program():
  theta, image, cotangent = random_case((4,), (6, 6), (6, 6), 3)
  per_example = jax.vmap(lambda t, i, c: gradients(t[None], i[None], c[None], "cpu_kernel"))
  batched = per_example(theta, image, cotangent)
  whole = gradients(theta, image, cotangent, "cpu_kernel")
  np.testing.assert_allclose(batched[1][:, 0], whole[1], rtol=1e-6, atol=1e-6)
  text = jax.jit(jax.grad(lambda i: stnjax.sample(theta, i, implementation="cpu_kernel").sum())
                 ).lower(image).as_text()
  assert _cpu_kernel.TARGET in text
  # The default never runs it.
  text = jax.jit(jax.grad(lambda i: stnjax.sample(theta, i).sum())).lower(image).as_text()
  assert _cpu_kernel.TARGET not in text


@needs_kernel
def test_gradient_with_respect_to_theta_only_skips_the_image_gradient():
  theta, image, _ = random_case((2,), (6, 6), (6, 6), 1)
  loss = lambda t: stnjax.sample(t, image, implementation="cpu_kernel").sum()
  compiled = jax.jit(jax.grad(loss)).lower(theta).compile()
  assert _cpu_kernel.TARGET not in compiled.as_text()


@pytest.mark.usefixtures("fast_compiles")
@needs_kernel
def test_second_derivatives_and_forward_mode_through_the_kernel():
  theta, image, cotangent = random_case((2,), (6, 7), (5, 4), 3, scale=0.3)

  def hessian(implementation):
    loss = lambda t, i: jnp.sum(stnjax.sample(t, i, (5, 4), implementation=implementation) ** 2)
    return jax.hessian(loss, argnums=(0, 1))(theta, image)

  def jvp_of_grad(implementation):
    loss = lambda t, i: jnp.vdot(stnjax.sample(t, i, (5, 4), implementation=implementation),
                                 cotangent)
    return jax.jvp(jax.grad(loss, argnums=1), (theta, image), (theta, image))[1]

  for kernel, xla in ((hessian("cpu_kernel"), hessian("xla")),
                      (jvp_of_grad("cpu_kernel"), jvp_of_grad("xla"))):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), kernel, xla)
  # Forward over reverse in the image runs the kernel for the image gradient's tangent.
  loss = lambda i: jnp.sum(stnjax.sample(theta, i, (5, 4), implementation="cpu_kernel") ** 2)
  text = jax.jit(lambda i: jax.jvp(jax.grad(loss), (i,), (i,))[1]).lower(image).as_text()
  assert _cpu_kernel.TARGET in text


def test_unknown_implementation_is_rejected():
  with pytest.raises(ValueError, match=r"implementation must be one of \('xla', 'cpu_kernel'\), "
                                       r"got 'auto'"):
    stnjax.sample(jnp.eye(2, 3), jnp.zeros((4, 4, 1)), implementation="auto")
  with pytest.raises(ValueError, match="implementation must be one of"):
    stnjax.grid_sample(jnp.zeros((4, 4, 1)), jnp.zeros((2, 2, 2)), implementation=None)
  with pytest.raises(ValueError, match="implementation must be one of"):
    stnjax.transforms.warp(stnjax.transforms.get("affine"), jnp.zeros((6,)),
                           jnp.zeros((4, 4, 1)), implementation="dense")


def test_asking_for_a_missing_kernel_says_how_to_build_it(monkeypatch):
  monkeypatch.setattr(_cpu_kernel, "AVAILABLE", False)
  with pytest.raises(ValueError, match=r"not built in this install.*apt-get install g\+\+"):
    stnjax.sample(jnp.eye(2, 3), jnp.zeros((4, 4, 1)), implementation="cpu_kernel")
  with pytest.raises(ValueError, match="not built"):
    stnjax.SpatialTransformer(implementation="cpu_kernel").init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


SHARDED_PROGRAM = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import stnjax
mesh = Mesh(np.asarray(jax.devices()), ("data",))
rng = np.random.default_rng(0)
theta = np.eye(2, 3) + rng.normal(0, 0.3, (16, 2, 3))
arrays = [a.astype(np.float32) for a in
          (theta, rng.uniform(size=(16, 12, 10, 3)), rng.normal(size=(16, 12, 10, 3)))]
batch = NamedSharding(mesh, PartitionSpec("data"))
def gradients(implementation):
  loss = lambda t, i, c: jnp.vdot(stnjax.sample(t, i, implementation=implementation), c)
  return jax.grad(loss, (0, 1))
sharded = [jax.device_put(a, batch) for a in arrays]
xla = jax.jit(gradients("xla"))(*sharded)
kernel = jax.jit(gradients("cpu_kernel"))(*sharded)
# shard_map: each device runs the kernel on its share of the batch.
spec = PartitionSpec("data")
per_device = [jax.jit(jax.shard_map(gradients(implementation), mesh=mesh, in_specs=spec,
                                    out_specs=spec))(*sharded)
              for implementation in ("xla", "cpu_kernel")]
assert len(jax.devices()) == 8
for result in [kernel] + per_device:
  for a, b in zip(result, xla):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
print("same gradients")
"""


@needs_kernel
def test_kernel_with_a_batch_sharded_over_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", SHARDED_PROGRAM], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "same gradients" in done.stdout
