"""The README: its ```python blocks run, in order, in one namespace, and compute what it
says (checked against values worked out independently); its speed table is the committed
benchmark JSON's; its links and pictures exist."""

import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


@pytest.fixture(scope="module")
def readme():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 2, "expected the quick start and the module example"
  namespace = {"__name__": "readme"}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
  return namespace


def test_quick_start(readme):
  stnjax, theta = readme["stnjax"], readme["theta"]
  np.testing.assert_array_equal(readme["out"], np.zeros((8, 28, 28, 1)))
  assert readme["crops"].shape == (8, 14, 14, 1)
  assert readme["glimpses"].shape == (8, 4, 28, 28, 1)
  np.testing.assert_array_equal(readme["grads"], np.zeros((8, 2, 3)))
  # The same calls on a random image, where a wrong sampler shows.
  image = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(stnjax.sample(theta, image), image)  # "identity: exact copy"
  # Identity at half the size reads between each 2x2 block of pixels: their mean.
  pooled = image.reshape(8, 14, 2, 14, 2, 1).mean((2, 4))
  np.testing.assert_allclose(stnjax.sample(theta, image, (14, 14)), pooled, rtol=1e-6, atol=1e-6)
  glimpses = stnjax.sample(jnp.tile(theta[:, None], (1, 4, 1, 1)), image)
  np.testing.assert_array_equal(glimpses, np.broadcast_to(image[:, None], (8, 4, 28, 28, 1)))
  # The translation gradient against a forward difference (a shift of 0.28 px stays
  # within one bilinear cell, where the output is linear in the shift).
  grads = jax.grad(lambda t: stnjax.sample(t, image).sum())(theta)
  eps = 0.02
  base = np.asarray(stnjax.sample(theta, image), np.float64).sum((1, 2, 3))
  for row in range(2):
    shifted = np.asarray(stnjax.sample(theta.at[:, row, 2].add(eps), image), np.float64)
    np.testing.assert_allclose(grads[:, row, 2], (shifted.sum((1, 2, 3)) - base) / eps,
                               rtol=1e-3)
  assert np.abs(grads[:, :, 2]).min() > 0.1  # Non-zero at the identity.


def test_module_example(readme):
  np.testing.assert_array_equal(readme["warped"], readme["images"])
  # The identity at initialization holds for any input, not only zeros.
  image = np.random.default_rng(1).random((2, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(readme["stn"].apply(readme["variables"], image), image)
  assert set(readme["variables"]["params"]) == {"localization", "regression"}


def _readme_speed_rows():
  rows = {}
  for line in README.read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.strip().startswith("|") and len(cells) == 4 and cells[1].endswith("x"):
      rows[cells[0]] = cells[1:]
  return rows


def _json_ranges(name, peer):
  """{mode: "least-greatestx"} of `peer` in a committed sampler benchmark's JSON."""
  records = json.loads((REPO / "docs" / name).read_text())["records"]
  table = report.ratio_ranges(records, peers=(peer,)).splitlines()
  modes = [c.strip() for c in table[0].strip("|").split("|")][1:]
  cells = [c.strip() for c in table[2].strip("|").split("|")][1:]
  return dict(zip(modes, cells))


def test_speed_table_is_the_committed_measurement():
  rows = _readme_speed_rows()
  expected = {
      "images, defaults": _json_ranges("sampler_cpu.json", "stnjax"),
      'images, `implementation="cpu_kernel"`': _json_ranges("sampler_cpu.json",
                                                            "stnjax_cpu_kernel"),
      "volumes, defaults": _json_ranges("sampler_cpu_volumes.json", "stnjax"),
  }
  assert set(rows) == set(expected), rows
  for label, ranges in expected.items():
    assert rows[label] == [ranges[m] for m in ("forward", "grad_theta", "grad_theta_image")], label
  # The training step's range, as the README states it.
  ratios = [r["ratio_vs_torch"] for r in
            json.loads((REPO / "docs" / "training_cpu.json").read_text())["records"]]
  assert f"**{min(ratios):.2f}-{max(ratios):.2f}x** PyTorch's speed" in README.read_text()


def test_links_and_pictures_exist():
  text = README.read_text()
  targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
  local = [t for t in targets if "://" not in t]
  assert len(local) >= 10, local
  missing = [t for t in local if not (REPO / t).exists()]
  assert not missing, missing


def test_two_commands_are_the_ones_ci_runs():
  ci = (REPO / ".ci" / "run")
  if not ci.exists():
    pytest.skip("no .ci/run in this checkout")
  commands = [line for line in README.read_text().splitlines()
              if line.startswith(("(test -d", "python3 -m venv"))]
  assert len(commands) == 2, commands
  ci_text = ci.read_text()
  assert all(command in ci_text for command in commands)
