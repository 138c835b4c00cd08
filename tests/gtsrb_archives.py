"""Writes small GTSRB archives in the official layout, for tests."""

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def _ppm(rng, label):
  height, width = rng.integers(20, 40, 2)
  pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
  pixels[:, :, label % 3] += 150  # A colour per class, so a net can learn something.
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PPM")
  return buffer.getvalue(), width, height


def write(manual_dir: pathlib.Path, classes=(0, 1, 2), tracks=3, frames=4, test_images=12,
          extra_members=()) -> None:
  """Training: `tracks` tracks of `frames` frames per class; test: `test_images` images.

  extra_members: (name, bytes) pairs added to the training archive (to test bad ones).
  """
  rng = np.random.default_rng(0)
  manual_dir.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(manual_dir / "GTSRB_Final_Training_Images.zip", "w") as archive:
    for label in classes:
      folder = f"GTSRB/Final_Training/Images/{label:05d}"
      rows = [HEADER]
      for track in range(tracks):
        for frame in range(frames):
          data, width, height = _ppm(rng, label)
          name = f"{track:05d}_{frame:05d}.ppm"
          archive.writestr(f"{folder}/{name}", data)
          rows.append(f"{name};{width};{height};2;2;{width - 3};{height - 3};{label}\n")
      archive.writestr(f"{folder}/GT-{label:05d}.csv", "".join(rows))
    for name, data in extra_members:
      archive.writestr(name, data)
  rows = [HEADER]
  with zipfile.ZipFile(manual_dir / "GTSRB_Final_Test_Images.zip", "w") as archive:
    for i in range(test_images):
      label = classes[i % len(classes)]
      data, width, height = _ppm(rng, label)
      archive.writestr(f"GTSRB/Final_Test/Images/{i:05d}.ppm", data)
      rows.append(f"{i:05d}.ppm;{width};{height};1;1;{width - 2};{height - 2};{label}\n")
  with zipfile.ZipFile(manual_dir / "GTSRB_Final_Test_GT.zip", "w") as archive:
    archive.writestr("GT-final_test.csv", "".join(rows))
