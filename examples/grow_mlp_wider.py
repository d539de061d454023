"""Widen a layer of your own MLP while your own loop trains it: `esper.graft(..., widen=["fc1"])`.

    python examples/grow_mlp_wider.py                          # about a minute on one CPU thread
    python examples/grow_mlp_wider.py --epochs 2 --max-batches 2   # a smoke test

The MLP below is plain PyTorch (digits, bundled with scikit-learn: 8x8 images as 64
features). `widen=["fc1"]` gives its hidden layer a slot for width seeds: Esper finds
what must grow with fc1's outputs (the ReLU after it, fc2's inputs; torch-pruning's
DependencyGraph, the `graft-widen` extra), and an `esper.Grower` plants `widen` seeds
there while the ordinary SGD loop below trains the model. A seed's new units learn
behind the model, blend in, and when kept are merged: `model.fc1` is then physically
wider, its optimiser state carried over, and `grown.export()` is a plain MLP that wide.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from rich.console import Console
from sklearn.datasets import load_digits
from torch import Tensor, nn

import esper


class MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, hidden), nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def main(argv: list[str] | None = None) -> esper.Grower:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-batches", type=int, default=22, help="training batches per epoch")
    parser.add_argument("--hidden", type=int, default=8, help="fc1's width to start from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1, as esper's own)")
    parser.add_argument("--run-dir", help="also keep a run folder (esper report RUN_DIR)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    train_x, train_y, val_x, val_y = x[:1400], y[:1400], x[1400:], y[1400:]
    model = MLP(args.hidden)

    grown = esper.graft(model, [], example_input=train_x[:2], widen=["fc1"])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)

    @torch.no_grad()
    def accuracy(m: nn.Module) -> float:  # higher is better
        m.eval()
        return (m(val_x).argmax(1) == val_y).float().mean().item()

    grower = esper.Grower(grown, optimizer, accuracy, epochs=args.epochs, blueprints=["widen"],
                          run_dir=args.run_dir, console=Console())  # fmt: skip
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(grower.epoch, args.epochs):
        grown.train()
        losses = []
        for batch in torch.randperm(len(train_x), generator=order).split(64)[: args.max_batches]:
            loss = F.cross_entropy(grown(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        grower.end_epoch(train_loss=sum(losses) / len(losses))
    grower.close()

    slot = grown.seed_slots["fc1"]
    widths = " -> ".join(str(w) for w in [args.hidden, *(r.width for r in slot.widenings)])
    live = "no live seed" if slot.state is None else f"a live {slot.state.blueprint_id} seed ({slot.stage.name})"
    print(f"validation accuracy {grower.history[-1].val_accuracy:.3f}; fc1 widths {widths}; {live}")
    plain = grown.export()  # a plain MLP of the grown width
    print(f"exported: fc1 {plain.fc1}, fc2 {plain.fc2}")
    if not math.isfinite(grower.history[-1].val_accuracy):
        raise SystemExit("the run diverged")
    return grower


if __name__ == "__main__":
    main()
