"""Where the network is short of capacity: how hard the loss pushes on the layers at each slot.

A controller choosing *where* to grow needs a per-slot signal, and an empty slot reports
nothing of its own. The gradient does: per slot, ||grad|| / ||weight|| of the host module
whose output the slot receives (`SlotMount.injection_module`), read after backward on the
steps where the seeds' gradient norms are read, and averaged over the epoch. A layer whose
weights the loss keeps pushing hard relative to their size is where new units pay most
(the gradient-informed growth criterion of GradMax and NORTH, without their extra passes:
the gradients are there already, so this costs one norm per parameter and one read-back
per epoch).
"""

from __future__ import annotations

import torch

from esper.kasmina.host import SeededModel


class PressureMeter:
    """Per slot, the relative gradient norm of the host module feeding it, over an epoch."""

    def __init__(self, model: SeededModel) -> None:
        self.model = model
        self._sums: torch.Tensor | None = None
        self._readings = 0

    def read(self) -> None:
        """Add this step's relative gradient norms (call after backward, before the step)."""
        mount = self.model.mount
        params = [
            [p for p in mount.injection_module(slot_id).parameters() if p.grad is not None]
            for slot_id in self.model.seed_slots
        ]
        present = [group[0].device for group in params if group]
        if not present:
            return
        ratios = torch.stack([_relative_norm(group) if group else torch.zeros((), device=present[0]) for group in params])
        self._sums = ratios if self._sums is None else self._sums + ratios
        self._readings += 1

    def close_epoch(self) -> dict[str, float]:
        """The epoch's mean per slot (one read-back), and a fresh start; empty without readings."""
        sums, readings = self._sums, self._readings
        self._sums, self._readings = None, 0
        if sums is None:
            return {}
        means = (sums / readings).tolist()
        return dict(zip(self.model.seed_slots, means, strict=True))


def _relative_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """||grad|| / ||weight|| over `params`, as a float32 0-dim tensor on their device."""
    grad = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])).float())
    weight = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in params])).float())
    return grad / weight.clamp_min(1e-12)
