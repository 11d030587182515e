"""What produced a result: library versions, the git commit of a checkout, the device and the workers.

``run.json``, every checkpoint and ``infer.json`` carry :func:`provenance`, so that a figure can be
traced to the code and the machine that made it. Nothing here fails: a value that cannot be known
(no git, not a checkout, no CUDA) is None.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ich3d import __version__

#: Distributions whose versions are recorded (by their PyPI names).
LIBRARIES = ("torch", "monai", "pydicom", "numpy", "timm", "onnxruntime")


def provenance(device: Any = None, workers: int | None = None) -> dict[str, Any]:
    """The facts of this process, as a flat JSON- and checkpoint-safe dict.

    Args:
        device: the torch device (or its name) the work ran on; None: the best one available.
        workers: the number of worker processes (data loading / reading) the work used.

    Returns:
        ``ich3d``, ``python``, one key per :data:`LIBRARIES` entry (None when not installed), ``cuda`` and
        ``cudnn`` (the versions torch was built with and loads; None without CUDA), ``git_commit`` and
        ``git_dirty`` (None outside a git checkout), ``platform``, ``device``, ``device_name`` and
        ``workers``.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    commit, dirty = git_state(Path(__file__).resolve().parents[1])
    facts: dict[str, Any] = {"ich3d": __version__, "python": platform.python_version()}
    facts |= {name: _version(name) for name in LIBRARIES}
    cuda = torch.cuda.is_available()
    facts |= {"cuda": torch.version.cuda if cuda else None,
              "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
              "git_commit": commit, "git_dirty": dirty, "platform": platform.platform(), "device": str(device),
              "device_name": device_name(device), "workers": workers}
    return facts


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes to tracked files) of the git checkout at ``root``; (None, None) when
    ``root`` is not one (an installed wheel) or git is missing."""
    if not (root / ".git").exists():
        return None, None
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changes)


def device_name(device: Any) -> str:
    """The hardware behind a torch device: the GPU's name for CUDA, the CPU's model name for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_name()


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def _cpu_name() -> str:
    """``model name`` of /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
