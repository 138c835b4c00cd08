"""benchmarks/table1.py: the grid, resuming, and the report it writes from results.json."""

import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import report  # noqa: E402
import table1  # noqa: E402


def fake_finished_run(run, runs_dir, error, curve=(0.4, 0.3), budget=None, canonicalization=None):
  """What train.distorted_mnist leaves in a finished run's workdir."""
  workdir = run.workdir(runs_dir)
  (workdir / "pictures").mkdir(parents=True)
  config = dict(table1.BUDGET if budget is None else budget, seed=run.seed)
  (workdir / "results.json").write_text(json.dumps(
      {"test_error": error, "test_accuracy": 1 - error, "wall_time_s": 30.0, "config": config,
       "canonicalization": canonicalization}))
  (workdir / "metrics.jsonl").write_text("".join(
      json.dumps({"epoch": e + 1, "validation_accuracy": 1 - v}) + "\n"
      for e, v in enumerate(curve)))
  (workdir / "attempts.jsonl").write_text(
      json.dumps({"wall_time_s": 50.0, "returncode": -9}) + "\n"
      + json.dumps({"wall_time_s": 70.0, "returncode": 0}) + "\n")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(workdir / "pictures" / "epoch_001.png")
  # The last epoch's picture differs from run to run (its grey level is the error).
  Image.fromarray(np.full((4, 4, 3), round(1000 * error) % 256, np.uint8)).save(
      workdir / "pictures" / "epoch_002.png")


def test_grid_runs_every_cell_with_three_seeds_on_r_and_rts():
  runs = table1.grid(["fashion_mnist"], table1.DISTORTIONS)
  assert len(runs) == len(set(runs)) == 4 * (3 + 3 + 1 + 1)
  assert all(run.seed == 0 for run in runs[:16])  # A partial grid fills the table first.
  assert runs[16].distortion == "rts"
  command = runs[0].command(table1.REPO / "outputs" / "table1")
  assert command.startswith("python -m train.distorted_mnist --dataset fashion_mnist")
  assert "--workdir outputs/table1/fashion_mnist/r/none/seed0" in command
  assert "--max_train_examples 15000" in command and "--num_epochs 4" in command


def test_report_tables_spread_pictures_and_wall_times(tmp_path):
  runs_dir, results_md = tmp_path / "runs", tmp_path / "docs" / "results.md"
  results_md.parent.mkdir()
  results_md.write_text("# Results\n\nintro\n\n<!-- table1:begin -->\nold\n<!-- table1:end -->\n"
                        "\n## Training speed\n")
  runs = table1.grid(["fashion_mnist"], ("r", "rts"))
  for seed, (cnn, st) in enumerate(((0.30, 0.20), (0.32, 0.21), (0.28, 0.22))):
    fake_finished_run(table1.Run("fashion_mnist", "rts", "none", seed), runs_dir, cnn)
    fake_finished_run(table1.Run("fashion_mnist", "rts", "affine", seed), runs_dir, st)
  spreads = {"input": {"rotation_deg": 54.4, "log_scale": 0.0, "translation_px": 0.0},
             "model": {"rotation_deg": 20.0, "log_scale": 0.1, "translation_px": 1.5},
             "rotation_by_input_angle": [
                 {"input_deg": [low, low + 15], "count": count, "abs_residual_deg": left,
                  "residual_deg": left}
                 for low, count, left in ((-90, 10, 50.0), (-75, 30, 30.0), (-30, 10, 4.0),
                                          (-15, 10, 2.0), (15, 20, 8.0), (60, 10, 40.0))]}
  fake_finished_run(table1.Run("fashion_mnist", "r", "affine", 0), runs_dir, 0.1,
                    canonicalization=spreads)
  text = table1.write_report(runs, runs_dir, results_md, results_md.parent / "results")
  # Rotation left, weighted by count: (10 * 4 + 10 * 2 + 20 * 8) / 40 = 5.5 within 30 degrees,
  # (10 * 50 + 30 * 30 + 10 * 40) / 50 = 36 beyond 60.
  assert ("| R | ST-CNN affine | 0 | 54.4 -> 20.0 | 0.37 | 5.5 / 36.0 | 0.000 -> 0.100 | "
          "0.00 -> 1.50 |") in text
  assert "| RTS | ST-CNN affine | 1 | not measured" in text
  rts_cnn = next(line for line in text.splitlines() if line.startswith("| CNN |"))
  assert "30.00 ± 2.00" in rts_cnn and "| 0.8 |" in rts_cnn  # Ours, then the paper's.
  assert "| RTS | ST-CNN affine | 9.00 | 2.00 | yes |" in text
  # The killed attempt's 50 s plus the finishing process's 30 s.
  assert "| fashion_mnist r ST-CNN affine seed 0 | 10.00 | 1.3 min |" in text
  assert "| fashion_mnist r CNN seed 0 | not run |" in text
  assert "7 finished runs of 24" in text
  page = results_md.read_text()
  assert page.startswith("# Results\n\nintro\n") and page.endswith("\n## Training speed\n")
  assert "old" not in page and page.count("<!-- table1:begin -->") == 1
  with Image.open(results_md.parent / "results" / "fashion_mnist_curves.png") as curves:
    assert curves.format == "PNG" and curves.size == (1100, 396)  # 2 panels of 5 x 3.6 in, 110 dpi.
  # Each distortion's picture is the last epoch's of its ST-CNN affine seed 0 run.
  for distortion in ("r", "rts"):
    run = table1.Run("fashion_mnist", distortion, "affine", 0)
    copied = results_md.parent / "results" / f"fashion_mnist_{distortion}_affine.png"
    last_epoch = run.workdir(runs_dir) / "pictures" / "epoch_002.png"
    assert copied.read_bytes() == last_epoch.read_bytes()
  assert "](results/fashion_mnist_r_affine.png)" in page
  table1.write_report(runs, runs_dir, results_md, results_md.parent / "results")
  assert results_md.read_text() == page  # Regenerating changes nothing.


