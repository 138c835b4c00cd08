"""examples/warp_demo.py writes its picture and refuses a non-PNG path."""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import warp_demo  # noqa: E402


def test_demo_writes_a_png(tmp_path, monkeypatch):
  out = tmp_path / "demo.png"
  monkeypatch.setattr(sys, "argv", ["warp_demo.py", "--out", str(out)])
  warp_demo.main()
  with Image.open(out) as picture:
    assert picture.format == "PNG" and picture.mode == "RGB"
    pixels = np.asarray(picture)
  # Margins of 24 px around a 3x-enlarged 96x128 input and 72x72 output, in 3 rows.
  assert pixels.shape == (24 + 3 * (3 * 96 + 24), 3 * 24 + 3 * 128 + 3 * 72, 3)
  # Each row's right panel holds that row's warped output, each pixel as a 3x3 block.
  image = warp_demo.jnp.asarray(warp_demo.test_picture(warp_demo.IMAGE_SHAPE))
  for row, (_, _, output) in enumerate(warp_demo.demo_rows(image)):
    top, left = 24 + row * (3 * 96 + 24), 2 * 24 + 3 * 128
    expected = (np.clip(np.asarray(output), 0, 1) * 255).astype(np.uint8)
    expected = expected.repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(pixels[top:top + 3 * 72, left:left + 3 * 72], expected)
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 100  # Not a blank warp.


def test_demo_refuses_other_formats(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["warp_demo.py", "--out", str(tmp_path / "demo.jpg")])
  with pytest.raises(SystemExit):
    warp_demo.main()
  assert "--out must end in .png" in capsys.readouterr().err


def test_spline_orders_writes_each_order_side_by_side(tmp_path, monkeypatch):
  import spline_orders  # noqa: E402 (beside warp_demo, in examples/)
  out = tmp_path / "orders.png"
  monkeypatch.setattr(sys, "argv", ["spline_orders.py", "--out", str(out)])
  spline_orders.main()
  with Image.open(out) as picture:
    pixels = np.asarray(picture)
  side = spline_orders.SIZE * spline_orders.ZOOM
  assert pixels.shape == (side, 6 * side + 5 * spline_orders.GAP)
  panels = [pixels[:, k * (side + spline_orders.GAP):][:, :side] for k in range(6)]
  # Order 0 repeats each pixel in a ZOOM x ZOOM block; the others blend between them.
  picture = (spline_orders.test_picture() * 255 + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(panels[0], picture.repeat(spline_orders.ZOOM, 0)
                                .repeat(spline_orders.ZOOM, 1))
  for order in range(1, 6):
    assert len(np.unique(panels[order])) > 4 * len(np.unique(picture)), order
  monkeypatch.setattr(sys, "argv", ["spline_orders.py", "--out", str(tmp_path / "o.jpg")])
  with pytest.raises(SystemExit):
    spline_orders.main()
