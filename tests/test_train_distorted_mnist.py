"""`python -m train.distorted_mnist` end to end on a tiny generated IDX dataset."""

import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saved_runs import cross_entropy
from saved_runs import restore_state
from train import config as config_lib
from train import configs
from train import distorted_mnist
from train import models
from train import trainer
from train.data import distortions
from train.data import idx

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("fast_training_compiles")


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory):
  """A folder of IDX files: 96 training and 32 test 28x28 images with labels."""
  folder = tmp_path_factory.mktemp("idx")
  rng = np.random.default_rng(0)
  for split, count in (("train", 96), ("test", 32)):
    labels = rng.integers(0, 10, count)
    images = np.zeros((count, 28, 28), np.uint8)
    for i, label in enumerate(labels):  # A bar whose position encodes the label.
      images[i, 4:24, 2 + 2 * label:5 + 2 * label] = 255
    image_file, label_file = idx.FILES[split]
    idx.write_idx(folder / image_file, images)
    idx.write_idx(folder / label_file, labels)
  return folder


def flags(data_dir, workdir, *extra):
  return ["--dataset", "mnist", "--data_dir", str(data_dir), "--workdir", str(workdir),
          "--distortion", "r", "--batch_size", "16", "--eval_batch_size", "16",
          "--validation_examples", "16", "--checkpoint_every_steps", "2", *extra]


def read_metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def evaluate_checkpoint(data_dir, workdir, step, seed=0):
  """The saved parameters of `step`, their sha256 as results.json computes it, and
  {split: (loss, accuracy)} of the model on the test and validation examples, evaluated
  here in one batch (not by the trainer's batched evaluation)."""
  params = restore_state((workdir / "checkpoints" / str(step) / "state").resolve())["params"]
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  model = models.DigitCnn(num_classes=10, stn="affine")
  metrics = {}
  # 96 training images: the last 16 are the validation examples.
  for name, split, indices in (("test", "test", np.arange(32)),
                               ("validation", "train", np.arange(80, 96))):
    images = idx.read_idx(data_dir / idx.FILES[split][0])
    labels = idx.read_idx(data_dir / idx.FILES[split][1])[indices]
    inputs = distortions.distort("r", images, indices, seed, split)
    logits = model.apply({"params": params}, inputs)
    metrics[name] = (cross_entropy(logits, labels).mean(),
                     int((np.asarray(logits).argmax(-1) == labels).sum()) / len(labels))
  return digest.hexdigest(), metrics


def check_results_match_checkpoint(data_dir, workdir, step):
  """results.json and the last metrics.jsonl record hold the final checkpoint's numbers."""
  results = json.loads((workdir / "results.json").read_text())
  digest, metrics = evaluate_checkpoint(data_dir, workdir, step)
  assert results["steps"] == step and results["params_sha256"] == digest
  test_loss, test_accuracy = metrics["test"]
  assert results["test_accuracy"] == test_accuracy
  assert results["test_error"] == 1 - test_accuracy
  np.testing.assert_allclose(results["test_loss"], test_loss, rtol=1e-5)
  last = read_metrics(workdir)[-1]
  assert last["step"] == step and last["validation_accuracy"] == metrics["validation"][1]
  np.testing.assert_allclose(last["validation_loss"], metrics["validation"][0], rtol=1e-5)
  return results


