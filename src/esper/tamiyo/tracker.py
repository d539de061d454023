"""Reads the run's vital signs: plateau, stabilisation, and whether the network is short of capacity."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from esper.leyline import EpochSignals
from esper.leyline.ranges import (
    AtLeastOne,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    check_fields,
)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    plateau_patience: NonNegativeInt = 3  # epochs without a `min_delta` gain in best val accuracy
    min_delta: NonNegativeFloat = 0.005
    warmup_epochs: NonNegativeInt = 3  # the host is left alone this long
    stable_loss_change: NonNegativeFloat = 0.15  # relative train-loss change per epoch considered settled
    history: AtLeastOne = 10
    # Short of capacity: over the last `progress_window` epochs the training loss fell by less
    # than `underfit_progress` per epoch (relative), while the training accuracy is still below
    # `fit_accuracy` (a network that fits its training data has the capacity it needs).
    progress_window: AtLeastOne = 2
    underfit_progress: NonNegativeFloat = 0.05
    fit_accuracy: Fraction = 0.995

    def __post_init__(self) -> None:
        check_fields(self)
        if not 1 <= self.progress_window < self.history:
            raise ValueError(
                f"tracker.progress_window must be >= 1 and below tracker.history ({self.history}), "
                f"got {self.progress_window}"
            )


class SignalTracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.best_accuracy = float("-inf")
        self.epochs_since_improvement = 0
        self.plateau_count = 0
        self.epochs_seen = 0
        self.val_accuracy: deque[float] = deque(maxlen=self.config.history)
        self.train_loss: deque[float] = deque(maxlen=self.config.history)
        self.train_accuracy = 0.0

    def update(self, signals: EpochSignals) -> None:
        self.epochs_seen += 1
        self.val_accuracy.append(signals.val_accuracy)
        self.train_loss.append(signals.train_loss)
        self.train_accuracy = signals.train_accuracy
        if signals.val_accuracy > self.best_accuracy + self.config.min_delta:
            self.best_accuracy = signals.val_accuracy
            self.epochs_since_improvement = 0
        else:
            self.epochs_since_improvement += 1
            if self.epochs_since_improvement == self.config.plateau_patience:
                self.plateau_count += 1

    @property
    def on_plateau(self) -> bool:
        return self.epochs_since_improvement >= self.config.plateau_patience

    @property
    def stabilized(self) -> bool:
        """Past warm-up and the training loss no longer drops steeply."""
        if self.epochs_seen < self.config.warmup_epochs or len(self.train_loss) < 2:
            return False
        previous, current = self.train_loss[-2], self.train_loss[-1]
        return abs(previous - current) / max(abs(previous), 1e-8) <= self.config.stable_loss_change

    @property
    def loss_progress(self) -> float | None:
        """The training loss's relative drop per epoch over the last `progress_window` epochs
        (geometric mean; negative when it rose), or None before there is that much history."""
        window = self.config.progress_window
        if len(self.train_loss) <= window:
            return None
        before, now = self.train_loss[-1 - window], self.train_loss[-1]
        if not before > 0 or not now > 0:
            return None
        return 1.0 - (now / before) ** (1.0 / window)

    @property
    def short_of_capacity(self) -> bool:
        """Past warm-up, the training loss has all but stopped falling, and the network does
        not fit its training data yet: more capacity is what it lacks."""
        progress = self.loss_progress
        return (
            self.epochs_seen >= self.config.warmup_epochs
            and progress is not None
            and progress < self.config.underfit_progress
            and self.train_accuracy < self.config.fit_accuracy
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_accuracy": self.best_accuracy,
            "epochs_since_improvement": self.epochs_since_improvement,
            "plateau_count": self.plateau_count,
            "epochs_seen": self.epochs_seen,
            "val_accuracy": list(self.val_accuracy),
            "train_loss": list(self.train_loss),
            "train_accuracy": self.train_accuracy,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_accuracy = state["best_accuracy"]
        self.epochs_since_improvement = state["epochs_since_improvement"]
        self.plateau_count = state["plateau_count"]
        self.epochs_seen = state["epochs_seen"]
        self.val_accuracy.clear()
        self.val_accuracy.extend(state["val_accuracy"])
        self.train_loss.clear()
        self.train_loss.extend(state["train_loss"])
        self.train_accuracy = state["train_accuracy"]
