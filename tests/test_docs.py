"""The documentation: the generated benchmark tables are the committed JSON's, the guide
pages' examples are collected as doctests, their links and pictures exist, and the Flax
training steps of docs/guide/flax_modules.md compute what a training step should."""

import doctest
import json
import pathlib
import re
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
GUIDE = DOCS / "guide"
sys.path.insert(0, str(REPO / "scripts"))
import benchmark_tables  # noqa: E402

LOG_10 = float(np.log(10.0))
GUIDE_PAGES = ("getting_started", "conventions", "sampling", "transforms", "volumes",
               "interpolation", "antialiasing", "flax_modules", "training", "correctness",
               "benchmarks", "design")
# Pages that explain programs and measurements rather than calls: no examples to run.
WITHOUT_EXAMPLES = {"training", "correctness", "benchmarks", "design"}


def test_benchmark_tables_are_the_committed_json():
  stale = [str(page.relative_to(REPO)) for page, text in benchmark_tables.pages().items()
           if page.read_text() != text]
  assert not stale, f"run `python scripts/benchmark_tables.py`; stale: {stale}"


def test_benchmark_tables_follow_the_json(tmp_path, monkeypatch):
  """A changed measurement changes the page: the check above can fail."""
  docs = tmp_path / "docs"
  shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build", "*.png"))
  data = json.loads((docs / "training_cpu.json").read_text())
  data["records"][0]["ratio_vs_torch"] = 9.87
  (docs / "training_cpu.json").write_text(json.dumps(data))
  monkeypatch.setattr(benchmark_tables, "REPO", tmp_path)
  monkeypatch.setattr(benchmark_tables, "DOCS", docs)
  monkeypatch.setattr(benchmark_tables, "BENCHMARKS_PAGE", docs / "guide" / "benchmarks.md")
  monkeypatch.setattr(benchmark_tables, "SECTIONS", tuple(
      (docs / page.relative_to(DOCS), name, write)
      for page, name, write in benchmark_tables.SECTIONS))
  pages = benchmark_tables.pages()
  page = docs / "guide" / "benchmarks.md"
  assert "| 9.87x |" in pages[page] and "| 9.87x |" not in page.read_text()
  assert benchmark_tables.main(["--check"]) == 1
  assert benchmark_tables.main([]) == 0 and "| 9.87x |" in page.read_text()
  assert benchmark_tables.main(["--check"]) == 0


def test_every_guide_page_is_in_the_site_and_its_examples_are_collected(pytestconfig):
  index = (DOCS / "index.md").read_text()
  assert sorted(p.stem for p in GUIDE.glob("*.md")) == sorted(GUIDE_PAGES)
  for name in GUIDE_PAGES:
    assert f"guide/{name}\n" in index, name
    text = (GUIDE / f"{name}.md").read_text()
    examples = doctest.DocTestParser().get_examples(text)
    assert bool(examples) == (name not in WITHOUT_EXAMPLES), name
  # The default run collects the pages as doctests (pyproject's pytest options).
  assert any(str(path).rstrip("/").endswith("docs/guide")
             for path in pytestconfig.getini("testpaths")), pytestconfig.getini("testpaths")
  globs = pytestconfig.getoption("doctestglob")
  assert any(pathlib.PurePath(str(GUIDE / "sampling.md")).match(glob) or
             pathlib.PurePath("sampling.md").match(glob) for glob in globs), globs


def test_front_page_example():
  """docs/index.md is outside the doctest collection (docs/guide); its example runs here."""
  result = doctest.testfile(str(DOCS / "index.md"), module_relative=False, verbose=False)
  assert result.attempted >= 4 and result.failed == 0, result


def test_guide_pages_show_python_examples_as_doctests():
  """A ```python block on a page either holds `>>>` examples or is not Python to run
  (the doctest parser would skip a block without prompts, so it could rot)."""
  for name in GUIDE_PAGES:
    for block in re.findall(r"```python\n(.*?)```", (GUIDE / f"{name}.md").read_text(), re.S):
      assert block.lstrip().startswith(">>>"), (name, block[:80])


def test_links_and_pictures_exist():
  pages = sorted(DOCS.glob("*.md")) + sorted(GUIDE.glob("*.md"))
  checked = 0
  for page in pages:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
      if "://" in target:
        continue
      assert (page.parent / target).exists(), (page.name, target)
      checked += 1
  assert checked > 20


@pytest.fixture(scope="module")
def flax_page():
  """The namespace docs/guide/flax_modules.md's examples leave behind."""
  text = (GUIDE / "flax_modules.md").read_text()
  namespace = {"__name__": "flax_modules"}
  for example in doctest.DocTestParser().get_examples(text):
    exec(compile(example.source, str(GUIDE / "flax_modules.md"), "exec"), namespace)  # noqa: S102
  return namespace


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy in float64, written out."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(-log_probs[np.arange(len(labels)), np.asarray(labels)].mean())


def test_linen_example(flax_page):
  model, train_step, labels = flax_page["model"], flax_page["train_step"], flax_page["labels"]
  # Zero images give zero logits (biases start at zero): the loss before the step is ln 10.
  np.testing.assert_allclose(float(flax_page["loss"]), LOG_10, rtol=1e-6)
  # One Adam step moves only the last bias (no other parameter sees a non-zero input or
  # gradient), by the learning rate, towards the batch's labels.
  bias = np.asarray(flax_page["params"]["Dense_1"]["bias"])
  np.testing.assert_allclose(bias, [1e-3] * 4 + [-1e-3] * 6, rtol=1e-4)
  logits = model.apply({"params": flax_page["params"]}, flax_page["images"])
  np.testing.assert_allclose(logits, np.broadcast_to(bias, (4, 10)), atol=1e-7)
  assert cross_entropy(logits, labels) < LOG_10 - 1e-3
  # On random images: train_step returns the loss of the parameters it was given, and
  # ten steps on one batch lower it.
  images = jnp.asarray(np.random.default_rng(1).random((4, 28, 28, 1), np.float32))
  params, opt_state = flax_page["params"], flax_page["opt_state"]
  losses = []
  for _ in range(10):
    expected = cross_entropy(model.apply({"params": params}, images), labels)
    params, opt_state, loss = train_step(params, opt_state, images, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_nnx_example(flax_page):
  nnx_model, labels = flax_page["nnx_model"], flax_page["labels"]
  np.testing.assert_allclose(float(flax_page["nnx_loss"]), LOG_10, rtol=1e-6)
  assert cross_entropy(nnx_model(flax_page["images"]), labels) < LOG_10 - 1e-3
  images = jnp.asarray(np.random.default_rng(1).random((4, 28, 28, 1), np.float32))
  losses = []
  for _ in range(10):
    expected = cross_entropy(nnx_model(images), labels)
    loss = flax_page["nnx_train_step"](nnx_model, flax_page["nnx_optimizer"], images, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