def test_trains_writes_outputs_and_resumes(tiny_idx, tmp_path, capsys):
  workdir = tmp_path / "run"
  # Evaluation batches of 12: the 32 test and 16 validation examples end in a short batch.
  extra = ("--eval_batch_size", "12")
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "1", *extra)) == 0
  assert [m["epoch"] for m in read_metrics(workdir)] == [1]
  for name in ("results.json", "pictures/epoch_001.png", "pictures/epochs.gif",
               "pictures/canonicalization.png"):
    assert (workdir / name).is_file(), name
  assert (workdir / "checkpoints").is_dir() and (workdir / "best").is_dir()
  first = check_results_match_checkpoint(tiny_idx, workdir, 5)
  spread = first["canonicalization"]  # R: uniform rotations, in the input.
  assert 40 < spread["input"]["rotation_deg"] < 70 and spread["input"]["log_scale"] < 1e-4
  assert set(spread["model"]) == {"rotation_deg", "log_scale", "translation_px"}
  by_angle = spread["rotation_by_input_angle"]
  assert by_angle[0]["input_deg"][0] >= -105 and by_angle[-1]["input_deg"][1] <= 105
  assert sum(row["count"] for row in by_angle) == 32  # Every test example, once.
  # The bar's distance from the centre survives rotation: five steps learn it well above
  # chance (0.1). Seen over 6 data and training seeds: accuracy 0.375-0.5, loss 1.75-2.01.
  assert first["test_accuracy"] >= 0.25 and first["test_loss"] < np.log(10) - 0.2
  # The same command with more epochs resumes from step 5, not from scratch.
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "2", *extra)) == 0
  assert "resumed from step 5" in capsys.readouterr().out
  assert [m["epoch"] for m in read_metrics(workdir)] == [1, 2]
  second = check_results_match_checkpoint(tiny_idx, workdir, 10)
  assert second["test_loss"] < first["test_loss"] - 0.05  # Seen: lower by 0.17-0.24.


def run_program(args, env=None):
  return subprocess.Popen([sys.executable, "-m", "train.distorted_mnist", *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_resumes_to_identical_results(tiny_idx, tmp_path):
  args = ["--num_epochs", "3", "--checkpoint_every_steps", "1"]
  reference = run_program(flags(tiny_idx, tmp_path / "reference", *args))
  killed = run_program(flags(tiny_idx, tmp_path / "killed", *args))
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and killed.poll() is None:
    steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    if steps and max(steps) >= 7:  # Mid-epoch 2 (5 steps an epoch).
      break
    time.sleep(0.05)
  assert killed.poll() is None, "the run ended before it could be killed"
  os.kill(killed.pid, signal.SIGKILL)
  killed.wait()
  resumed = run_program(flags(tiny_idx, tmp_path / "killed", *args))
  output, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, output
  assert "resumed from step" in output
  assert reference.wait(timeout=300) == 0, reference.stdout.read()
  expected = json.loads((tmp_path / "reference" / "results.json").read_text())
  actual = json.loads((tmp_path / "killed" / "results.json").read_text())
  for key in ("params_sha256", "test_accuracy", "test_loss", "steps"):
    assert actual[key] == expected[key], key
  # The metric lines written between the last checkpoint and the kill were dropped.
  steps = [json.loads(line)["step"] for line in
           (tmp_path / "killed" / "train_metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 16))
  def without_timing(records):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]
  assert (without_timing(read_metrics(tmp_path / "killed"))
          == without_timing(read_metrics(tmp_path / "reference")))


def test_corrupt_checkpoint_is_skipped_with_a_warning(tiny_idx, tmp_path):
  workdir = tmp_path / "run"
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "1")) == 0
  latest = workdir / "checkpoints" / "5"
  for path in (latest / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  with pytest.warns(UserWarning, match=r"Skipping checkpoint .*checkpoints/5"):
    assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "2")) == 0
  assert json.loads((workdir / "results.json").read_text())["steps"] == 10


def test_a_workdir_with_other_settings_is_not_resumed(tiny_idx, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "1")) == 0
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "1", "--stn", "none")) == 2
  message = capsys.readouterr().err
  assert "holds a run with other settings (stn 'affine' there, 'none' here)" in message
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "5"]


def test_a_checkpoint_of_another_model_is_named_and_kept(tiny_idx, tmp_path, capsys):
  """Another version of the model (here: its config.json says the large localization
  net, as if the program had changed): the run stops, the checkpoints stay."""
  workdir = tmp_path / "run"
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "1")) == 0
  saved = json.loads((workdir / "config.json").read_text())
  (workdir / "config.json").write_text(json.dumps(dict(saved, localization="large")))
  capsys.readouterr()
  assert distorted_mnist.main(flags(tiny_idx, workdir, "--num_epochs", "2",
                                    "--localization", "large")) == 2
  message = capsys.readouterr().err
  assert "holds another model's parameters" in message and "left as it is" in message
  # Same names, other shapes: the paper's 20 filters there, 32 and 64 here.
  assert "['stn_0']['localization']['conv_0']['bias'] (32,)" in message
  assert "not in this model: ['stn_0']['localization']['conv_0']['bias'] (20,)" in message
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "5"]


