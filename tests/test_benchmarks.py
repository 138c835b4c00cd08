"""The sampler benchmark: its peers compute what stnjax computes, and a tiny run reports."""

import importlib.util
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import antialias  # noqa: E402
import baselines  # noqa: E402
import ndimage as ndimage_benchmark  # noqa: E402
import sampler  # noqa: E402

import stnjax  # noqa: E402

# The scripts run here for what they report; their timings are not checked.
pytestmark = pytest.mark.usefixtures("fast_training_compiles")


@pytest.mark.parametrize("peer", ["textbook", "map_coordinates", "dm_pix"])
def test_peers_agree_with_stnjax(peer):
  if peer == "dm_pix":
    pytest.importorskip("dm_pix", reason="dm-pix is an optional benchmark peer")
  image = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 13, 17, 2)), jnp.float32)
  theta = jnp.asarray(baselines.random_theta(3))
  warp = getattr(baselines, f"{peer}_sample")
  actual, expected = warp(theta, image, (13, 17)), stnjax.sample(theta, image)
  if peer == "dm_pix":
    # dm-pix zeroes points beyond the outer pixel centres instead of blending towards
    # zero there: compare where the point lies inside them.
    pixels = stnjax.normalized_to_pixel(stnjax.affine_grid(theta, (13, 17)), (13, 17))
    inside = np.asarray((pixels >= 0).all(-1) & (pixels <= jnp.array([16, 12])).all(-1))
    assert inside.mean() > 0.5
    actual, expected = np.asarray(actual)[inside], np.asarray(expected)[inside]
  np.testing.assert_allclose(actual, expected, atol=2e-5)


def test_quick_run_writes_table_and_json(tmp_path, capsys):
  cases = (sampler.Case(2, 5, 7, 3, (5, 7)), sampler.Case(2, 8, 6, 1, (3, 4)),
           sampler.Case(2, 4, 5, 1, (3, 4, 5), depth=3))
  json_path = tmp_path / "bench.json"
  records = sampler.main(["--repeats", "1", "--warmup", "0", "--json", str(json_path)],
                         cases=cases)
  table = capsys.readouterr().out
  assert "| shape | mode |" in table and "versions:" in table and "threads" in table
  stnjax_rows = [r for r in records if r["peer"] == "stnjax"]
  assert len(stnjax_rows) == 3 * len(sampler.MODES)
  assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in stnjax_rows)
  assert any(r["shape"] == "[2, 3, 4, 5, 1]" for r in stnjax_rows)
  kernel_rows = [r for r in records if r["peer"] == "stnjax_cpu_kernel"]
  expected_status = "ok" if stnjax.has_cpu_kernel() else "skipped"
  assert len(kernel_rows) == 9 and all(r["status"] == expected_status for r in kernel_rows
                                       if "4, 5, 1]" not in r["shape"])
  # Volumes: the 2-D-only peers are skipped with a reason, never failed.
  assert all(r["status"] == "skipped" and r["reason"] for r in records
             if r["shape"] == "[2, 3, 4, 5, 1]" and r["peer"] not in sampler.VOLUME_PEERS)
  # dm-pix cannot resize: it is reported as skipped, never as failed.
  assert all(r["status"] == "skipped" for r in records
             if r["peer"] == "dm_pix" and r["shape"].endswith("3x4"))
  saved = json.loads(json_path.read_text())
  assert saved["records"] == json.loads(json.dumps(records))
  assert "jax" in saved["environment"]["versions"]


def test_bad_flags_are_rejected(capsys):
  with pytest.raises(SystemExit):
    sampler.parse_args(["--repeats", "0"])
  with pytest.raises(SystemExit):
    sampler.parse_args(["--plot", "chart.svg"])
  assert "--plot must name a .png file" in capsys.readouterr().err


def test_training_benchmark_runs_the_tutorial_model(capsys, tmp_path):
  import jax
  import training

  model = training.FlaxTutorialNet()
  params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32), train=False)
  # The PyTorch tutorial's network has 27,360 parameters at 28x28.
  assert sum(p.size for p in jax.tree.leaves(params)) == 27360
  page = tmp_path / "results.md"
  page.write_text("# Results\n<!-- training_speed:begin -->\nold\n<!-- training_speed:end -->\n")
  records = training.main(["--repeats", "1", "--results_md", str(page)], cases=((28, 8),))
  assert records[0]["stnjax_images_per_s"] > 0
  header = "| batch shape | torch images/s | stnjax images/s | ratio |"
  assert header in capsys.readouterr().out
  assert header in page.read_text() and "old" not in page.read_text()


