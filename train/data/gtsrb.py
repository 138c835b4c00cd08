"""GTSRB (German Traffic Sign Recognition Benchmark) as a tensorflow-datasets builder.

Reads the official archives (GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip,
GTSRB_Final_Test_GT.zip) from tfds' manual folder, `<data_dir>/downloads/manual`, or
downloads them when online. Offline and without them it fails within seconds, saying
where to put them. No TensorFlow: Tensor features stored as array_record, read with
`as_data_source()`.

Images are cropped to the annotated region of interest (optional) and resized to
`image_size`. Training images come in tracks (~30 frames of one physical sign, files
`TTTTT_FFFFF.ppm`); the validation split holds out whole tracks (every tenth track of
each class), never single frames.
"""

import csv
import dataclasses
import io
import pathlib
import socket
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_CLASSES = 43
ARCHIVES = {
    "train": "GTSRB_Final_Training_Images.zip",
    "test": "GTSRB_Final_Test_Images.zip",
    "test_labels": "GTSRB_Final_Test_GT.zip",
}
DOWNLOAD_ROOT = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
VALIDATION_EVERY = 10  # Every tenth track of a class goes to validation.
_PROBE_TIMEOUT_S = 3


class DatasetNotFoundError(FileNotFoundError):
  """The archives are not in the manual folder and cannot be downloaded."""


class ArchiveError(ValueError):
  """An archive member is unsafe, missing or unreadable."""


@dataclasses.dataclass
class GtsrbConfig(tfds.core.BuilderConfig):
  image_size: int = 32
  crop_roi: bool = True


def config_for(image_size: int, crop_roi: bool) -> GtsrbConfig:
  return GtsrbConfig(name=f"{image_size}px_{'roi' if crop_roi else 'full'}",
                     image_size=image_size, crop_roi=crop_roi,
                     description=f"{image_size}x{image_size} RGB, "
                                 f"{'cropped to the ROI' if crop_roi else 'whole image'}")


class StnjaxGtsrb(tfds.core.GeneratorBasedBuilder):
  """GTSRB: 43 classes of traffic signs; train / validation (whole tracks) / test."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [config_for(32, True)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {', '.join(ARCHIVES.values())} (from the GTSRB website) in the manual folder, "
      "<data_dir>/downloads/manual/.")

  def _info(self):
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        "track": tfds.features.Tensor(shape=(), dtype=np.int64),
    }), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    paths = archive_paths(pathlib.Path(dl_manager.manual_dir), dl_manager)
    train = list(_training_records(paths["train"]))
    validation_tracks = _validation_tracks(train)
    return {
        "train": self._generate_examples(paths["train"],
                                [r for r in train if (r[1], r[2]) not in validation_tracks]),
        "validation": self._generate_examples(paths["train"],
                                     [r for r in train if (r[1], r[2]) in validation_tracks]),
        "test": self._generate_examples(paths["test"], list(_test_records(paths["test_labels"]))),
    }

  def _generate_examples(self, archive_path, records):
    config = self.builder_config
    with zipfile.ZipFile(archive_path) as archive:
      names = {_checked_member(info): info for info in archive.infolist()}
      for member, label, track, roi in records:
        if member not in names:
          raise ArchiveError(f"{archive_path.name}: {member} is listed in the CSV but missing.")
        image = _read_image(archive, names[member], archive_path.name)
        if config.crop_roi:
          x1, y1, x2, y2 = roi
          image = image.crop((x1, y1, x2 + 1, y2 + 1))  # The ROI corners are inclusive.
        image = image.resize((config.image_size, config.image_size), Image.BILINEAR)
        yield member, {"image": np.asarray(image, np.uint8), "label": label, "track": track}


def check_available(manual_dir: pathlib.Path) -> bool:
  """True if the archives are in manual_dir; False if missing but downloadable.

  Raises DatasetNotFoundError within seconds when they are missing and the download site
  cannot be reached (tfds itself would retry for minutes).
  """
  missing = [name for name in ARCHIVES.values() if not (manual_dir / name).is_file()]
  if not missing:
    return True
  if not _online(DOWNLOAD_ROOT):
    raise DatasetNotFoundError(
        f"GTSRB: {', '.join(missing)} not found in {manual_dir}, and the download site cannot "
        f"be reached (offline?). Put the official archives ({', '.join(ARCHIVES.values())}) "
        f"in {manual_dir} and run again.")
  return False


def archive_paths(manual_dir: pathlib.Path, dl_manager) -> dict:
  """The three archives: from manual_dir, else downloaded by the download manager."""
  if check_available(manual_dir):
    return {key: manual_dir / name for key, name in ARCHIVES.items()}
  downloaded = dl_manager.download({key: DOWNLOAD_ROOT + name for key, name in ARCHIVES.items()})
  return {key: pathlib.Path(path) for key, path in downloaded.items()}


def _online(url: str) -> bool:
  host = url.split("/")[2]
  try:
    with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def _checked_member(info: zipfile.ZipInfo) -> str:
  """The member's name, refused if absolute or climbing out with '..'."""
  name = info.filename
  parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
  if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
    raise ArchiveError(f"unsafe archive member {name!r}: absolute or '..' paths are refused.")
  return name