def test_settings_a_run_cannot_use_are_named(tiny_idx, tmp_path, capsys):
  assert distorted_mnist.main(flags(tiny_idx, tmp_path / "run", "--batch_size", "4000")) == 2
  assert "fewer than one batch of 4000" in capsys.readouterr().err
  config = dataclasses.replace(configs.gtsrb(), distortion_warmup=0.5)
  with pytest.raises(config_lib.ConfigError, match="no distortion to grow"):
    trainer.train_and_evaluate(config, tmp_path / "gtsrb")


def test_missing_dataset_fails_fast_with_instructions(tmp_path, capsys):
  start = time.time()
  code = distorted_mnist.main(flags(tmp_path / "empty", tmp_path / "run"))
  assert code == 2 and time.time() - start < 30
  message = capsys.readouterr().err
  assert "train-images-idx3-ubyte.gz not found in" in message and "--data_dir" in message


def test_absent_accelerator_is_named(tiny_idx, tmp_path, capsys):
  here = sorted({device.platform for device in jax.devices()})
  if "tpu" in here:
    pytest.skip("this host has TPU devices; the test asks for an absent platform")
  assert distorted_mnist.main(flags(tiny_idx, tmp_path / "run", "--accelerator", "tpu")) == 2
  expected = f"no tpu devices found; platforms available here: {', '.join(here)}."
  assert expected in capsys.readouterr().err


