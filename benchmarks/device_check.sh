#!/usr/bin/env bash
# Issue 37's device run: stnjax on a GPU against PyTorch CUDA, in one call of at most 8 minutes.
#
#   bash benchmarks/device_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/device_check.sh --dry-run    # (or DRY_RUN=1) on the CPU: tiny shapes, 1-2 min
#   bash benchmarks/device_check.sh --platform cuda   # JAX's platform (default cuda; cpu when dry)
#   bash benchmarks/device_check.sh --only scatter,training   # these parts; the rest "skipped"
#
# Parts, each under its own time budget (`timeout`); a part that fails or runs out of
# time is recorded as such and the next one runs:
#   environment             device, driver, versions, the settings that change timings
#   tests                   the core tests on the platform (sampling, composability, volumes,
#                           antialias, modules), junit XML in $OUT/tests.xml
#   scatter                 benchmarks/scatter_check.py: the image gradient of a zoom-in
#                           (theta scale 0.25 and 1/32), its time and bitwise spread over 20
#                           calls, beside PyTorch's grid_sample backward
#   scatter_atomics_flag    the same, stnjax only, in a process started with
#                           XLA_FLAGS=--xla_backend_extra_options=-nvptx-allow-ftz-atomics
#                           (skipped on the CPU, whose XLA has no NVPTX backend)
#   scatter_deterministic   the same with XLA_FLAGS=--xla_gpu_deterministic_ops=true
#   sampler_2d, sampler_3d  benchmarks/sampler.py, stnjax against PyTorch on the same device:
#                           the CPU shapes plus [256, 224, 224, 3] and [64, 512, 512, 3];
#                           float32 and bfloat16; forward, grad theta, grad theta and image
#   training                benchmarks/training.py: the tutorial STN (batch 256, 28x28 and
#                           42x42) and the GTSRB net with two transformers (48x48, batch 256)
#
# Writes under $OUT (default: a new folder under /tmp, printed):
#   device_check.json   {"schema", "dry_run", "platform", "parts": {name: {"status", "seconds",
#                       "budget_s", "rc", "command", "reason"?, "result"?, "log_tail"?}},
#                       "summary"}; rewritten after each part, so a run cut short keeps the
#                       parts it finished (the others say "not_run")
#   sampler_gpu.json    the measurements alone, as docs/sampler_gpu.json keeps them: the
#                       device, versions and flags, every sampler cell, the zoom-in
#                       gradient's variants, the training steps, the test counts
#   tests.xml           pytest's junit XML
#   device_check.log    every part's output
# A part's status: ok, failed (its error, or failing tests), timeout, skipped, not_run.
# Exit status: 0 when every part that ran is ok, 1 otherwise (the report is written either way).
# Environment: OUT, PYTHON (default python3), TOTAL_S (seconds for all parts; default 470,
# 1200 when dry), BUDGET_<part> (that part's seconds, e.g. BUDGET_tests=200), TEST_WORKERS
# (pytest-xdist workers on the device; default 8).
set -u -o pipefail
# One compound command: bash reads it whole before running it, so an edit of this file
# during a run cannot change the run.
{

DRY_RUN=${DRY_RUN:-0}
PLATFORM=${PLATFORM:-}
ONLY=
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --platform) PLATFORM=${2:?--platform needs a name}; shift ;;
    --only) ONLY=,${2:?--only needs part names, e.g. scatter,training},; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $DRY_RUN == 1 || $DRY_RUN == true ]] && DRY_RUN=1 || DRY_RUN=0

cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/device_check.XXXXXX)}
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d /tmp/device_check_work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: > "$OUT/device_check.log"

if ((DRY_RUN)); then
  PLATFORM=cpu TORCH_DEVICE=cpu TOTAL_S=${TOTAL_S:-1200}
  # Fewer optimizations, faster compiles: the dry run checks what is reported, not speed.
  BENCH_ENV=(JAX_DISABLE_MOST_OPTIMIZATIONS=1)
else
  PLATFORM=${PLATFORM:-cuda} TOTAL_S=${TOTAL_S:-470}
  case $PLATFORM in cuda|gpu|rocm) TORCH_DEVICE=cuda ;; *) TORCH_DEVICE=cpu ;; esac
  # JAX takes at most this share of the GPU; PyTorch, in the same processes, the rest.
  BENCH_ENV=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.45)
fi
export JAX_PLATFORMS=$PLATFORM
DEADLINE=$(($(date +%s) + TOTAL_S))
PARTS=(environment tests scatter scatter_atomics_flag scatter_deterministic sampler_2d
       sampler_3d training)

