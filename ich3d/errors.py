"""User-facing errors: the CLI prints their message on one line and exits with code 1 (2 for a
:class:`UsageError`)."""

from __future__ import annotations

import re

#: How torch's DataLoader re-raises an exception of a worker process: its message becomes the worker's
#: traceback, whose last entry is ``<module>.<class>: <the original message>``.
_WORKER_WRAPPER = re.compile(r"\ACaught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class Ich3dError(Exception):
    """An error the user can fix; the message says what, which file, and what to do.

    Raised in a DataLoader worker, it reaches the main process with its original message (torch
    re-raises it as ``type(exc)(worker_traceback)``; the traceback is dropped here, docs/design.md §9).
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_WRAPPER.match(args[0]):
            args = (_original_message(args[0], type(self)),)
        super().__init__(*args)


def _original_message(wrapped: str, kind: type) -> str:
    """The message of ``kind`` at the end of a worker's formatted traceback (all of it when not found)."""
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = wrapped.rfind(marker)
    return wrapped[at + len(marker):].strip() if at >= 0 else wrapped


class InputError(Ich3dError):
    """Bad or missing input data: a folder, CSV, index or submission that cannot be used."""


class UsageError(InputError):
    """Bad command-line arguments, or arguments that do not go together (the CLI exits with code 2)."""


class ConfigError(Ich3dError):
    """An invalid configuration: unknown key, bad value, or a run folder that does not match."""


class OutputError(Ich3dError):
    """An output that cannot be written: the disk is full, or the file is larger than allowed."""