def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoints(tiny_idx, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = distorted_mnist.main(flags(tiny_idx, workdir, "--optimizer", "sgd", "--learning_rate",
                                    "1e30", "--checkpoint_every_steps", "1"))
  assert code == 2
  message = capsys.readouterr().err
  assert "loss is nan at step" in message or "loss is inf at step" in message
  step = int(message.split(" at step ")[1].split()[0])
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
  # Step 1's loss is the initial parameters' (finite): every step before the bad one was
  # saved (the latest 3 kept), and the message names the last.
  assert step >= 2 and saved == list(range(max(1, step - 3), step))
  assert f"The last good checkpoint is step {step - 1} in" in message


def test_cluttered_digits_come_from_a_numpy_dataset():
  """tc reads its clutter at traced indices: the program's NumPy arrays must do."""
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  canvases = distortions.distort("tc", images, np.array([0, 3]), 0, "train")
  assert canvases.shape == (2, 60, 60, 1) and 0 <= float(canvases.min()) <= float(canvases.max()) <= 1


@pytest.mark.slow
def test_cluttered_digits_through_a_smaller_antialiased_transformer(tiny_idx, tmp_path):
  """--distortion tc (60x60 canvases with clutter) warped to 30x30, antialiased."""
  workdir = tmp_path / "run"
  args = flags(tiny_idx, workdir, "--num_epochs", "1", "--max_train_examples", "32")
  args[args.index("r")] = "tc"
  assert distorted_mnist.main([*args, "--stn_out_size", "30", "--antialias"]) == 0
  results = json.loads((workdir / "results.json").read_text())
  assert results["config"]["stn_out_size"] == 30 and results["config"]["antialias"] is True
  assert np.isfinite(results["test_loss"])


def test_distortion_curriculum_grows_from_none():
  digits = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
  indices = np.arange(8)
  undistorted = np.asarray(distortions.distort("none", digits, indices, 0, "train"))
  for kind in ("r", "p", "e"):
    none = distortions.distort(kind, digits, indices, 0, "train", strength=jnp.float32(0))
    np.testing.assert_allclose(none, undistorted, atol=1e-5, err_msg=kind)  # P: a solve.
    full = distortions.distort(kind, digits, indices, 0, "train", strength=jnp.float32(1))
    np.testing.assert_allclose(full, distortions.distort(kind, digits, indices, 0, "train"),
                               atol=1e-5, err_msg=kind)
  # RTS at strength 0: the upright digit, unscaled, in the middle of the 42x42 canvas.
  canvas = np.asarray(distortions.distort("rts", digits, indices, 0, "train",
                                          strength=jnp.float32(0)))
  np.testing.assert_allclose(canvas[:, 7:35, 7:35], undistorted, atol=1e-5)
  assert canvas.sum() == pytest.approx(undistorted.sum(), rel=1e-5)
  # Half way: each example's rotation is half its full one.
  half = distortions._distortion_theta("r", jax.random.key(3), jnp.float32(0.5))
  full = distortions._distortion_theta("r", jax.random.key(3))
  np.testing.assert_allclose(np.arctan2(half[1, 0], half[0, 0]),
                             np.arctan2(full[1, 0], full[0, 0]) / 2, rtol=1e-5)


def test_the_recipe_settings_train(tiny_idx, tmp_path):
  """The curriculum, the large localization net and a transformer in two steps."""
  workdir = tmp_path / "run"
  args = flags(tiny_idx, workdir, "--num_epochs", "1", "--distortion_warmup", "0.5",
               "--localization", "large", "--stn_iterations", "2")
  assert distorted_mnist.main(args) == 0
  config = json.loads((workdir / "results.json").read_text())["config"]
  assert config["distortion_warmup"] == 0.5 and config["localization"] == "large"
  assert config["stn_iterations"] == 2
  params = restore_state((workdir / "checkpoints" / "5" / "state").resolve())["params"]
  localization = params["stn_0"]["localization"]
  assert localization["conv_1"]["kernel"].shape == (5, 5, 32, 64)
  assert localization["dense_0"]["kernel"].shape[-1] == 64


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
  saved = dataclasses.asdict(configs.table1())
  del saved["localization"]  # A workdir written before the field was added.
  config_lib.check_resumable(saved, configs.table1(), tmp_path)
  with pytest.raises(config_lib.ConfigError, match="localization 'paper' there, 'large' here"):
    config_lib.check_resumable(saved, dataclasses.replace(configs.table1(), localization="large"),
                               tmp_path)


def test_bad_flags_are_rejected(tiny_idx, tmp_path, capsys):
  for bad in (["--stn", "shear"], ["--batch_size", "0"], ["--distortion", "x"],
              ["--stn_out_size", "0"], ["--distortion_warmup", "2"],
              ["--distortion", "tc", "--distortion_warmup", "0.5"], ["--localization", "huge"],
              ["--stn_iterations", "0"]):
    with pytest.raises(SystemExit):
      distorted_mnist.main(flags(tiny_idx, tmp_path / "run", *bad))
  assert "--stn must be 'none' or one of" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    distorted_mnist.main(flags(tiny_idx, tmp_path / "run", "--stn", "tps", "--stn_iterations", "2"))
  assert "--stn_iterations 2 composes matrices; --stn tps has none" in capsys.readouterr().err


def free_port():
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def cpu_env(devices):
  """Environment for a program with this many CPU devices, whatever accelerators the host has."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def run_two_processes(args):
  """The program in two processes on localhost with 4 CPU devices each: their outputs."""
  distributed = ["--distributed", "--coordinator_address", f"localhost:{free_port()}",
                 "--num_processes", "2"]
  processes = [run_program([*args, *distributed, "--process_id", str(i)], env=cpu_env(4))
               for i in range(2)]
  outputs = [process.communicate(timeout=300)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output
  return outputs


def test_two_processes_train_as_one_process_with_eight_devices(tiny_idx, tmp_path):
  """jax's multi-process runtime: 2 processes x 4 CPU devices against 1 x 8, with a resume.

  The runs share this test run's persistent compilation cache, where the first run's
  process 0 leaves its programs: the program must keep the second run's processes from
  mixing cached and fresh programs (with jax 0.12 they then hang in their all-gathers).

  The gradients' all-reduce runs across the processes (gloo) in another order than
  within one, so the parameters agree to float32 rounding, not bit for bit. A constant
  learning rate, so that the run resumed for a second epoch is the two-epoch run."""
  constant = ("--schedule", "constant")
  one = run_program(flags(tiny_idx, tmp_path / "one", "--num_epochs", "2", *constant),
                    env=cpu_env(8))
  output, _ = one.communicate(timeout=300)
  assert one.returncode == 0, output
  assert "data parallel over 8 cpu device(s)" in output
  check_results_match_checkpoint(tiny_idx, tmp_path / "one", 10)

  workdir = tmp_path / "two"
  first = run_two_processes(flags(tiny_idx, workdir, "--num_epochs", "1", *constant))
  assert "data parallel over 8 cpu device(s) in 2 processes" in first[0]
  resumed = run_two_processes(flags(tiny_idx, workdir, "--num_epochs", "2", *constant))
  assert "resumed from step 5" in resumed[0]
  # Only process 0 writes and logs: one line per metric read (steps 2, 4, 5 of each epoch).
  assert "results in" not in first[1] + resumed[1]
  lines = (workdir / "train_metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [2, 4, 5, 6, 8, 10]
  expected = json.loads((tmp_path / "one" / "results.json").read_text())
  actual = json.loads((workdir / "results.json").read_text())
  assert actual["processes"] == 2 and actual["steps"] == 10
  np.testing.assert_allclose(actual["test_loss"], expected["test_loss"], rtol=1e-5)
  one_params = restore_state((tmp_path / "one" / "checkpoints" / "10" / "state").resolve())
  two_params = restore_state((workdir / "checkpoints" / "10" / "state").resolve())
  # Adam divides by the gradient's own scale, so where a gradient is near zero its
  # rounding moves the step by up to the learning rate (1e-3): seen up to 3e-5 in 10 steps
  # on 0.05% of the parameters. A wrong share of the batch moves them all, and the loss.
  for a, b in zip(jax.tree.leaves(one_params["params"]), jax.tree.leaves(two_params["params"])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def communicate_within(process, seconds):
  """The process's output, once it exits; fails naming the output so far if it runs on."""
  try:
    return process.communicate(timeout=seconds)[0]
  except subprocess.TimeoutExpired:
    process.kill()
    pytest.fail(f"still running after {seconds} s: {process.communicate()[0][-3000:]}")


# A process that is gone ends the others within --distributed_timeout_s (and JAX's
# polling, seconds); the rest of the bound is starting Python and JAX on a busy machine.
# Where both start, the timeout leaves the second time to import JAX.
ENDS_WITHIN_S = 150


def test_a_process_that_never_connects_ends_the_run_with_its_reason(tiny_idx, tmp_path):
  """Process 0 of 2, alone: it exits non-zero, naming the deadline, instead of waiting."""
  alone = run_program([*flags(tiny_idx, tmp_path / "run", "--num_epochs", "1"), "--distributed",
                       "--coordinator_address", f"localhost:{free_port()}", "--num_processes",
                       "2", "--process_id", "0", "--distributed_timeout_s", "5"],
                      env=cpu_env(4))
  output = communicate_within(alone, ENDS_WITHIN_S)
  assert alone.returncode != 0, output
  assert "has not connected within 5 s" in output, output[-3000:]
  assert "DEADLINE_EXCEEDED" in output and "RegisterTask" in output, output[-3000:]
  assert not (tmp_path / "run" / "results.json").exists()


def test_a_process_that_dies_ends_the_others_with_its_reason(tiny_idx, tmp_path):
  """Process 1 is killed once the run has started: process 0 exits non-zero, naming the
  process that stopped sending heartbeats, instead of waiting for it in a collective."""
  distributed = ["--distributed", "--coordinator_address", f"localhost:{free_port()}",
                 "--num_processes", "2", "--distributed_timeout_s", "20"]
  args = flags(tiny_idx, tmp_path / "run", "--num_epochs", "1", *distributed)
  survivor, victim = [run_program([*args, "--process_id", str(i)], env=cpu_env(4))
                      for i in range(2)]
  try:
    lines = []
    for line in survivor.stdout:  # Until both have joined and the data is split over them.
      lines.append(line)
      if "in 2 processes" in line:
        break
    assert lines and "in 2 processes" in lines[-1], "".join(lines)[-3000:]
    victim.kill()
    output = "".join(lines) + communicate_within(survivor, ENDS_WITHIN_S)
  finally:
    for process in (survivor, victim):
      process.kill()
      process.wait()
  assert survivor.returncode != 0, output[-3000:]
  assert "stopped sending heartbeats" in output, output[-3000:]
  assert not (tmp_path / "run" / "results.json").exists()