def test_antialias_benchmark_reports_errors_costs_and_a_picture(tmp_path, capsys):
  json_path, picture = tmp_path / "antialias.json", tmp_path / "zone_plate.png"
  errors, costs = antialias.main(["--size", "32", "--cost_sizes", "16", "32", "--repeats", "1",
                                  "--quick", "--channels", "1", "--json", str(json_path),
                                  "--picture", str(picture)])
  table = capsys.readouterr().out
  assert "| case | output |" in table and "| shape | mode |" in table
  assert len(errors) == len(antialias.ERROR_CASES) and len(costs) == 4
  # Antialiasing helps wherever the issue sets a bound, even on a 32 x 32 zone plate.
  assert all(r["ratio"] < 1 for r in errors if r["bound"] is not None)
  assert all(r["plain_ms"] > 0 and r["antialiased_ms"] > 0 for r in costs)
  assert all((r["plain_page_faults"] is None) == (r["antialiased_page_faults"] is None)
             for r in costs)
  assert all(r["plain_page_faults"] >= 0 and r["antialiased_page_faults"] >= 0
             for r in costs if r["plain_page_faults"] is not None)
  assert json.loads(json_path.read_text())["costs"] == json.loads(json.dumps(costs))
  assert picture.stat().st_size > 1000


def test_train_loop_benchmark_compares_the_program_with_its_step(tmp_path, capsys):
  import train_loop
  path = tmp_path / "loop.json"
  alone, whole = train_loop.main(["--steps", "6", "--batch_size", "8", "--turn", "2",
                                  "--log_every_steps", "2", "--json", str(path)])
  assert alone > 0 and whole > 0
  record = json.loads(path.read_text())
  assert len(record["program_intervals_images_per_s"]) == 2  # Steps 4 and 6; 2 compiles.
  assert "| ratio, program / step alone |" in capsys.readouterr().out


def test_case_flags_name_images_volumes_and_models():
  import argparse
  import training

  assert sampler.parse_case("2,5,7,3") == sampler.Case(2, 5, 7, 3, (5, 7))
  assert sampler.parse_case("2,8,6,1:3,4") == sampler.Case(2, 8, 6, 1, (3, 4))
  assert sampler.parse_case("2,3,4,5,1").label == "[2, 3, 4, 5, 1]"
  assert sampler.parse_case("2,3,4,5,1:2,2,2").out_shape == (2, 2, 2)
  for bad in ("2,5,7", "2,5,7,3:4", "2,0,7,3", "a,b,c,d", "2,5,7,3:4,x"):
    with pytest.raises(argparse.ArgumentTypeError):
      sampler.parse_case(bad)
  assert training.parse_case("gtsrb:48:256") == ("gtsrb", 48, 256)
  for bad in ("gtsrb:48", "resnet:48:256", "tutorial:0:4", "tutorial:28:-1"):
    with pytest.raises(argparse.ArgumentTypeError):
      training.parse_case(bad)


def test_a_failing_peer_is_recorded_and_the_run_goes_on(monkeypatch, tmp_path):
  """A peer that raises (out of memory, a dtype it lacks) fails its cells; the others
  run, bfloat16 cells included, and the JSON is written after each case."""
  def broken(case, mode, inputs, dtype):
    raise RuntimeError("out of memory")

  real_peers = sampler.peers
  monkeypatch.setattr(sampler, "peers", lambda device=None: (
      [p for p in real_peers(device)[0] if p[0] == "stnjax"] + [("broken", broken, None)],
      None, None))
  json_path = tmp_path / "cells.json"
  records = sampler.main(["--repeats", "1", "--warmup", "0", "--modes", "forward",
                          "--dtypes", "float32", "bfloat16", "--cases", "2,5,7,3", "2,4,3,1",
                          "--json", str(json_path)])
  assert [(r["shape"], r["dtype"], r["peer"], r["status"]) for r in records] == [
      (shape, dtype, peer, status) for shape in ("[2, 5, 7, 3]", "[2, 4, 3, 1]")
      for dtype in ("float32", "bfloat16")
      for peer, status in (("stnjax", "ok"), ("broken", "failed"))]
  assert all(r["reason"] == "RuntimeError: out of memory" for r in records
             if r["peer"] == "broken")
  assert json.loads(json_path.read_text())["records"] == json.loads(json.dumps(records))


