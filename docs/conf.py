"""Sphinx configuration of the stnjax documentation site.

Build (offline; every warning is an error):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Pages are Markdown (myst-parser) or reStructuredText. The API reference (docs/api/)
is written with autodoc and autosummary from the package's docstrings, which are
Google style (napoleon). Nothing is fetched at build time: there is no intersphinx.

A page links to an API entry with the Python roles: {func}`stnjax.sample`,
{class}`stnjax.linen.SpatialTransformer`, {mod}`stnjax.transforms` in Markdown
(:func:`stnjax.sample` in reStructuredText); `~stnjax.sample` shows the last part only.
"""

import os
import re
import sys

from flax import nnx
from sphinx.util import inspect as sphinx_inspect

# The package is installed (editable) in the docs environment; fall back to the source
# tree so that a plain checkout builds too.
sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import stnjax  # noqa: E402

# -- Project ----------------------------------------------------------------------------

project = "stnjax"
author = "the stnjax authors"
copyright = "the stnjax authors"  # noqa: A001 (Sphinx's name)
release = stnjax.__version__
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# Sources are the .md and .rst pages (the JSON and pictures beside them are not), less
# the build output.
exclude_patterns = [
    "_build",
    "**/.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
]

# Single backticks in docstrings (reStructuredText's default role) link to a Python
# object where one of that name exists (`stnjax.sample`) and are code otherwise.
default_role = "py:obj"
# Text stays as written: `padding="SAME"` is code even outside backticks, not a quotation.
smartquotes = False
# The language of `>>>` and code blocks without one.
highlight_language = "python3"
pygments_style = "default"

# -- MyST (Markdown pages) --------------------------------------------------------------

myst_enable_extensions = [
    "colon_fence",  # ::: fences for directives, e.g. :::{note}
    "deflist",
    "dollarmath",  # $x$ and $$...$$ math
    "amsmath",
    "fieldlist",
    "attrs_inline",
]
# Headings up to ### get anchors, so pages can link to [a section](page.md#a-section).
myst_heading_anchors = 3

# -- API reference ----------------------------------------------------------------------

autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
# Type hints appear in the signature, as optax shows them; the docstrings give shapes.
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
add_module_names = True
python_use_unqualified_type_names = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
napoleon_use_ivar = False
napoleon_use_param = True
# Attribute types would print as jax.jaxlib._jax.Array; the signatures show them.
napoleon_attr_annotations = False

# A Flax Linen module is a dataclass whose signature ends in Flax's bookkeeping field
# `parent: ... = <flax.linen.module._Sentinel object>`, which users never pass; the API
# pages leave it out (`name` stays).
_LINEN_PARENT = re.compile(r",\s*parent\s*(:[^=]*)?=\s*<[^>]*>")


def _clean_signature(app, what, name, obj, options, signature, return_annotation):
  del app, name, options
  if signature:
    signature = _LINEN_PARENT.sub("", signature)
  # An NNX module's metaclass takes (*args, **kwargs); the arguments are __init__'s.
  if what == "class" and isinstance(obj, type) and issubclass(obj, nnx.Module):
    init = sphinx_inspect.signature(obj.__init__, bound_method=True)
    signature = sphinx_inspect.stringify_signature(
        init, show_return_annotation=False, unqualified_typehints=True)
  return signature, return_annotation


def setup(app):
  app.connect("autodoc-process-signature", _clean_signature)


# -- HTML -------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"stnjax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_context = {"default_mode": "light"}
