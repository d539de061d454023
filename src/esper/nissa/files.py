"""How Esper writes its files (atomically) and reads torch files (checkpoints, policy.pt).

Reading: `torch.load(weights_only=True)` never runs a pickled payload, but on a
corrupt, empty or hostile file it raises torch's own text, which advises loading
with `weights_only=False`: exactly what must never be done with such a file.
`load_torch_file` turns every such failure into one `TorchFileError` naming the
file and what is wrong, and checks the structure (required keys and their types,
a `TypedDict` checked strictly by pydantic) before anyone indexes into it.

Writing: `write_atomic` writes to a temporary name and renames, so a crash or a
full disk never leaves a half-written file under the real name, and removes the
temporary file when the write fails; a disk fault is an `OSError` with its errno
and the file's path. `save_torch_file` writes through it the bytes torch.save made
in memory: torch's own zip writer, handed a file on a disk that fills, stops with a
`RuntimeError` ("unexpected pos ...") with neither errno nor path.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pydantic
import torch

T = TypeVar("T")

# The format of every file a run writes and reads back (config.json, checkpoints, policy.pt,
# transitions_meta.json, compare_config.json): bumped whenever what they hold changes. A file
# of another format is refused in one line, never half-read: there are no legacy branches.
# 3: the observations gained each slot's gradient pressure and each blueprint's price there.
RUN_FORMAT = 3
FORMAT_KEY = "run_format"


class RunFormatError(ValueError):
    """A run file written in another format of Esper's run files (by another Esper version)."""


def with_format(record: dict[str, Any]) -> dict[str, Any]:
    """`record` stamped with this Esper's run-file format and version."""
    from esper import __version__

    return {**record, FORMAT_KEY: RUN_FORMAT, "esper_version": record.get("esper_version", __version__)}


def check_format(record: dict[str, Any], path: Path | str) -> None:
    """Refuse a run file of another format, saying which Esper wrote it and what to do."""
    from esper import __version__

    found = record.get(FORMAT_KEY, 1)  # files from before the formats were numbered: format 1
    if found == RUN_FORMAT:
        return
    writer = record.get("esper_version", "0.1.0")  # the one release before formats were numbered
    newer = isinstance(found, int) and found > RUN_FORMAT
    hint = "upgrade Esper to read it" if newer else "run it again with this Esper, or read it with the Esper that wrote it"
    raise RunFormatError(
        f"{path} was written by Esper {writer} in run-file format {found}; this Esper ({__version__}) "
        f"reads format {RUN_FORMAT} only: {hint}"
    )


class TorchFileError(ValueError):
    """A torch file that cannot be used: unreadable, hostile, or of the wrong structure."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Let a Ctrl-C that arrives during a write take effect once the write is complete.

    Why: a KeyboardInterrupt raised inside torch.save's zip writer surfaces from its
    C++ side as a RuntimeError ("unexpected pos ..."): the interrupt is lost and the
    run ends with a confusing error instead of "interrupted, continue with --resume".
    A write takes milliseconds, so deferring the signal that long costs nothing.
    Only the main thread can install signal handlers; elsewhere writes run as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Write `path` with `write(file)` through a temporary file and a rename; on failure nothing is left.

    A disk fault is re-raised as an `OSError` naming `path` (a failed write() names no
    file, and the temporary name would only confuse).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _interrupts_deferred():
            with tmp.open("wb" if binary else "w", encoding=None if binary else "utf-8") as f:
                write(f)
            os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def check_writable(path: str | os.PathLike[str], what: str, folder: bool = False) -> None:
    """Before any work: can the file (or folder) `path` be written? If not, one `ValueError` saying why.

    A real probe file is written next to it (and removed): permission bits alone say
    nothing when running as root, and a read-only mount or a full disk shows only then.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{what} {path} is {kind}; give a {'folder' if folder else 'file'} path")
    parent = path if folder else path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    if existing != parent and not folder:
        raise ValueError(f"{what} {path} cannot be written: folder {parent} does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be written: {existing}: {err.strerror or err}") from None


