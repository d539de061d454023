"""CIFAR-10 reader and download on tiny fixtures written in the real binary format."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from esper.runtime import cifar10, get_task
from esper.runtime.cifar10 import load_cifar10

N_TRAIN_PER_FILE, N_VAL = 20, 10


def _write_batch(path: Path, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One .bin file: per record a label byte, then 3x32x32 channel-major pixel bytes."""
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1).tobytes())
    return labels, pixels


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """data_dir/cifar-10-batches-bin with 5 x 20 training and 10 validation records."""
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in cifar10.TRAIN_FILES:
        _write_batch(folder / name, N_TRAIN_PER_FILE, rng)
    _write_batch(folder / cifar10.VAL_FILE, N_VAL, rng)
    return folder.parent


def test_reads_real_format_and_standardises_per_channel(cifar_dir):
    val_path = cifar_dir / cifar10.FOLDER / cifar10.VAL_FILE
    labels, pixels = _write_batch(val_path, N_VAL, np.random.default_rng(1))
    data = load_cifar10(cifar_dir)
    assert data.train_inputs.shape == (5 * N_TRAIN_PER_FILE, 3, 32, 32)
    assert data.val_inputs.shape == (N_VAL, 3, 32, 32)
    assert data.train_inputs.dtype == torch.float32
    assert data.train_targets.dtype == torch.int64
    assert data.metadata == {"num_classes": 10, "in_channels": 3, "image_size": 32}
    channel_means = data.train_inputs.mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-5)

    assert torch.equal(data.val_targets, torch.from_numpy(labels.astype(np.int64)))
    # standardisation is affine per channel, so pixel order (CHW) is preserved exactly
    raw = torch.from_numpy(pixels.astype(np.float32))
    for c in range(3):
        pairs = torch.stack([raw[:, c].flatten(), data.val_inputs[:, c].flatten()])
        assert torch.corrcoef(pairs)[0, 1] > 0.9999


def test_accepts_the_bin_folder_itself(cifar_dir):
    data = load_cifar10(cifar_dir / cifar10.FOLDER)
    assert len(data.val_targets) == N_VAL


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir") as err:
        load_cifar10(tmp_path)
    assert "--download" in str(err.value)


def test_incomplete_folder_names_missing_files(cifar_dir):
    (cifar_dir / cifar10.FOLDER / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_cifar10(cifar_dir)


def test_truncated_file_is_named(cifar_dir):
    path = cifar_dir / cifar10.FOLDER / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data_batch_2.bin"):
        load_cifar10(cifar_dir)


def _serve(monkeypatch, payload: bytes) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: io.BytesIO(payload))


def test_checksum_mismatch_deletes_download_and_raises(tmp_path, monkeypatch):
    _serve(monkeypatch, b"definitely not the CIFAR-10 archive")
    with pytest.raises(ValueError, match="Checksum mismatch"):
        load_cifar10(tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()  # not even the folder the download made


def test_download_verifies_then_extracts(cifar_dir, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(cifar_dir / cifar10.FOLDER, arcname=cifar10.FOLDER)
    archive = buffer.getvalue()
    _serve(monkeypatch, archive)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())

    target = tmp_path / "fresh"
    data = load_cifar10(target, download=True)
    assert len(data.train_targets) == 5 * N_TRAIN_PER_FILE
    assert [p.name for p in target.iterdir()] == [cifar10.FOLDER]  # no temporary leftovers


def test_cifar10_task_builds_a_host_for_its_data(cifar_dir):
    spec = get_task("cifar10")
    data = spec.load_data(data_dir=cifar_dir, download=False)
    train, _ = data.loaders(spec.batch_size, seed=0, max_train_batches=spec.max_train_batches)
    x, _ = next(iter(train))
    assert spec.build_host(data)(x).shape == (len(x), 10)


def test_download_without_network_says_what_to_place_where(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data_dir = tmp_path / "datasets" / "cifar"
    with pytest.raises(cifar10.DownloadError) as err:
        load_cifar10(data_dir, download=True)
    message = str(err.value)
    assert "name resolution" in message
    assert str(data_dir / cifar10.FOLDER) in message
    assert all(name in message for name in cifar10.ALL_FILES)
    assert list(tmp_path.iterdir()) == []  # no partial files, no folders made for the download