def test_scatter_spread_counts_bitwise_distinct_results():
  import scatter_check

  results = iter([np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([1.0, 2.5]),
                  np.array([-0.0, 2.0]), np.array([1.0, 2.5])])

  def comparer(a, b):
    return a.tobytes() == b.tobytes(), float(np.abs(a - b).max())

  # Calls 1 and 2 agree; [1, 2.5] comes twice and [-0, 2] once: three results in all.
  assert scatter_check.spread(lambda: next(results), comparer, calls=5, seconds=60) == (5, 3, 1.0)


def test_scatter_check_compares_with_torch(tmp_path, capsys):
  import scatter_check

  path = tmp_path / "scatter.json"
  records = scatter_check.main(["--shape", "2", "9", "11", "2", "--scales", "0.25",
                                "--calls", "3", "--repeats", "1", "--warmup", "0",
                                "--json", str(path)])
  assert "| shape | dtype | scale | peer |" in capsys.readouterr().out
  by_peer = {r["peer"]: r for r in records}
  assert by_peer["stnjax"]["status"] == "ok" and by_peer["stnjax"]["spread_calls"] == 3
  # On the CPU, XLA's scatter-add is sequential: one result, bit for bit.
  assert by_peer["stnjax"]["distinct_results"] == 1
  if importlib.util.find_spec("torch"):
    assert by_peer["torch"]["max_abs_difference_stnjax_torch"] < 1e-4
  else:
    assert by_peer["torch"]["status"] == "skipped"
  assert json.loads(path.read_text())["records"] == json.loads(json.dumps(records))


def test_the_torch_gtsrb_twin_has_the_flax_net_s_parameters():
  torch = pytest.importorskip("torch", reason="torch is an optional benchmark peer")
  import jax
  import training
  from train import models

  inputs = (np.zeros((2, 48, 48, 3), np.float32), np.zeros(2, np.int32))
  step = training.torch_gtsrb_runner(48, 2, inputs)
  model = next(c.cell_contents for c in step.__closure__
               if isinstance(c.cell_contents, torch.nn.Module))
  flax_model = models.IdsiaNet(num_classes=43, stn="affine", num_transformers=2)
  shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), inputs[0]))["params"]
  assert sum(p.numel() for p in model.parameters()) == sum(
      int(np.prod(p.shape)) for p in jax.tree.leaves(shapes)) == 9201455
  assert np.isfinite(float(step()))


def test_ndimage_benchmark_peers_agree_and_a_tiny_run_reports(monkeypatch, tmp_path, capsys):
  image = np.random.default_rng(0).normal(size=(9, 11)).astype(np.float32)
  points = ndimage_benchmark.rotated_points(image.shape)
  for order in (1, 3):
    calls = ndimage_benchmark.runners(image, points, order, "forward")
    assert set(calls) == ({"stnjax", "jax.scipy", "scipy"} if order == 1 else {"stnjax", "scipy"})
    values = {name: np.asarray(call()) for name, call in calls.items()}
    for name, value in values.items():
      np.testing.assert_allclose(value, values["scipy"], atol=2e-5, err_msg=(order, name))
  monkeypatch.setattr(ndimage_benchmark, "SHAPES", ((9, 11), (4, 5, 6)))
  ndimage_benchmark.main(["--quick", "--orders", "0", "3", "--json", str(tmp_path / "n.json")])
  table = capsys.readouterr().out
  assert "| 4x5x6 | grad | 3 |" in table and "| 9x11 | forward | 0 |" in table
  records = json.loads((tmp_path / "n.json").read_text())["records"]
  assert {r["peer"] for r in records} == {"stnjax", "scipy", "jax.scipy"}
  assert all(r["ms"] > 0 for r in records)
