"""CIFAR-10 from its binary distribution, parsed with numpy.

The binary version is used (not the Python one) because the Python version is a
pickle, and unpickling a downloaded file runs whatever code it contains. Each
record is 1 label byte followed by 3,072 pixel bytes (3x32x32, channel-major).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from esper.runtime.data import TaskData, image_task_data

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
VAL_FILE = "test_batch.bin"
ALL_FILES = (*TRAIN_FILES, VAL_FILE)
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32


class DownloadError(RuntimeError):
    """The dataset could not be downloaded; the message says what to place where instead."""


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one .bin file."""
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path} has {raw.size:,} bytes, not a positive multiple of the "
            f"{RECORD_BYTES}-byte CIFAR-10 record; the file is truncated or not CIFAR-10 binary"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path} has label {labels.max()}; CIFAR-10 labels are 0-9")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels


def find_cifar10_dir(data_dir: Path) -> Path | None:
    """The folder holding the .bin files: data_dir/cifar-10-batches-bin or data_dir itself.

    A folder with some but not all of the files is an error, not "not found":
    downloading again would not fix it.
    """
    for folder in (data_dir / FOLDER, data_dir):
        missing = [name for name in ALL_FILES if not (folder / name).is_file()]
        if not missing:
            return folder
        if len(missing) < len(ALL_FILES):
            raise FileNotFoundError(
                f"Incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}"
            )
    return None


def _fetch_verified(url: str, dest: Path, md5: str) -> None:
    """Stream `url` to `dest` and check its md5 before anyone extracts it.

    On a mismatch the file is deleted here, before the error propagates.
    """
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = getattr(response, "length", None)
        done, last_shown = 0, -1
        while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if total and (percent := 100 * done // total) // 10 != last_shown:
                last_shown = percent // 10
                print(f"\r  {percent:3d}% of {total / 1e6:.0f} MB", end="", file=sys.stderr)
    if total:
        print(file=sys.stderr)
    if digest.hexdigest() != md5:
        dest.unlink()
        raise ValueError(
            f"Checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}. "
            "The partial download was deleted; try --download again."
        )


def download_cifar10(data_dir: str | Path) -> Path:
    """Download, verify and extract CIFAR-10 into data_dir/cifar-10-batches-bin.

    Everything is written under temporary names and renamed only once complete, so
    an interrupted download never leaves a folder that looks like a dataset; a failed
    one leaves nothing, not even the folders it made. Without network the error
    says which files to place where instead.
    """
    data_dir = Path(data_dir)
    made = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"Downloading CIFAR-10 from {CIFAR10_URL} into {data_dir}", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=data_dir))
    try:
        archive = staging / ARCHIVE
        try:
            _fetch_verified(CIFAR10_URL, archive, CIFAR10_MD5)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", None) or err
            raise DownloadError(
                f"Downloading CIFAR-10 from {CIFAR10_URL} failed ({reason}). Without network, fetch "
                f"{ARCHIVE} on another machine and extract it into {data_dir}, so that "
                f"{data_dir / FOLDER} holds {', '.join(ALL_FILES)}; then run with --data-dir {data_dir} "
                "and without --download"
            ) from None
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        target = data_dir / FOLDER
        (staging / FOLDER).rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not (data_dir / FOLDER).is_dir():  # it failed: remove the (empty) folders this call made
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def load_cifar10(data_dir: str | Path = "data", download: bool = False) -> TaskData:
    """CIFAR-10: the five data batches for training, test_batch for validation.

    Images are standardised with the per-channel mean/std of the training set.
    """
    data_dir = Path(data_dir)
    folder = find_cifar10_dir(data_dir)
    if folder is None and download:
        folder = download_cifar10(data_dir)
    if folder is None:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {data_dir}: pass --data-dir pointing at the extracted "
            f"{FOLDER} folder, or --download to fetch it (170 MB, {CIFAR10_URL})"
        )
    train = [read_cifar10_batch(folder / name) for name in TRAIN_FILES]
    val_images, val_labels = read_cifar10_batch(folder / VAL_FILE)
    return image_task_data(
        torch.from_numpy(np.concatenate([images for images, _ in train])).float().div_(255),
        torch.from_numpy(np.concatenate([labels for _, labels in train])),
        torch.from_numpy(val_images.copy()).float().div_(255),
        torch.from_numpy(val_labels),
        num_classes=10,
    )
