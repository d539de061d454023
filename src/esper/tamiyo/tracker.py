"""Reads the run's vital signs: plateau (accuracy stopped improving) and stabilisation."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from esper.leyline import EpochSignals


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    plateau_patience: int = 3  # epochs without a `min_delta` gain in best val accuracy
    min_delta: float = 0.005
    warmup_epochs: int = 3  # the host is left alone this long
    stable_loss_change: float = 0.15  # relative train-loss change per epoch considered settled
    history: int = 10


class SignalTracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.best_accuracy = float("-inf")
        self.epochs_since_improvement = 0
        self.plateau_count = 0
        self.epochs_seen = 0
        self.val_accuracy: deque[float] = deque(maxlen=self.config.history)
        self.train_loss: deque[float] = deque(maxlen=self.config.history)

    def update(self, signals: EpochSignals) -> None:
        self.epochs_seen += 1
        self.val_accuracy.append(signals.val_accuracy)
        self.train_loss.append(signals.train_loss)
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_accuracy": self.best_accuracy,
            "epochs_since_improvement": self.epochs_since_improvement,
            "plateau_count": self.plateau_count,
            "epochs_seen": self.epochs_seen,
            "val_accuracy": list(self.val_accuracy),
            "train_loss": list(self.train_loss),
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
