"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A reader, a resumed job or a killed one never sees a half-written file. The file gets the usual
permissions (0666 minus the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


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
    """
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temp, _default_mode())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(Path(path)) as file:
        file.write(text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path`` through :func:`atomic_write` (``str`` for other types)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
