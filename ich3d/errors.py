"""User-facing errors: the CLI prints their message on one line and exits with code 1."""

from __future__ import annotations


class Ich3dError(Exception):
    """An error the user can fix; the message says what, which file, and what to do."""


class InputError(Ich3dError):
    """Bad or missing input data: a folder, CSV, index or submission that cannot be used."""


class ConfigError(Ich3dError):
    """An invalid configuration: unknown key, bad value, or a run folder that does not match."""
