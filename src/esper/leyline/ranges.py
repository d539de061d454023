"""The values a config field takes, stated once on the field and checked the same way everywhere.

A field's annotation carries its range (`max_grad_norm: Annotated[float, Ge(0)]`, with
annotated_types' bounds, which pydantic reads) and every float must be finite. A config
read from a file or flags is checked by `jobs.config.build_config`, which names the key
with its section ("ppo.max_grad_norm"); a config built in code checks itself in its
`__post_init__` with `check_fields`, so no path takes a value outside its range.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any

import pydantic
from annotated_types import Ge, Gt, Interval, Le, Lt

# The aliases the configs use most; a field with another range spells it out.
AtLeastOne = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Interval(ge=0, le=1)]
# The controllers' Adam step sizes (PPO, warm start, offline): above 1 nothing is learned.
LearningRate = Annotated[float, Interval(gt=0, le=1)]
# Random seeds: numpy's and torch's generators take any 32-bit unsigned seed.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Interval(ge=0, le=MAX_SEED)]

FINITE = pydantic.ConfigDict(allow_inf_nan=False)

__all__ = [
    "FINITE",
    "MAX_SEED",
    "AtLeastOne",
    "Fraction",
    "Ge",
    "Gt",
    "Interval",
    "Le",
    "LearningRate",
    "Lt",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "Seed",
    "check_fields",
    "expectation",
]  # fmt: skip

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def expectation(error: Any) -> str:
    """What one pydantic error says the value must be: "an integer", ">= 0", "a finite number"."""
    if error["type"] in _BOUNDS:
        bound = next(iter(error["ctx"].values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # a float field's bound of 0 reads "> 0", not "> 0.0"
        return f"{_BOUNDS[error['type']]} {bound}"
    return error["msg"].removeprefix("Input should be ")


def check_fields(config: Any) -> None:
    """Refuse, naming the field, a value of the dataclass `config` outside its annotated range
    or a float that is not finite (for a config built in code rather than read by `build_config`)."""
    for name, adapter in _checked_fields(type(config)).items():
        value = getattr(config, name)
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as err:
            raise ValueError(f"{name} must be {expectation(err.errors()[0])}, got {value!r}") from None


@functools.cache
def _checked_fields(cls: type) -> dict[str, pydantic.TypeAdapter]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        f.name: pydantic.TypeAdapter(hints[f.name], config=FINITE)
        for f in dataclasses.fields(cls)
        if f.init and _bounded(hints[f.name])
    }


def _bounded(hint: Any) -> bool:
    """Whether a field's type states a range or holds a float (which must be finite)."""
    if hint is float or typing.get_origin(hint) is Annotated:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_bounded(arg) for arg in typing.get_args(hint))
    return False
