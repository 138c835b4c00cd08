"""MNIST-format (IDX) datasets: Fashion-MNIST and MNIST, from `.gz` files.

Files are looked for in `--data_dir`, then in Debian's `dataset-fashion-mnist` folder;
with internet access a missing MNIST/Fashion-MNIST file is downloaded into
`--data_dir`. Offline, a missing file fails within seconds, saying where to put it.
"""

import gzip
import pathlib
import socket
import struct
import urllib.error
import urllib.request

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DIRS = {"fashion_mnist": pathlib.Path("/usr/share/datasets/fashion-mnist")}
DOWNLOAD_URLS = {
    "fashion_mnist": "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
}
NUM_CLASSES = 10
_DOWNLOAD_TIMEOUT_S = 5


class DatasetNotFoundError(FileNotFoundError):
  """A dataset file is missing and could not be downloaded."""


class DataError(ValueError):
  """A dataset file is unreadable or inconsistent."""


def read_idx(path: pathlib.Path) -> np.ndarray:
  """One IDX file (gzipped or not) as a numpy array of its declared shape."""
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as error:
    raise DataError(f"{path}: not a readable IDX file ({error}).") from None
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
    raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number).")
  rank = data[3]
  shape = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
  if body.size != int(np.prod(shape)):
    raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), "
                     f"file holds {body.size}: truncated or corrupt.")
  return body.reshape(shape)


def _download(url: str, destination: pathlib.Path) -> None:
  destination.parent.mkdir(parents=True, exist_ok=True)
  partial = destination.with_suffix(destination.suffix + ".part")
  with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
    partial.write_bytes(response.read())
  partial.rename(destination)


def find_file(name: str, dataset: str, data_dir) -> pathlib.Path:
  """Path of one dataset file: data_dir, the system folder, or downloaded into data_dir."""
  candidates = [pathlib.Path(data_dir)] if data_dir else []
  if dataset in SYSTEM_DIRS:
    candidates.append(SYSTEM_DIRS[dataset])
  for folder in candidates:
    for filename in (name, name[:-3]):  # .gz or already uncompressed
      if (folder / filename).is_file():
        return folder / filename
  if data_dir and dataset in DOWNLOAD_URLS:
    try:
      _download(DOWNLOAD_URLS[dataset] + name, pathlib.Path(data_dir) / name)
      return pathlib.Path(data_dir) / name
    except (urllib.error.URLError, socket.timeout, OSError):
      pass
  searched = ", ".join(str(c) for c in candidates) or "(no --data_dir given)"
  hint = (" On Debian, `apt-get install dataset-fashion-mnist` puts Fashion-MNIST in "
          "/usr/share/datasets/fashion-mnist." if dataset == "fashion_mnist" else "")
  raise DatasetNotFoundError(
      f"{dataset}: {name} not found in {searched}, and it could not be downloaded (offline?). "
      f"Put the four IDX files ({', '.join(FILES['train'] + FILES['test'])}) in a folder and "
      f"pass it as --data_dir.{hint}")


def load(dataset: str, data_dir=None):
  """{"train": (images uint8 [N, 28, 28], labels int32 [N]), "test": (...)}."""
  if dataset not in DOWNLOAD_URLS:
    raise ValueError(f"Unknown IDX dataset {dataset!r}; expected one of {sorted(DOWNLOAD_URLS)}.")
  splits = {}
  for split, (image_file, label_file) in FILES.items():
    images = read_idx(find_file(image_file, dataset, data_dir))
    labels = read_idx(find_file(label_file, dataset, data_dir)).astype(np.int32)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
      raise DataError(f"{dataset} {split}: images {images.shape} and labels {labels.shape} "
                       "do not match ([N, H, W] and [N]).")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
      raise DataError(f"{dataset} {split}: labels outside [0, {NUM_CLASSES}).")
    splits[split] = (images, labels)
  return splits


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes a uint8 array as a gzipped IDX file (for tests and small subsets)."""
  array = np.asarray(array, np.uint8)
  header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())
