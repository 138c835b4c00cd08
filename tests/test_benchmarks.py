"""The sampler benchmark: its peers compute what stnjax computes, and a tiny run reports."""

import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import antialias  # noqa: E402
import baselines  # noqa: E402
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