def save_torch_file(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` (stamped with the run-file format) to `path` with torch.save, atomically
    (a full disk is an `OSError` naming `path`)."""
    stamped = with_format(payload)
    write_atomic(path, lambda f: _write_all(f, _torch_bytes(lambda buffer: torch.save(stamped, buffer))), binary=True)


def save_torch_export(program: Any, path: Path) -> None:
    """Write a `torch.export` program to `path`, atomically (a full disk is an `OSError` naming `path`)."""
    write_atomic(path, lambda f: _write_all(f, _torch_bytes(lambda buffer: torch.export.save(program, buffer))), binary=True)


def _torch_bytes(save: Callable[[IO[bytes]], None]) -> memoryview:
    """What a torch writer writes, in memory: torch's zip writer reports a short write on a full
    disk as its own 'unexpected pos', naming no file; Python's write below names it."""
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getbuffer()


def _write_all(f: IO[bytes], data: memoryview) -> None:
    """Every byte of `data`: a raw file may take part of a write when the disk is nearly full."""
    while data:
        written = f.write(data)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = data[written:]


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch could not read `path`, in our words (never torch's, see the module docstring)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if "GLOBAL" in str(err):
        return "it holds Python objects other than tensors and plain data, which Esper never loads"
    return "it is corrupt, truncated or not a torch file"


@functools.cache
def _checker(schema: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(schema)


def check_structure(payload: Any, schema: type, path: Path, what: str) -> None:
    """Raise `TorchFileError` unless `payload` has the keys and types of the TypedDict `schema`."""
    if not isinstance(payload, dict):
        raise TorchFileError(path, f"holds a {type(payload).__name__}, not {what}")
    try:
        _checker(schema).validate_python(payload, strict=True)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "missing":
            raise TorchFileError(path, f"not {what}: key '{key}' is missing") from None
        expected = first["msg"].removeprefix("Input should be ")
        found = type(first["input"]).__name__
        raise TorchFileError(path, f"not {what}: '{key}' should be {expected}, holds a {found}") from None


def load_torch_file(path: str | os.PathLike[str], what: str, schema: type) -> dict[str, Any]:
    """Read a torch file Esper wrote, checked against `schema`; `what` names it in errors.

    A missing file raises `FileNotFoundError`; one of another run-file format
    `RunFormatError`; anything else wrong with it `TorchFileError`; a disk or
    permission fault stays an `OSError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise TorchFileError(path, f"is not a file, so not {what}")
    with path.open("rb") as file:  # a permission or disk fault stays an OSError naming the file
        try:
            with warnings.catch_warnings():
                # torch warns about pickle protocols when reading a foreign pickle; the error says it all.
                warnings.simplefilter("ignore")
                payload = torch.load(file, map_location="cpu", weights_only=True)
        # Depending on the bytes torch raises UnpicklingError, EOFError, RuntimeError, IndexError,
        # even OSError (a seek past the end of a truncated file): all mean the content is bad.
        except Exception as err:  # noqa: BLE001
            raise TorchFileError(path, f"cannot be read as {what}: {_unreadable(path, err)}") from None
    if isinstance(payload, dict) and payload.get(FORMAT_KEY, RUN_FORMAT) != RUN_FORMAT:
        check_format(payload, path)  # numbered, another format: its structure may differ
    check_structure(payload, schema, path, what)
    check_format(payload, path)  # unnumbered (format 1) but whole: an older Esper's file, not a damaged one
    return payload


def restore(path: Path, what: str, apply: Callable[[], T]) -> T:
    """Run `apply` (load_state_dict calls on a checked payload); a mismatch becomes a `TorchFileError`.

    The payload's outer structure is checked already; what the state dicts inside
    must hold is known only to each `load_state_dict`, which raises whatever it raises.
    """
    try:
        return apply()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise TorchFileError(path, f"does not match {what} ({type(err).__name__}: {reason})") from None
