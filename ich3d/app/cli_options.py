"""The command line's shared pieces: parameter types, the failure handler every command is wrapped in,
the -q/-v and series-choice options, and the checks of ``--set`` and ``--folds``.

Every command turns the failures a user can meet into one line on stderr (:func:`ich3d.app.failures.
failure_message`) with exit code 1; usage errors (click's, and the API's :class:`~ich3d.errors.UsageError`)
exit with 2, an interrupt with 130, and an output folder the failed command created and left empty is
removed.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ich3d.app.failures import failure_message
from ich3d.constants import EXIT_ERROR, EXIT_INTERRUPTED, MAX_IMAGE_SIZE
from ich3d.errors import UsageError
from ich3d.folders import missing_folder, remove_unused

PathArg = click.Path(path_type=Path)
ExistingDir = click.Path(exists=True, file_okay=False, path_type=Path)
ExistingFile = click.Path(exists=True, dir_okay=False, path_type=Path)
ExistingPath = click.Path(exists=True, path_type=Path)
#: Numbers of things (series, processes, parts, figures); the API checks them too, the CLI makes them usage errors.
Count, Positive = click.IntRange(min=0), click.IntRange(min=1)
ImageSize = click.IntRange(min=1, max=MAX_IMAGE_SIZE)
Probability = click.FloatRange(0, 1, min_open=True, max_open=True)


def handle_errors(command: Callable) -> Callable:
    """Turns user-fixable failures into a one-line message and exit code 1 (2 for usage errors, 130 when
    interrupted); an output folder the failed command created and left empty is removed."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        created = missing_folder(kwargs.get("out"))
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            remove_unused(created)
            raise click.UsageError(" ".join(str(exc).split()), click.get_current_context(silent=True)) from None
        except KeyboardInterrupt:
            remove_unused(created)
            click.echo("interrupted: finished work is kept; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            remove_unused(created)
            message = failure_message(exc)
            if message is None:
                raise
        click.echo(f"error: {' '.join(message.split())}", err=True)
        sys.exit(EXIT_ERROR)

    return wrapper


def set_verbosity(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """Applies -q/-v (given before or after the command: either place switches it on)."""
    root = ctx.find_root()
    root.obj = root.obj or {"quiet": False, "verbose": False}
    root.obj["quiet"] |= quiet
    root.obj["verbose"] |= verbose
    level = logging.DEBUG if root.obj["verbose"] else logging.WARNING if root.obj["quiet"] else logging.INFO
    logging.getLogger().setLevel(level)


def verbosity_options(command: Callable) -> Callable:
    """Adds -q/--quiet and -v/--verbose to a command, so they may follow it."""

    def apply(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
        def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
            set_verbosity(ctx, quiet=name == "quiet" and value, verbose=name == "verbose" and value)
        return callback

    command = click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=apply("quiet"),
                           help="No progress bars or tables; warnings and errors only.")(command)
    return click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=apply("verbose"),
                        help="Debug logging.")(command)


def series_options(command: Callable) -> Callable:
    """Adds the per-study series choice (--series, --series-rules, --series-uid) and --follow-links to a command."""
    for option in reversed([
        click.option("--series", "series_mode", type=click.Choice(["auto", "all"]), default="auto", show_default=True,
                     help="auto: per study the soft-kernel, non-contrast axial series nearest the target thickness; "
                          "all: every axial CT series."),
        click.option("--series-rules", type=ExistingFile,
                     help="YAML/JSON rules overriding the choice (include, exclude, roles)."),
        click.option("--series-uid", "series_uids", multiple=True, help="Predict exactly these series (repeatable)."),
        click.option("--follow-links", is_flag=True,
                     help="Follow symbolic links that lead out of --dicom-dir [default: reported, not followed]."),
    ]):
        command = option(command)
    return command


def check_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--set`` values must look like ``key.sub=value``."""
    for value in values:
        if "=" not in value or not value.split("=", 1)[0].strip():
            raise click.BadParameter(f"{value!r} must look like key.sub=value", ctx, param)
    return values


def check_folds(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--folds`` is ``all`` or fold numbers such as ``0,1,2``."""
    if value is not None and value != "all" and not re.fullmatch(r"\d+(,\d+)*", value.replace(" ", "")):
        raise click.BadParameter(f"{value!r}: give 'all' or fold numbers such as 0,1,2", ctx, param)
    return value


def is_quiet(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj["quiet"])


def console_for(ctx: click.Context) -> Any:
    from rich.console import Console

    return Console(quiet=is_quiet(ctx))
