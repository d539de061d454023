"""`--device` and `--precision`: the flags every command that trains a host shares."""

from __future__ import annotations

import argparse

from esper.tolaria.precision import PRECISIONS


def add_device_arguments(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    """Add `--device` and `--precision` (read back as `args.device`, `args.precision`; None: the default)."""
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"where {what} trains: cpu (default), cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default), bf16 (autocast) or fp16-mixed (autocast with loss scaling)",
    )
