"""Output folders: checked before any long work starts, and locked while a job writes them.

A job that writes a folder (build-series, train, infer) first makes sure the folder can be created
and written (:func:`prepare_output`), so a typo or a read-only disk is a one-line error at once,
not a traceback after an hour of compute. It then holds an advisory lock on a file in the folder
(:class:`FolderLock`, ``fcntl.flock``): a second job writing the same folder is refused with the
holder's pid. The kernel releases the lock when its holder dies, so a lock file left behind by a
killed job is recognised as stale and taken over. A job that fails before writing anything removes
the folder it created (:func:`missing_folder`, :func:`remove_unused`): no empty output folder, or
one holding only a lock file, is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from ich3d.errors import InputError

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: no locking (the folder checks still run)
    fcntl = None  # type: ignore[assignment]


def prepare_output(path: Path, what: str) -> Path:
    """Creates ``path`` (and its parents) when missing and checks that files can be written in it.

    Args:
        path: the output folder.
        what: how messages name it, e.g. ``--out``.

    Raises:
        InputError: the path is a file, or the folder cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: is a file, not a folder; give a folder path (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ich3d-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot write there ({exc.strerror or exc}); choose a writable folder") from None
    return path


def missing_folder(path: Path | None) -> Path | None:
    """The top-most folder of ``path`` that does not exist yet (what a job writing there creates), or None."""
    if path is None or os.path.lexists(path):
        return None
    top = Path(path).absolute()
    while not os.path.lexists(top.parent):
        top = top.parent
    return top


def remove_unused(folder: Path | None) -> None:
    """Removes ``folder`` when it holds nothing but folders and released (empty) lock files.

    Called when a job that created ``folder`` (:func:`missing_folder`) fails; a lock file a live job
    holds names its holder, so it is never empty and the folder stays.
    """
    if folder is None or not folder.is_dir() or folder.is_symlink():
        return
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not (name.startswith(".ich3d") and name.endswith(".lock")) or path.is_symlink() or path.stat().st_size:
                return
    shutil.rmtree(folder, ignore_errors=True)
    log.debug("removed %s: the failed job wrote nothing there", folder)


class FolderLock:
    """An exclusive advisory lock on ``path`` (a lock file), held from ``__enter__`` to ``__exit__``.

    Args:
        path: the lock file (created; its content names the holder: pid and host).
        what: how the message names the locked folder, e.g. ``run folder runs/a``.
        wait: wait for the holder to finish instead of failing (jobs that share a step, such as the
            index of a sharded build, take turns).

    Raises:
        InputError: on ``__enter__``, when another live process holds the lock (and ``wait`` is False).
    """

    def __init__(self, path: Path, what: str, wait: bool = False) -> None:
        self.path = Path(path)
        self.what = what
        self.wait = wait
        self._file: int | None = None

    def __enter__(self) -> FolderLock:
        if fcntl is None:
            return self
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                holder = self._holder()
                os.close(handle)
                raise InputError(f"{self.what} is in use by another ich3d job ({holder}); wait for it to finish, "
                                 f"or write to another folder") from None
            log.info("%s is in use by another ich3d job (%s): waiting", self.what, self._holder())
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(handle)
            raise InputError(f"{self.what}: cannot lock {self.path} ({exc.strerror})") from None
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._file = handle
        return self

    def _holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "unknown process"
        return "unknown process"

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file, 0)
            os.close(self._file)  # closing releases the lock; the empty file may stay
            self._file = None