# Each part's budget in seconds: on the device, then in a dry run.
declare -A BUDGET
if ((DRY_RUN)); then
  BUDGET=([environment]=60 [tests]=240 [scatter]=90 [scatter_atomics_flag]=90
          [scatter_deterministic]=90 [sampler_2d]=150 [sampler_3d]=150 [training]=240)
else
  BUDGET=([environment]=20 [tests]=120 [scatter]=40 [scatter_atomics_flag]=25
          [scatter_deterministic]=25 [sampler_2d]=100 [sampler_3d]=35 [training]=80)
fi
for name in "${PARTS[@]}"; do
  override=BUDGET_$name
  [[ -n ${!override:-} ]] && BUDGET[$name]=${!override}
done
# Parts that mean nothing on this platform: name -> why.
declare -A SKIP=()
[[ $PLATFORM == cpu ]] && SKIP[scatter_atomics_flag]="-nvptx-allow-ftz-atomics is an option \
of XLA's NVPTX (CUDA) backend: XLA:CPU ignores it (jaxlib 0.10) or refuses it (0.12)"
for name in ${ONLY//,/ }; do
  [[ -n ${BUDGET[$name]:-} ]] || { echo "device_check.sh: no part $name (${PARTS[*]})" >&2; exit 2; }
done

# ---- The JSON report: made at the start, one part merged in after each part. ----
cat > "$WORK/report.py" <<'PYTHON'
"""device_check.sh's report: `start`, `part NAME RC SECONDS BUDGET RESULT LOG COMMAND`, `finish`."""
import datetime
import json
import math
import os
import pathlib
import sys
import xml.etree.ElementTree as ET

OUT = pathlib.Path(os.environ["OUT"])
REPORT = OUT / "device_check.json"
STATUSES = ("ok", "failed", "timeout", "skipped", "not_run")


def now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save(report):
  temporary = REPORT.with_suffix(".tmp")
  temporary.write_text(json.dumps(report, indent=1, allow_nan=False, default=str))
  os.replace(temporary, REPORT)


def finite(value):
  """NaN and infinities as None, so that the JSON stays strict."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [finite(v) for v in value]
  return value


def junit_summary(path):
  root = ET.parse(path).getroot()
  counts = dict(passed=0, failed=0, errors=0, skipped=0)
  problems = []
  for case in root.iter("testcase"):
    test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
    outcome = "passed"
    for child in case:
      if child.tag in ("failure", "error", "skipped"):
        outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
        if child.tag != "skipped":
          problems.append({"id": test_id, "kind": child.tag,
                           "message": (child.get("message") or "")[:400]})
        break
    counts[outcome] += 1
  return dict(counts, total=sum(counts.values()), problems=problems[:50])


def start(parts, dry_run, platform, torch_device, total_s, budgets):
  save({"schema": 1, "dry_run": dry_run == "1", "platform": platform,
        "torch_device": torch_device, "total_s": int(total_s), "started": now(),
        "finished": None,
        "parts": {name: {"status": "not_run", "budget_s": int(budget),
                         "reason": "the script stopped before this part"}
                  for name, budget in zip(parts.split(), budgets.split())},
        "summary": {}})


def part(name, rc, seconds, budget, result, log, command):
  report = json.loads(REPORT.read_text())
  rc, log, result = int(rc), pathlib.Path(log), pathlib.Path(result)
  record = {"status": "ok", "seconds": round(float(seconds), 1), "budget_s": int(budget),
            "rc": rc, "command": command}
  text = log.read_text(errors="replace") if log.exists() else ""
  if result.exists() and result.stat().st_size:
    try:
      record["result"] = (junit_summary(result) if result.suffix == ".xml"
                          else finite(json.loads(result.read_text())))
    except Exception as error:  # A result cut off mid-write by the timeout.
      record["result_error"] = f"{type(error).__name__}: {error}"[:300]
  last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
  if rc == 199:
    record.update(status="skipped", reason=last_line)
  elif rc in (124, 137):
    record.update(status="timeout", reason=f"ran past its {budget} s budget; "
                  "the result holds what it wrote before")
  elif rc != 0:
    record.update(status="failed", reason=f"exit status {rc}: {last_line}"[:500])
  elif "result" not in record:
    record.update(status="failed", reason="exit status 0 but no result written")
  if record["status"] in ("failed", "timeout"):
    record["log_tail"] = text[-3000:]
  report["parts"][name] = record
  save(report)


def rows(report, name):
  return ((report["parts"][name].get("result") or {}).get("records")) or []


def summary(report):
  """The numbers the issue asks for, from the parts' results."""
  lines, summary = [], {}
  for name, record in report["parts"].items():
    lines.append(f"{name:<22} {record['status']:<8} {record.get('seconds', '-'):>6} s"
                 + (f"  {record['reason'][:100]}" if record.get("reason") else ""))
  tests = report["parts"]["tests"].get("result")
  if tests:
    summary["tests"] = {k: tests[k] for k in ("passed", "failed", "errors", "skipped")}
    lines.append("tests: " + ", ".join(f"{v} {k}" for k, v in summary["tests"].items()))
    lines += [f"  {p['kind']}: {p['id']}: {p['message'][:120]}" for p in tests["problems"][:10]]
  cells = [r for n in ("sampler_2d", "sampler_3d") for r in rows(report, n)]
  rated = [r for r in cells if r["peer"] == "stnjax" and r.get("ratio_vs_torch")]
  if cells:
    ratios = sorted(r["ratio_vs_torch"] for r in rated)
    summary["sampler"] = {
        "cells": len({(r["shape"], r.get("dtype"), r["mode"]) for r in cells}),
        "stnjax_vs_torch": len(ratios),
        "failed": sum(r["status"] == "failed" for r in cells),
        "min_ratio": ratios[0] if ratios else None,
        "median_ratio": ratios[len(ratios) // 2] if ratios else None,
        "below_1": [f"{r['shape']} {r.get('dtype')} {r['mode']}: {r['ratio_vs_torch']:.2f}x"
                    for r in rated if r["ratio_vs_torch"] < 1.0]}
    lines.append(f"sampler: {len(ratios)} stnjax cells against torch"
                 + (f", ratio min {ratios[0]:.2f}x, median {ratios[len(ratios) // 2]:.2f}x"
                    if ratios else "")
                 + f"; below 1.0x: {len(summary['sampler']['below_1'])}; failed records: "
                 f"{summary['sampler']['failed']}")
    lines += [f"  below 1.0x: {cell}" for cell in summary["sampler"]["below_1"][:20]]
    skipped = {r["peer"]: r["reason"] for r in cells if r["status"] == "skipped"}
    lines += [f"  skipped {peer}: {reason}" for peer, reason in skipped.items()]
  scatter = []
  for name in ("scatter", "scatter_atomics_flag", "scatter_deterministic"):
    for r in rows(report, name):
      item = {"variant": name, **{k: r.get(k) for k in (
          "peer", "scale", "dtype", "status", "median_ms", "distinct_results",
          "spread_calls", "max_abs_difference", "reason")}}
      scatter.append(item)
      lines.append(f"{name:<22} {r['peer']:<7} scale {r['scale']:<8g} " + (
          f"{r['median_ms']:9.3f} ms, {r['distinct_results']} distinct of "
          f"{r['spread_calls']}, max diff {r['max_abs_difference']:.3g}"
          if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')[:80]}"))
  if scatter:
    summary["scatter"] = scatter
  training = []
  for r in rows(report, "training"):
    training.append({k: r.get(k) for k in ("model", "shape", "torch_images_per_s",
                                           "stnjax_images_per_s", "ratio_vs_torch", "status")})
    ratio = r.get("ratio_vs_torch")
    lines.append(f"training {r['model']:<9} {r['shape']:<18} stnjax "
                 f"{r.get('stnjax_images_per_s') or 0:9.0f} img/s, torch "
                 f"{r.get('torch_images_per_s') or 0:9.0f} img/s"
                 + (f", {ratio:.2f}x" if ratio else f" ({r.get('status')})"))
  if training:
    summary["training"] = training
  return summary, lines


def measurements(report):
  """docs/sampler_gpu.json: what was measured, on what, without the run's bookkeeping."""
  parts = report["parts"]
  environment = parts["environment"].get("result") or {}
  benchmark = next((parts[n]["result"]["environment"] for n in ("sampler_2d", "scatter",
                    "training", "sampler_3d") if (parts[n].get("result") or {}).get(
                        "environment")), {})
  return {
      "source": "bash benchmarks/device_check.sh (issue 37)", "date": report["finished"],
      "dry_run": report["dry_run"], "platform": report["platform"],
      "device": environment.get("jax_devices"), "torch_device": benchmark.get("torch_device"),
      "nvidia_smi": environment.get("nvidia-smi"), "versions": environment.get("versions"),
      "python": environment.get("python"), "commit": environment.get("git"),
      "torch_settings": {k: v for k, v in benchmark.items() if k.startswith("torch_")},
      "parts": {name: part["status"] for name, part in parts.items()},
      "tests": report["summary"].get("tests"),
      "sampler": rows(report, "sampler_2d") + rows(report, "sampler_3d"),
      "scatter": {name: {"xla_flags": (parts[name].get("result") or {}).get(
                             "environment", {}).get("xla_flags"), "records": rows(report, name)}
                  for name in ("scatter", "scatter_atomics_flag", "scatter_deterministic")},
      "training": rows(report, "training"),
  }


def finish():
  report = json.loads(REPORT.read_text())
  report["summary"], lines = summary(report)
  report["finished"] = now()
  save(report)
  (OUT / "sampler_gpu.json").write_text(json.dumps(measurements(report), indent=1))
  print("\n".join(lines))
  return 0 if all(r["status"] in ("ok", "skipped") for r in report["parts"].values()) else 1


if __name__ == "__main__":
  sys.exit({"start": start, "part": part, "finish": finish}[sys.argv[1]](*sys.argv[2:]))
PYTHON

# ---- The environment probe: device, driver, versions, settings. ----
cat > "$WORK/environment.py" <<'PYTHON'
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

info = {"python": sys.version.split()[0], "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS",
                                               "XLA_PYTHON_CLIENT_MEM_FRACTION")}}
versions = {}
for package in ("stnjax", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt",
                "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint", "chex", "numpy",
                "torch", "pytest", "pytest-xdist", "pytest-timeout"):
  try:
    versions[package] = importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    pass
info["versions"] = versions
for command in (["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                 "clocks.max.sm,clocks.mem,power.limit,persistence_mode",
                 "--format=csv,noheader"], ["git", "rev-parse", "HEAD"]):
  try:
    info[command[0]] = subprocess.run(command, capture_output=True, text=True,
                                      timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError) as error:
    info[command[0]] = f"unavailable: {error}"
import jax  # noqa: E402

info["jax_backend"] = jax.default_backend()
info["jax_devices"] = [f"{d.platform}: {getattr(d, 'device_kind', '')}" for d in jax.devices()]
try:
  import torch
  info["torch_cuda"] = torch.cuda.is_available()
  if torch.cuda.is_available():
    info["torch_device"] = torch.cuda.get_device_name()
    info["torch_cuda_version"] = torch.version.cuda
    info["torch_cudnn"] = torch.backends.cudnn.version()
except ImportError:
  info["torch"] = "not installed"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps({k: info[k] for k in ("jax_devices", "versions")}))
PYTHON

report() { OUT=$OUT "$PYTHON" "$WORK/report.py" "$@"; }

budgets=()
for name in "${PARTS[@]}"; do budgets+=("${BUDGET[$name]}"); done
report start "${PARTS[*]}" "$DRY_RUN" "$PLATFORM" "$TORCH_DEVICE" "$TOTAL_S" "${budgets[*]}" \
  || { echo "device_check.sh: $PYTHON cannot write $OUT/device_check.json" >&2; exit 1; }
echo "device_check: dry run $DRY_RUN, JAX platform $PLATFORM, torch $TORCH_DEVICE, OUT=$OUT"

# part NAME RESULT_FILE COMMAND...: runs COMMAND under NAME's budget (cut to the time left),
# then merges RESULT_FILE (JSON, or junit XML) and the outcome into the report.
part() {
  local name=$1 result=$2; shift 2
  local budget=${BUDGET[$name]} left=$((DEADLINE - $(date +%s) - 5))
  ((budget > left)) && budget=$left
  local log="$WORK/$name.log" start rc
  start=$(date +%s%N)
  if [[ -n $ONLY && $ONLY != *,$name,* ]]; then
    echo "not among --only ${ONLY:1:-1}" > "$log"; rc=199
  elif [[ -n ${SKIP[$name]:-} ]]; then
    echo "${SKIP[$name]}" > "$log"; rc=199
  elif ((left < 5)); then
    echo "no time left: the script's $TOTAL_S s were spent" > "$log"; rc=199
  else
    echo "== $name (budget $budget s): $*" | tee -a "$OUT/device_check.log"
    timeout -s INT -k 10 "$budget" "$@" > "$log" 2>&1; rc=$?
  fi
  local seconds=$(( ($(date +%s%N) - start) / 1000000 ))e-3
  cat "$log" >> "$OUT/device_check.log"
  echo "== $name: exit status $rc after $seconds s" | tee -a "$OUT/device_check.log"
  report part "$name" "$rc" "$seconds" "$budget" "$result" "$log" "$*"
}

part environment "$WORK/environment.json" "$PYTHON" "$WORK/environment.py" "$WORK/environment.json"

# The core tests on the platform; tests that assume the host skip themselves.
TESTS=(tests/test_sampling.py tests/test_composability.py tests/test_volumes.py
       tests/test_antialias.py tests/test_modules.py)
TEST_FLAGS=(-p no:cacheprovider -q -rfE --junitxml="$OUT/tests.xml")
if ((DRY_RUN)); then
  TESTS=(tests/test_sampling.py::test_non_square_axes_are_not_swapped
         tests/test_volumes.py::test_translation_by_whole_voxels_shifts_the_volume
         tests/test_modules.py::test_idsia_preset_concatenates_two_scales
         tests/test_antialias.py::test_volumes_are_refused)
else
  "$PYTHON" -c "import xdist" 2>/dev/null && TEST_FLAGS+=(-n "${TEST_WORKERS:-8}")
  "$PYTHON" -c "import pytest_timeout" 2>/dev/null && TEST_FLAGS+=(--timeout=90)
fi
# Several test processes share the GPU: none takes most of its memory up front.
part tests "$OUT/tests.xml" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  "$PYTHON" -m pytest "${TEST_FLAGS[@]}" "${TESTS[@]}"

# The zoom-in's image gradient: plain, with the atomics flag, with deterministic ops.
if ((DRY_RUN)); then
  SCATTER=(--shape 2 16 16 3 --scales 0.25 --calls 4 --repeats 2 --warmup 1 --budget_s 2)
else
  SCATTER=(--shape 64 512 512 3 --scales 0.25 0.03125 --calls 20 --repeats 20 --budget_s 10)
fi
flags() { echo "${XLA_FLAGS:+$XLA_FLAGS }$1"; }
part scatter "$WORK/scatter.json" env "${BENCH_ENV[@]}" \
  "$PYTHON" benchmarks/scatter_check.py "${SCATTER[@]}" --device "$TORCH_DEVICE" \
  --json "$WORK/scatter.json"
part scatter_atomics_flag "$WORK/scatter_atomics_flag.json" env "${BENCH_ENV[@]}" \
  XLA_FLAGS="$(flags --xla_backend_extra_options=-nvptx-allow-ftz-atomics)" \
  "$PYTHON" benchmarks/scatter_check.py "${SCATTER[@]}" --peers stnjax \
  --json "$WORK/scatter_atomics_flag.json"
part scatter_deterministic "$WORK/scatter_deterministic.json" env "${BENCH_ENV[@]}" \
  XLA_FLAGS="$(flags --xla_gpu_deterministic_ops=true)" \
  "$PYTHON" benchmarks/scatter_check.py "${SCATTER[@]}" --peers stnjax \
  --json "$WORK/scatter_deterministic.json"

# The sampler against PyTorch on the same device.
SAMPLER=(--peers stnjax --dtypes float32 bfloat16 --device "$TORCH_DEVICE")
if ((DRY_RUN)); then
  SAMPLER+=(--repeats 1 --warmup 0)
  SAMPLER_2D=(--cases 2,6,5,3:4,7) SAMPLER_3D=(--cases 2,3,4,5,1)
else
  SAMPLER+=(--repeats 20 --warmup 3)
  SAMPLER_2D=(--dims 2 --gpu_shapes) SAMPLER_3D=(--dims 3)
fi
part sampler_2d "$WORK/sampler_2d.json" env "${BENCH_ENV[@]}" \
  "$PYTHON" benchmarks/sampler.py "${SAMPLER[@]}" "${SAMPLER_2D[@]}" --json "$WORK/sampler_2d.json"
part sampler_3d "$WORK/sampler_3d.json" env "${BENCH_ENV[@]}" \
  "$PYTHON" benchmarks/sampler.py "${SAMPLER[@]}" "${SAMPLER_3D[@]}" --json "$WORK/sampler_3d.json"

# Training steps against PyTorch on the same device.
if ((DRY_RUN)); then
  TRAINING=(--cases tutorial:28:2 gtsrb:8:2 --repeats 1 --warmup 0)
else
  TRAINING=(--cases tutorial:28:256 tutorial:42:256 gtsrb:48:256 --repeats 20 --warmup 3)
fi
part training "$WORK/training.json" env "${BENCH_ENV[@]}" \
  "$PYTHON" benchmarks/training.py "${TRAINING[@]}" --device "$TORCH_DEVICE" \
  --json "$WORK/training.json"

report finish; status=$?
echo "device_check: wrote $(cd "$OUT" && echo *) in $OUT"
exit $status
}
