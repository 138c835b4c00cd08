"""`python -m train.gtsrb` and its tfds builder, on small archives in the official layout."""

import hashlib
import json
import re
import time

import jax
import numpy as np
import pytest

import gtsrb_archives
from saved_runs import cross_entropy
from saved_runs import restore_state
from train import gtsrb as gtsrb_program
from train import models
from train.data import gtsrb

pytestmark = pytest.mark.usefixtures("fast_training_compiles")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  gtsrb_archives.write(root / "downloads" / "manual")
  return root


def test_builder_splits_whole_tracks_and_crops(data_dir):
  splits = gtsrb.load(data_dir, image_size=16, crop_roi=True)
  train_images, train_labels, train_tracks = splits["train"]
  validation_images, validation_labels, validation_tracks = splits["validation"]
  assert train_images.shape == (24, 16, 16, 3) and train_images.dtype == np.uint8
  assert validation_images.shape == (12, 16, 16, 3)
  assert splits["test"][0].shape == (12, 16, 16, 3)
  train_pairs = set(zip(train_labels.tolist(), train_tracks.tolist()))
  validation_pairs = set(zip(validation_labels.tolist(), validation_tracks.tolist()))
  assert train_pairs and validation_pairs and not train_pairs & validation_pairs
  # Each validation track is held out whole: all 4 of its frames.
  for pair in validation_pairs:
    assert sum(p == pair for p in zip(validation_labels, validation_tracks)) == 4
  # The label colour survives cropping and resizing.
  for image, label in zip(train_images, train_labels):
    assert image.reshape(-1, 3).mean(0).argmax() == label % 3


def flags(data_dir, workdir, *extra):
  return ["--data_dir", str(data_dir), "--workdir", str(workdir), "--batch_size", "8",
          "--eval_batch_size", "4", "--checkpoint_every_steps", "2", *extra]


def check_results_match_checkpoint(data_dir, workdir, step):
  """results.json and the last metrics record hold the numbers of the checkpoint of
  `step`, evaluated here in one batch (not by the trainer's batched evaluation)."""
  results = json.loads((workdir / "results.json").read_text())
  state = restore_state((workdir / "checkpoints" / str(step) / "state").resolve())
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state["params"]):
    digest.update(np.asarray(leaf).tobytes())
  assert results["steps"] == step and results["params_sha256"] == digest.hexdigest()
  model = models.IdsiaNet(num_classes=gtsrb.NUM_CLASSES, stn="affine", num_transformers=2)
  splits = gtsrb.load(data_dir, image_size=32, crop_roi=True)
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  for split, prefix, record in (("test", "test_", results), ("validation", "validation_", last)):
    images, labels, _ = splits[split]
    logits = model.apply(variables, images.astype(np.float32) / 255.0)
    accuracy = int((np.asarray(logits).argmax(-1) == labels).sum()) / len(labels)
    assert record[prefix + "accuracy"] == accuracy, split
    np.testing.assert_allclose(record[prefix + "loss"], cross_entropy(logits, labels).mean(),
                               rtol=1e-5, err_msg=split)
  return results


def test_trains_with_two_transformers_and_resumes(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  # Evaluation batches of 5: the 12 test and 12 validation images end in a short batch.
  extra = ("--num_transformers", "2", "--eval_batch_size", "5")
  assert gtsrb_program.main(flags(data_dir, workdir, "--num_epochs", "1", *extra)) == 0
  first = check_results_match_checkpoint(data_dir, workdir, 3)
  assert first["test_error"] == 1 - first["test_accuracy"]
  # Three classes told apart by colour: three steps learn them (chance: a third, 4 of 12).
  # Seen over 3 seeds: 8 to 12 of 12 right, loss 0.74-1.17 (chance level: ln 43 = 3.76),
  # and 0.17-0.23 lower after the second epoch.
  assert first["test_accuracy"] >= 7 / 12 and first["test_loss"] < 2.0
  assert (workdir / "pictures" / "epoch_001.png").is_file()
  assert gtsrb_program.main(flags(data_dir, workdir, "--num_epochs", "2", *extra)) == 0
  assert "resumed from step 3" in capsys.readouterr().out
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
  second = check_results_match_checkpoint(data_dir, workdir, 6)
  assert second["test_loss"] < first["test_loss"] - 0.05


def test_missing_archives_fail_fast_naming_the_folder(tmp_path, capsys):
  start = time.time()
  assert gtsrb_program.main(flags(tmp_path / "empty", tmp_path / "run")) == 2
  assert time.time() - start < 30
  message = capsys.readouterr().err
  assert "GTSRB_Final_Training_Images.zip" in message
  assert str(tmp_path / "empty" / "downloads" / "manual") in message


@pytest.mark.parametrize("member,data,message", [
    ("../evil.ppm", b"P6 1 1 255\n\0\0\0", r"unsafe archive member '\.\./evil\.ppm'"),
    ("/etc/evil.ppm", b"P6 1 1 255\n\0\0\0", r"unsafe archive member '/etc/evil\.ppm'"),
])
def test_unsafe_members_are_refused(tmp_path, capsys, member, data, message):
  gtsrb_archives.write(tmp_path / "downloads" / "manual", extra_members=[(member, data)])
  assert gtsrb_program.main(flags(tmp_path, tmp_path / "run")) == 2
  assert re.search(message, capsys.readouterr().err)


def test_unreadable_image_is_named(tmp_path, capsys):
  manual = tmp_path / "downloads" / "manual"
  gtsrb_archives.write(manual, classes=(0,), tracks=2, frames=2, test_images=2)
  import zipfile
  path = manual / "GTSRB_Final_Training_Images.zip"
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  broken = "GTSRB/Final_Training/Images/00000/00001_00001.ppm"
  members[broken] = b"not an image"
  with zipfile.ZipFile(path, "w") as archive:
    for name, content in members.items():
      archive.writestr(name, content)
  assert gtsrb_program.main(flags(tmp_path, tmp_path / "run")) == 2
  assert f"cannot read image '{broken}'" in capsys.readouterr().err


def test_bad_flags(data_dir, tmp_path, capsys):
  for bad in (["--num_transformers", "3"], ["--image_size", "4"], ["--accelerator", "npu"]):
    with pytest.raises(SystemExit):
      gtsrb_program.main(flags(data_dir, tmp_path / "run", *bad))
  assert "--num_transformers must be 1 or 2" in capsys.readouterr().err
