"""The API reference has an entry for every public name, and every entry a summary.

Reads the autodoc directives of the pages under docs/api (Markdown and
reStructuredText) instead of building the site, so it runs in a moment; the Sphinx
build (`python -m sphinx -W --keep-going -b html docs docs/_build/html`) checks the
rendering.
"""

import inspect
import pathlib
import re

import flax.linen
import flax.nnx
import pytest

import stnjax
from stnjax import geometry
from stnjax import linen
from stnjax import nnx
from stnjax import transforms

API_PAGES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "api"

# `.. autofunction:: name` (reStructuredText, also inside a Markdown eval-rst block) or
# ```{autofunction} name (a MyST directive); likewise the other autodoc and py: ones.
_DIRECTIVE = re.compile(
    r"^[ \t]*(?:\.\.[ \t]+|```\{)(?P<kind>(?:py:)?[a-z]+)(?:::|\})[ \t]*(?P<name>[\w.]+)"
    r"(?P<options>(?:\n[ \t]*:[\w-]+:.*)*)", re.M)
_ENTRIES = {"autofunction", "autoclass", "automodule", "autoexception", "autodata",
            "py:function", "py:class", "py:module", "py:data", "py:exception"}


def documented_names(text: str) -> set[str]:
  """The full names that the directives in `text` give an entry (an anchor) to.

  Autodoc takes a dotted name as given; a py: directive puts its name in the current
  module (set by currentmodule, module or automodule, or its own :module: option).
  Entries with :no-index: have no anchor and do not count.
  """
  names, module = set(), None
  for match in _DIRECTIVE.finditer(text):
    kind, name, options = match["kind"], match["name"], match["options"]
    if kind in ("currentmodule", "py:currentmodule", "module", "py:module", "automodule"):
      module = name
    if kind not in _ENTRIES or re.search(r":no-?index:", options):
      continue
    own_module = re.search(r":module:[ \t]*([\w.]+)", options)
    if kind.startswith("auto") and ("." in name or kind == "automodule"):
      names.add(name)
    elif kind in ("py:module",):
      names.add(name)
    else:
      prefix = own_module[1] if own_module else module
      names.add(f"{prefix}.{name}" if prefix else name)
  return names


def api_text() -> str:
  pages = sorted(API_PAGES.glob("*.md")) + sorted(API_PAGES.glob("*.rst"))
  assert pages, f"no API pages in {API_PAGES}"
  return "\n".join(page.read_text() for page in pages)


def _module_classes(module, base):
  return {f"{module.__name__}.{name}": value for name, value in vars(module).items()
          if not name.startswith("_") and inspect.isclass(value)
          and issubclass(value, base) and value.__module__ == module.__name__}


def required_entries() -> dict[str, object]:
  """Every public name the reference must have an entry for, with its object."""
  required = {f"stnjax.{name}": getattr(stnjax, name) for name in stnjax.__all__}
  required.update({f"stnjax.transforms.{name}": getattr(transforms, name)
                   for name in transforms.__all__})
  required.update(_module_classes(linen, flax.linen.Module))
  required.update(_module_classes(nnx, flax.nnx.Module))
  return required


def missing_entries(text: str) -> list[str]:
  documented = documented_names(text)
  missing = sorted(set(required_entries()) - documented)
  # stnjax.geometry's functions are exported at the top level and documented there.
  missing += [f"stnjax.geometry.{name}" for name in geometry.__all__
              if not {f"stnjax.geometry.{name}", f"stnjax.{name}"} & documented]
  return missing


def test_every_public_name_has_an_api_entry():
  assert missing_entries(api_text()) == []


def test_the_check_finds_a_missing_entry():
  text = api_text()
  for entry in ("stnjax.sample", "stnjax.transforms.tps", "stnjax.nnx.IdsiaLocalization",
                "stnjax.linen"):
    pattern = re.compile(rf"^.*(?:::|\}})[ \t]*{re.escape(entry)}[ \t]*$", re.M)
    assert pattern.search(text), f"{entry}'s directive not found in the pages"
    assert entry in missing_entries(pattern.sub("", text))
  assert "stnjax.geometry.rotation_matrix" in missing_entries(
      text.replace("stnjax.rotation_matrix", "stnjax.elsewhere"))


def test_every_entry_names_an_existing_object():
  for name in sorted(documented_names(api_text())):
    module_name, _, attribute = name.rpartition(".")
    obj = None
    try:
      obj = __import__(name, fromlist=["_"])
    except ImportError:
      module = __import__(module_name, fromlist=["_"])
      obj = getattr(module, attribute, None)
    assert obj is not None, f"docs/api documents {name}, which does not exist"


def _own_docstring(obj):
  doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
  return inspect.cleandoc(doc) if doc else ""


@pytest.mark.parametrize("name", sorted(required_entries()))
def test_every_public_name_has_a_one_line_summary(name):
  doc = _own_docstring(required_entries()[name])
  assert doc, f"{name} has no docstring"
  lines = doc.splitlines()
  assert lines[0].strip().endswith("."), (
      f"{name}'s docstring must start with a one-line summary ending in '.', got "
      f"{lines[0]!r}")
  assert len(lines) == 1 or not lines[1].strip(), (
      f"{name}'s summary runs past its first line: {lines[:2]}")
