"""The baselines: a plain PyTorch training loop and validation pass, as a user would write them.

Same optimiser settings as esper's defaults (`tolaria.OptimConfig`: SGD with
momentum 0.9, gradient clipping at 5.0), so a figure measures esper's machinery,
not a different training recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.placement import SlotMount

Batches = Iterable[tuple[Tensor, Tensor]]


def sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def train_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer, clip: float = 5.0) -> float:
    model.train()
    total = torch.zeros(())
    for inputs, targets in batches:
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += loss.detach()
    return total.item()


@torch.no_grad()
def validate(model: nn.Module, batches: Batches) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for inputs, targets in batches:
        logits = model(inputs)
        correct += (logits.reshape(-1, logits.shape[-1]).argmax(-1) == targets.reshape(-1)).sum()
        count += targets.numel()
    return correct.item() / count


@contextmanager
def slots_replaced(host: SlotMount, modules: dict[str, nn.Module]) -> Iterator[SlotMount]:
    """The same host object with `modules` (plain layers, or nothing) in place of its slots.

    Timing one set of weight tensors in both arms of a figure removes a bias of its
    own: on this machine two identical copies of a model differ by up to ~2% in
    step time (memory placement), as much as the dormant figure's whole budget.
    Slots are taken out and put back through the host's own `unregister_slot` /
    `register_slot`, so with `{}` the baseline runs the host with no slot machinery
    at all (no hooks on its modules).
    """
    slots = host.placed_slots()
    for key in slots:
        host.unregister_slot(key)
    for key, module in modules.items():
        host.register_slot(key, module)
    try:
        yield host
    finally:
        for key in modules:
            host.unregister_slot(key)
        for key, slot in slots.items():
            host.register_slot(key, slot)


def image_batches(n: int, batch: int = 64, size: int = 32, classes: int = 10) -> list[tuple[Tensor, Tensor]]:
    """Fixed random images: these figures time compute, and accuracy plays no part in them."""
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, 3, size, size, generator=generator), torch.randint(0, classes, (batch,), generator=generator))
        for _ in range(n)
    ]
