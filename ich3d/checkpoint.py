"""Checkpoints as plain dicts of tensors and builtins: validated, written atomically, read with weights_only."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ich3d import __version__
from ich3d.provenance import provenance
from ich3d.atomic import atomic_write
from ich3d.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout; bump when the payload written by train.py changes incompatibly.
FORMAT_VERSION = 1

#: Leaf types that ``torch.load(weights_only=True)`` accepts (exact types: subclasses such as
#: StrEnum, namedtuple or defaultdict are pickled by class reference and rejected).
_PLAIN_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as plain data, numpy scalars converted to Python builtins.

    Args:
        value: the object to check.
        where: its location in the payload, for the error message (e.g. ``config.model.head``).

    Raises:
        TypeError: an object that ``weights_only`` loading would reject, named by ``where``.
    """
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_LEAVES:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (dict, OrderedDict):
        items = ((_plain(k, f"{where} (key {k!r})"), _plain(v, f"{where}.{k}")) for k, v in value.items())
        return type(value)(items)
    if type(value) in (list, tuple, set):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    hint = " (use torch.from_numpy(...) or .tolist())" if isinstance(value, np.ndarray) else ""
    raise TypeError(
        f"checkpoint payload key {where!r} holds a {type(value).__module__}.{type(value).__qualname__}, which "
        f"torch.load(weights_only=True) rejects: store plain dicts, lists, numbers, strings and tensors{hint}"
    )


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then ``os.replace``.

    The payload is checked first (nothing is written when it fails); numpy scalars become Python
    numbers. ``ich3d_version`` and ``format_version`` are added (overwritten when already present,
    e.g. when re-saving a loaded checkpoint), and :func:`ich3d.provenance.provenance` when the payload
    has none. The parent folder is created when missing.

    Args:
        path: destination file, e.g. ``<run>/model.pt``.
        payload: plain dict (str keys) of tensors, state dicts, numbers, strings, lists and dicts.

    Raises:
        TypeError: the payload holds an object that ``weights_only`` loading would reject.
    """
    path = Path(path)
    if type(payload) not in (dict, OrderedDict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__qualname__}")
    bad_keys = [k for k in payload if type(k) is not str]
    if bad_keys:
        raise TypeError(f"checkpoint payload keys must be str, got {bad_keys!r}")
    data = {k: _plain(v, k) for k, v in payload.items()}
    data.update(ich3d_version=__version__, format_version=FORMAT_VERSION)
    data.setdefault("provenance", provenance())  # versions, commit, machine (save_model adds device and workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fsync=True) as handle:
        torch.save(data, handle)
    logger.debug("saved checkpoint %s", path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default CPU).

    Returns:
        The payload dict, including ``ich3d_version`` and ``format_version``.

    Raises:
        InputError: the file is missing, unreadable, corrupt, or not an ich3d checkpoint.
        ConfigError: the file was written with another checkpoint format version.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}: run `ich3d train` first / check --run")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a plain-dict checkpoint ({first_line}); "
            "re-run `ich3d train` to write it again"
        ) from exc
    if not isinstance(data, Mapping) or "format_version" not in data:
        raise InputError(f"{path} is not an ich3d checkpoint (no format_version): check --run")
    if data["format_version"] != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {path} has format version {data['format_version']} (ich3d {data.get('ich3d_version')}), "
            f"this ich3d ({__version__}) reads format version {FORMAT_VERSION}: re-train or use a matching ich3d"
        )
    return dict(data)