def test_runs_with_another_budget_do_not_count(tmp_path):
  run = table1.Run("fashion_mnist", "r", "none", 0)
  fake_finished_run(run, tmp_path, 0.2, budget=dict(table1.BUDGET, num_epochs=1))
  assert table1.load_results(run, tmp_path) is None


def test_main_runs_only_what_is_missing(tmp_path, monkeypatch, capsys):
  runs_dir = tmp_path / "runs"
  done = table1.Run("fashion_mnist", "p", "none", 0)
  fake_finished_run(done, runs_dir, 0.2)
  executed = []

  def fake_execute(run, runs_dir, data_dir):
    executed.append(run)
    if run.model != "tps":  # One run fails: reported, the others still run.
      fake_finished_run(run, runs_dir, 0.25)
    return 0 if run.model != "tps" else 2

  monkeypatch.setattr(table1, "execute", fake_execute)
  code = table1.main(["--only", "p", "--datasets", "fashion_mnist", "--runs_dir", str(runs_dir),
                      "--results_md", str(tmp_path / "results.md")])
  assert code == 1
  assert [run.model for run in executed] == ["affine", "projective", "tps"]
  output = capsys.readouterr().out
  assert "done already" in output and "failed (exit 2)" in output
  assert "| fashion_mnist p ST-CNN TPS seed 0 | not run |" in (tmp_path / "results.md").read_text()


def test_bad_flags_are_rejected(capsys):
  with pytest.raises(SystemExit):
    table1.parse_args(["--only", "r,x"])
  with pytest.raises(SystemExit):
    table1.parse_args(["--datasets", "cifar"])
  assert "--datasets takes fashion_mnist,mnist or auto, got 'cifar'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    table1.parse_args(["--models", "none,cnn"])
  assert "--models takes models from none,affine,projective,tps, got 'none,cnn'" in (
      capsys.readouterr().err)
  with pytest.raises(SystemExit):
    table1.parse_args(["--budget", "huge"])


def test_replace_section_appends_then_replaces(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("# Title")
  report.replace_section(page, "speed", "| a |")
  assert page.read_text() == "# Title\n<!-- speed:begin -->\n| a |\n<!-- speed:end -->\n"
  report.replace_section(page, "speed", "| b |")
  assert page.read_text() == "# Title\n<!-- speed:begin -->\n| b |\n<!-- speed:end -->\n"


def test_long_budget_has_its_own_runs_section_and_pictures(tmp_path, capsys):
  runs_dir, results_md = tmp_path / "runs", tmp_path / "results.md"
  results_md.write_text("# page\n<!-- table1:begin -->\nstandard\n<!-- table1:end -->\n")
  runs = table1.grid(["fashion_mnist"], ["r"], "long")
  assert len(runs) == 12 and {run.budget for run in runs} == {"long"}
  assert "--max_train_examples 55000" in runs[0].command(runs_dir)
  # A run with the standard budget's config is not a finished long run.
  tps = table1.Run("fashion_mnist", "r", "tps", 0, "long")
  fake_finished_run(tps, runs_dir, 0.2)
  assert table1.load_results(tps, runs_dir) is None
  for seed in (0, 1, 2):
    fake_finished_run(table1.Run("fashion_mnist", "r", "none", seed, "long"), runs_dir, 0.2,
                      budget=table1.BUDGETS["long"])
    fake_finished_run(table1.Run("fashion_mnist", "r", "affine", seed, "long"), runs_dir,
                      0.15 + seed / 1000, budget=table1.BUDGETS["long"])
  table1.write_report(runs, runs_dir, results_md, tmp_path / "results")
  page = results_md.read_text()
  assert "standard" in page and "<!-- table1_long:begin -->" in page
  assert "max_train_examples 55000" in page and "| R | ST-CNN affine |" in page
  with Image.open(tmp_path / "results" / "fashion_mnist_curves_long.png") as curves:
    assert curves.size == (550, 396)  # One panel (R), 5 x 3.6 in at 110 dpi.
  code = table1.main(["--budget", "long", "--only", "r", "--models", "affine,none",
                      "--datasets", "fashion_mnist", "--dry_run"])
  printed = capsys.readouterr().out
  assert code == 0 and "outputs/table1_long/fashion_mnist/r/none/seed0" in printed
  assert "[1/6]" in printed and "--stn tps" not in printed
  # The report covers the whole grid on disk, not only the models or distortions run now.
  code = table1.main(["--budget", "long", "--only", "r", "--models", "affine",
                      "--datasets", "fashion_mnist", "--report_only", "--runs_dir",
                      str(runs_dir), "--results_md", str(results_md)])
  page = results_md.read_text()
  assert code == 0 and "| CNN | 20.00 ± 0.00 |" in page and "| ST-CNN TPS | - |" in page


def test_the_recipe_budget_is_the_recipe_config():
  from train import configs
  for name, value in table1.BUDGETS["recipe"].items():
    assert getattr(configs.recipe(), name) == value, name
