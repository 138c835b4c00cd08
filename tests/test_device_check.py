"""benchmarks/device_check.sh (issue 37's GPU run) as a dry run on the CPU: every part runs
on tiny shapes and reports in the JSON the device run writes. PyTorch is optional: its
cells are skipped with a reason where it is not installed."""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device_check.sh"
PARTS = ("environment", "tests", "scatter", "scatter_atomics_flag", "scatter_deterministic",
         "sampler_2d", "sampler_3d", "training")
HAS_TORCH = importlib.util.find_spec("torch") is not None
# The NVPTX atomics flag means nothing to XLA:CPU: the dry run skips that part.
SKIPPED_ON_CPU = ("scatter_atomics_flag",)


def run_script(out, *args, **env):
  environ = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env)
  environ.pop("DRY_RUN", None)
  return subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True,
                        text=True, timeout=1800, cwd=REPO)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check")
  completed = run_script(out, "--dry-run")
  report = json.loads((out / "device_check.json").read_text())
  return out, completed, report


def records(report, part):
  return report["parts"][part]["result"]["records"]


def test_every_part_runs_and_reports(dry_run):
  out, completed, report = dry_run
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  assert report["schema"] == 1 and report["dry_run"] is True and report["platform"] == "cpu"
  assert report["started"] and report["finished"]
  assert tuple(report["parts"]) == PARTS
  for name, part in report["parts"].items():
    if name in SKIPPED_ON_CPU:
      assert part["status"] == "skipped" and "NVPTX" in part["reason"]
      continue
    assert part["status"] == "ok", (name, part.get("reason"), part.get("log_tail"))
    assert part["seconds"] <= part["budget_s"] + 10 and part["command"] and "result" in part
  assert set(report["summary"]) == {"tests", "sampler", "scatter", "training"}
  # What the device tool brings back: at most 8 files, plain names, one folder level.
  files = sorted(p.name for p in out.iterdir())
  assert files == ["device_check.json", "device_check.log", "sampler_gpu.json", "tests.xml"]
  assert "== training: exit status 0" in (out / "device_check.log").read_text()


def test_measured_numbers_are_finite(dry_run):
  _, _, report = dry_run
  numbers = []

  def walk(value):
    if isinstance(value, dict):
      for item in value.values():
        walk(item)
    elif isinstance(value, list):
      for item in value:
        walk(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      numbers.append(value)

  walk(report)
  assert numbers and all(math.isfinite(v) for v in numbers)
  for part in ("sampler_2d", "sampler_3d", "scatter"):
    assert all(r["median_ms"] > 0 for r in records(report, part) if r["status"] == "ok")


def test_tests_part_counts_the_subset(dry_run):
  _, _, report = dry_run
  result = report["parts"]["tests"]["result"]
  assert result["passed"] == result["total"] == 4 and result["problems"] == []


def test_sampler_cells_cover_both_dtypes_every_mode_and_torch(dry_run):
  _, _, report = dry_run
  for part, shape in (("sampler_2d", "[2, 6, 5, 3] -> 4x7"), ("sampler_3d", "[2, 3, 4, 5, 1]")):
    rows = records(report, part)
    assert {(r["dtype"], r["mode"]) for r in rows if r["peer"] == "stnjax"
            and r["status"] == "ok" and r["shape"] == shape} == {
                (d, m) for d in ("float32", "bfloat16")
                for m in ("forward", "grad_theta", "grad_theta_image")}
    torch_rows = [r for r in rows if r["peer"] == "torch"]
    assert len(torch_rows) == 6
    if HAS_TORCH:
      assert all(r["status"] == "ok" for r in torch_rows)
      assert all(r["ratio_vs_torch"] > 0 for r in rows if r["peer"] == "stnjax")
    else:
      assert all(r["status"] == "skipped" and "not installed" in r["reason"]
                 for r in torch_rows)
    assert report["parts"][part]["result"]["environment"]["device"].startswith("cpu")


def test_scatter_variants_run_in_their_own_processes(dry_run):
  _, _, report = dry_run
  flags = {"scatter": "", "scatter_deterministic": "--xla_gpu_deterministic_ops=true"}
  for part, flag in flags.items():
    result = report["parts"][part]["result"]
    assert flag in result["environment"]["xla_flags"]
    (row,) = [r for r in result["records"] if r["peer"] == "stnjax"]
    assert row["status"] == "ok" and row["scale"] == 0.25
    assert 3 <= row["spread_calls"] <= 4 and 1 <= row["distinct_results"] <= row["spread_calls"]
    assert row["max_abs_difference"] >= 0 and row["gradient_max_abs"] > 0
  (torch_row,) = [r for r in records(report, "scatter") if r["peer"] == "torch"]
  if HAS_TORCH:
    assert torch_row["status"] == "ok"
    # The same gradient, up to float32 rounding.
    assert torch_row["max_abs_difference_stnjax_torch"] < 1e-4
  else:
    assert torch_row["status"] == "skipped" and "not installed" in torch_row["reason"]
  assert all(r["variant"] for r in report["summary"]["scatter"])


def test_training_runs_both_models(dry_run):
  _, _, report = dry_run
  rows = records(report, "training")
  assert [(r["model"], r["shape"]) for r in rows] == [("tutorial", "[2, 28, 28, 1]"),
                                                     ("gtsrb", "[2, 8, 8, 3]")]
  for row in rows:
    assert row["status"]["stnjax"] == "ok" and row["stnjax_images_per_s"] > 0
    assert row["status"]["torch"] == ("ok" if HAS_TORCH else "skipped")


def test_the_measurements_file_holds_every_cell(dry_run):
  out, _, report = dry_run
  saved = json.loads((out / "sampler_gpu.json").read_text())
  assert saved["platform"] == "cpu" and saved["device"] == ["cpu: cpu"]
  assert saved["versions"]["jax"] and saved["parts"] == {
      name: "skipped" if name in SKIPPED_ON_CPU else "ok" for name in PARTS}
  assert saved["sampler"] == records(report, "sampler_2d") + records(report, "sampler_3d")
  assert saved["training"] == records(report, "training")
  assert saved["scatter"]["scatter_deterministic"]["xla_flags"].endswith(
      "--xla_gpu_deterministic_ops=true")
  assert saved["tests"]["passed"] == 4


def test_a_failing_part_is_recorded_and_the_others_skipped(tmp_path):
  completed = run_script(tmp_path, "--platform", "no_such_platform", "--only", "environment")
  assert completed.returncode == 1
  report = json.loads((tmp_path / "device_check.json").read_text())
  environment = report["parts"]["environment"]
  assert environment["status"] == "failed" and environment["rc"] == 1
  assert "no_such_platform" in environment["reason"] and environment["log_tail"]
  assert all(report["parts"][name]["status"] == "skipped"
             and "--only" in report["parts"][name]["reason"] for name in PARTS[1:])


def test_bad_arguments_are_refused(tmp_path):
  completed = run_script(tmp_path, "--no-such-flag")
  assert completed.returncode == 2 and "unknown argument" in completed.stderr
  completed = run_script(tmp_path, "--only", "scatter,nothing")
  assert completed.returncode == 2 and re.search(r"no part nothing", completed.stderr)
