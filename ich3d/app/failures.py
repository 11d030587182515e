"""What a failed command tells its user: one line, ``what, which file, what to do``, for every failure a
user can fix (ich3d's own errors, file-system faults, a full disk, memory), and None for a programming
error, whose traceback is shown. No click here: :mod:`ich3d.app.cli_options` turns the line into the exit.
"""

from __future__ import annotations

from ich3d.atomic import FULL_DISK, disk_full, full_disk_message
from ich3d.errors import Ich3dError


def _os_error_message(exc: OSError) -> str:
    """``path: reason; what to do`` for a file-system fault."""
    where = exc.filename or "a file"
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    if exc.errno in FULL_DISK:
        return full_disk_message(where if exc.filename else None, exc)
    reason = exc.strerror or type(exc).__name__
    return f"{where}: {reason}; check that the path exists, is the right kind (file or folder) and is writable"


def failure_message(exc: Exception) -> str | None:
    """The one line of a failure the user can fix, or None for a programming error (its traceback is shown)."""
    if isinstance(exc, Ich3dError):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --batch or --image-size, fewer --workers, or a machine with more memory"
    full = disk_full(exc)  # e.g. torch's RuntimeError raised from an ENOSPC
    return None if full is None else _os_error_message(full)
