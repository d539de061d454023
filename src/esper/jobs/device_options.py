"""`--device` and `--precision`: the flags every command that trains a host shares."""

from __future__ import annotations

import argparse

from esper.tolaria.precision import PRECISIONS


def add_device_arguments(parser: argparse.ArgumentParser, what: str = "the model", section: str = "") -> None:
    """Add `--device` and `--precision` (read back as `args.device`, `args.precision`; None: the default),
    or, for the config keys of a `section`, as SECTION__device and SECTION__precision (`jobs.config`)."""
    prefix = f"{section}__" if section else ""
    parser.add_argument(
        "--device",
        dest=prefix + "device",
        metavar="DEVICE",
        help=f"where {what} trains: cpu (default), cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--precision",
        dest=prefix + "precision",
        choices=PRECISIONS,
        help="fp32 (default), bf16 (autocast) or fp16-mixed (autocast with loss scaling)",
    )
