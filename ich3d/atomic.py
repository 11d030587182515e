"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A reader, a resumed job or a killed one never sees a half-written file. The file gets the usual
permissions (0666 minus the umask), not ``mkstemp``'s private 0600. A write that fails because the
disk is full is an :class:`~ich3d.errors.OutputError` naming the file, whatever library wrote it
(torch, for one, raises a ``RuntimeError`` chained from the ``ENOSPC``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ich3d.errors import OutputError

#: errno values that mean the disk, the user's quota or the file-size limit is exhausted.
FULL_DISK = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large (file-size limit)"}


def disk_full(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` saying the disk is full in ``exc`` or the exceptions it was raised from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_disk_message(path: Path | str | None, error: OSError) -> str:
    """``path: no space left on device ...; what to do`` (``path`` None: the file is not known)."""
    where = f"{path}: " if path else ""
    return (f"{where}{FULL_DISK[error.errno]} while writing{' it' if path else ' a file'}; free space on that disk "
            f"(or choose an --out on another one) and rerun the same command")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: Path, fsync: bool = False) -> Iterator[BinaryIO]:
    """Opens a temporary binary file that replaces ``path`` when the block ends without error.

    Args:
        path: the final file; its folder must exist.
        fsync: flush to disk before the rename (checkpoints: survive a power loss too).

    Raises:
        OutputError: the disk is full (or a quota or file-size limit is reached); nothing is left behind.
    """
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        _raise_if_full(exc, path)
        raise
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temp, _default_mode())
        os.replace(temp, path)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        _raise_if_full(exc, path)
        raise


def _raise_if_full(exc: BaseException, path: Path) -> None:
    full = disk_full(exc)
    if full is not None:
        raise OutputError(full_disk_message(path, full)) from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(Path(path)) as file:
        file.write(text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path`` through :func:`atomic_write` (``str`` for other types)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
