"""examples/warp_demo.py writes its picture and refuses a non-PNG path."""

import pathlib
import sys

import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import warp_demo  # noqa: E402


def test_demo_writes_a_png(tmp_path, monkeypatch):
  out = tmp_path / "demo.png"
  monkeypatch.setattr(sys, "argv", ["warp_demo.py", "--out", str(out)])
  warp_demo.main()
  with Image.open(out) as picture:
    assert picture.format == "PNG" and picture.width > 300 and picture.height > 300


def test_demo_refuses_other_formats(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["warp_demo.py", "--out", str(tmp_path / "demo.jpg")])
  with pytest.raises(SystemExit):
    warp_demo.main()
  assert "--out must end in .png" in capsys.readouterr().err
