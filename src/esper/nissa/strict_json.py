"""Strict JSON for every file Esper writes: a non-finite float is written as ``null``.

Python's json module writes NaN and infinities as the bare tokens ``NaN``,
``Infinity`` and ``-Infinity``. They are not JSON (RFC 8259): jq, browsers and
most other languages' parsers reject the whole file. Esper's rule, the same for
every JSON and JSON Lines file it writes (events, metrics, transitions, config,
summaries, curricula):

- a float that is NaN, +inf or -inf is written as ``null``;
- readers (`loads`, and through it `read_jsonl`) turn the bare tokens that
  files from older Esper versions hold into ``None`` as well,

so every consumer deals with one marker for "no finite value": ``None``. A
NaN loss and a loss that was never measured look the same on disk; the events
(a governor rollback) say which it was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from enum import Enum
from typing import Any


def encode_default(obj: Any) -> Any:
    """Encode what json.dumps cannot.

    str/int enums (all of leyline's) are already encoded by json as their value;
    other enums become their name. numpy/torch scalars and arrays/tensors go
    through ``tolist()`` (a 0-d one yields a plain Python number).
    """
    if isinstance(obj, Enum):
        return obj.name
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def finite_or_null(value: Any, default: Callable[[Any], Any] = encode_default) -> Any:
    """`value` as plain JSON data with every non-finite float replaced by None."""
    if isinstance(value, float):  # numpy's float64 too (a float subclass)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):  # bools and int/str enums included
        return value
    if isinstance(value, dict):
        return {key: finite_or_null(item, default) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item, default) for item in value]
    return finite_or_null(default(value), default)


def dumps(record: Any, *, indent: int | None = None,
          default: Callable[[Any], Any] = encode_default) -> str:
    """`record` as strict JSON text (non-finite floats as null); one line unless `indent`.

    Records are almost always finite, so the plain encoder runs first and the
    value-by-value walk only happens when it refuses a non-finite float.
    """
    try:
        return json.dumps(record, indent=indent, default=default, allow_nan=False)
    except ValueError:  # "Out of range float values are not JSON compliant"
        return json.dumps(finite_or_null(record, default), indent=indent, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON text; the non-standard tokens of older files become None (see the module doc)."""
    # parse_constant sees exactly the bare tokens NaN, Infinity and -Infinity.
    return json.loads(text, parse_constant=lambda _token: None)