def _read_image(archive, info, archive_name) -> Image.Image:
  try:
    with archive.open(info) as f:
      image = Image.open(io.BytesIO(f.read()))
      return image.convert("RGB")
  except Exception as error:  # noqa: BLE001 (PIL raises many kinds)
    raise ArchiveError(f"{archive_name}: cannot read image {info.filename!r} "
                       f"({type(error).__name__}: {error}).") from None


def _read_csv(archive, info, archive_name):
  with archive.open(info) as f:
    rows = list(csv.DictReader(io.TextIOWrapper(f, "utf-8"), delimiter=";"))
  required = {"Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"}
  if rows and not required <= set(rows[0]):
    raise ArchiveError(f"{archive_name}: {info.filename} lacks columns "
                       f"{sorted(required - set(rows[0]))}.")
  return rows


def _roi(row):
  return tuple(int(row[key]) for key in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))


def _training_records(archive_path):
  """(member, label, track, roi) for every training image, from the per-class CSVs."""
  with zipfile.ZipFile(archive_path) as archive:
    for info in archive.infolist():
      name = _checked_member(info)
      if not (name.endswith(".csv") and "/GT-" in name):
        continue
      folder = name.rsplit("/", 1)[0]
      for row in _read_csv(archive, info, archive_path.name):
        track = int(row["Filename"].split("_")[0])
        yield f"{folder}/{row['Filename']}", int(row["ClassId"]), track, _roi(row)


def _test_records(labels_path):
  """(member, label, -1, roi) for the test images, from GT-final_test.csv."""
  with zipfile.ZipFile(labels_path) as archive:
    infos = [i for i in archive.infolist() if _checked_member(i).endswith("GT-final_test.csv")]
    if not infos:
      raise ArchiveError(f"{labels_path.name}: GT-final_test.csv not found.")
    for row in _read_csv(archive, infos[0], labels_path.name):
      yield f"GTSRB/Final_Test/Images/{row['Filename']}", int(row["ClassId"]), -1, _roi(row)


def _validation_tracks(records) -> set:
  """(label, track) pairs held out: every VALIDATION_EVERY-th track of each class."""
  tracks = sorted({(label, track) for _, label, track, _ in records})
  held_out = set()
  for label in sorted({label for label, _ in tracks}):
    own = [t for t in tracks if t[0] == label]
    if len(own) > 1:
      held_out.update(own[::VALIDATION_EVERY])
  return held_out


def load(data_dir, image_size: int = 32, crop_roi: bool = True) -> dict:
  """{split: (images uint8 [N, S, S, 3], labels int32 [N], tracks int64 [N])}, built if needed."""
  data_dir = pathlib.Path(data_dir).expanduser()
  manual_dir = data_dir / "downloads" / "manual"
  config = config_for(image_size, crop_roi)
  predefined = {c.name for c in StnjaxGtsrb.BUILDER_CONFIGS}
  builder = StnjaxGtsrb(config=config.name if config.name in predefined else config,
                        data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    check_available(manual_dir)  # Fails fast, before tfds starts.
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  sources = builder.as_data_source()
  splits = {}
  for split in ("train", "validation", "test"):
    source = sources[split]
    examples = [source[i] for i in range(len(source))]
    images = np.stack([e["image"] for e in examples]) if examples else np.zeros(
        (0, image_size, image_size, 3), np.uint8)
    labels = np.asarray([e["label"] for e in examples], np.int32)
    tracks = np.asarray([e["track"] for e in examples], np.int64)
    splits[split] = (images, labels, tracks)
  return splits
