"""Grow a small GPT of your own, in your own training loop, on CPython's bundled pydoc text.

    python examples/grow_gpt.py                       # about a minute on one CPU thread
    python examples/grow_gpt.py --epochs 1 --max-batches 2   # a smoke test

The GPT below is plain PyTorch, written without Esper in mind: blocks in a
ModuleList, a forward that takes keyword arguments and returns a dict. Esper grafts
a seed slot on the output of every block (`esper.graft(model, ["blocks.*"], ...)`)
and an `esper.Grower` grows it while the loop below, which is an ordinary AdamW
loop, trains it: after each epoch `grower.end_epoch()` measures the next-character
accuracy on held-out text, lets the heuristic plant, blend, keep or cull seeds
(whole transformer sub-blocks: attention, MLP, LoRA, ...), and keeps the optimiser
in step with them.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

import esper
from esper.runtime import load_pydoc_chars


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP, each residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: Tensor) -> dict[str, Tensor]:
        x = self.tokens(input_ids) + self.positions.weight[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return {"logits": self.head(self.norm(x))}


def main(argv: list[str] | None = None) -> esper.Grower:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-batches", type=int, default=40, help="training batches per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", type=int, default=64, help="characters per sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1, as esper's own)")
    parser.add_argument("--run-dir", help="also keep a run folder (esper report RUN_DIR)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data = load_pydoc_chars(block_size=args.context)  # (N, context) windows of character ids
    vocab = data.metadata["vocab_size"]
    val_x, val_y = data.val_inputs[:256].to(device), data.val_targets[:256].to(device)
    model = GPT(vocab, args.context).to(device)

    grown = esper.graft(model, ["blocks.*"], example_input={"input_ids": val_x[:2]})
    optimizer = torch.optim.AdamW(grown.parameters(), lr=3e-3)

    @torch.no_grad()
    def next_char_accuracy(m: nn.Module) -> float:
        m.eval()
        logits = m(input_ids=val_x)["logits"]
        return (logits.argmax(-1) == val_y).float().mean().item()

    grower = esper.Grower(grown, optimizer, next_char_accuracy, epochs=args.epochs, run_dir=args.run_dir,
                          console=Console())  # fmt: skip
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(grower.epoch, args.epochs):
        grown.train()
        batches = torch.randperm(len(data.train_inputs), generator=order).split(args.batch_size)
        losses = []
        for batch in batches[: args.max_batches]:
            x, y = data.train_inputs[batch].to(device), data.train_targets[batch].to(device)
            logits = grown(input_ids=x)["logits"]
            loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(grown.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        grower.end_epoch(train_loss=sum(losses) / len(losses))
    grower.close()

    base = sum(p.numel() for p in model.parameters())
    added = grown.seed_param_count()
    print(f"next-character accuracy {grower.history[-1].val_accuracy:.3f}; parameters {base:,} + {added:,} grown")
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
