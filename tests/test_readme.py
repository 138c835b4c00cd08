"""Runs every ```python block of README.md, in order, in one namespace."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 3, "expected the quick start and the Linen and NNX examples"
  namespace = {"__name__": "readme"}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
  assert namespace["out"].shape == (8, 28, 28, 1)
  assert np.isfinite(float(namespace["loss"])) and np.isfinite(float(namespace["nnx_loss"]))
