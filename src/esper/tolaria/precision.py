"""Where a run computes and in which precision: `--device` and `--precision`.

`resolve_device("cuda:1")` checks that the device exists in this PyTorch and on this
machine (a `ValueError` that says what is there, before any work); `Precision` turns
`fp32` / `bf16` / `fp16-mixed` into what a training step needs:

- `fp32`: nothing (the default path is exactly the plain one);
- `bf16`: `torch.autocast` to bfloat16 around the forward pass and the loss; the
  weights, their gradients and the optimiser stay float32. bfloat16 has float32's
  range, so no loss scaling is needed;
- `fp16-mixed`: autocast to float16 plus a `torch.amp.GradScaler`: float16's range is
  small, so the loss is scaled up before backward (small gradients would flush to 0)
  and the gradients are unscaled before clipping and the step; a step whose gradients
  overflowed is skipped and the scale lowered.

A model whose own weights are bfloat16 (`model.bfloat16()`) needs no autocast: seeds
are built in the dtype of the features at their slot (`SeedSlot`), and it trains as is.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16", "fp16-mixed")
DEVICE_TYPES = ("cpu", "cuda", "mps")

_AUTOCAST_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16-mixed": torch.float16}


def resolve_device(name: str | torch.device) -> torch.device:
    """`name` as a `torch.device` that is really there; else a `ValueError` saying what is.

    "cuda" becomes the current CUDA device with its index (`cuda:0`), so it compares
    equal to the device of the tensors placed on it.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device '{name}': use cpu, cuda, cuda:N or mps") from None
    match device.type:
        case "cpu":
            return torch.device("cpu")
        case "cuda":
            if not torch.cuda.is_available():
                why = (
                    f"this PyTorch ({torch.__version__}) is built without CUDA"
                    if torch.version.cuda is None
                    else "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)"
                )
                raise ValueError(f"device '{name}' is not available: {why}; use --device cpu")
            count = torch.cuda.device_count()
            index = torch.cuda.current_device() if device.index is None else device.index
            if index >= count:
                raise ValueError(
                    f"device '{name}' is not available: this machine has {count} CUDA "
                    f"device(s), cuda:0..cuda:{count - 1}"
                )
            return torch.device("cuda", index)
        case "mps":
            if not torch.backends.mps.is_available():
                raise ValueError(
                    f"device '{name}' is not available: MPS needs Apple silicon and a PyTorch "
                    "built with it; use --device cpu"
                )
            return torch.device("mps")
    raise ValueError(f"unknown device '{name}': use cpu, cuda, cuda:N or mps")


@dataclass(frozen=True, slots=True)
class Precision:
    """How a training step computes on `device_type`: see the module docstring."""

    name: str = "fp32"
    device_type: str = "cpu"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.name}': use {', '.join(PRECISIONS)}")
        if self.device_type not in DEVICE_TYPES:
            raise ValueError(
                f"unknown device type '{self.device_type}': use {', '.join(DEVICE_TYPES)}"
            )

    @classmethod
    def on(cls, name: str, device: str | torch.device) -> Precision:
        """The precision `name` on a device checked by `resolve_device`; refuses what it cannot do."""
        device = resolve_device(device)
        precision = cls(name, device.type)
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                "use --precision fp16-mixed or fp32"
            )
        return precision

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPE[self.name]

    def autocast(self) -> AbstractContextManager[object]:
        """The context the forward pass and the loss run in (nothing at all for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh loss scaler for fp16-mixed; None otherwise (nothing to scale)."""
        if self.name != "fp16-mixed":
            return None
        return torch.amp.GradScaler(self.device_type)


FP32 = Precision()
