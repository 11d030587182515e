"""Which files a build reads: the recursive walk of the input folders, and the fingerprint of what it found.

Every file is a candidate except hidden entries, names with a suffix that is never an image
(:data:`IGNORED_SUFFIXES`; ``.nii`` and ``.nii.gz`` are NIfTI volumes, other ``.gz`` files are
ignored) and files found twice (a folder given twice, or inside another one). Extension-less files
and ``.dcm`` files are tried, and anything unreadable is reported in the index rather than silently
skipped; a media-storage directory file (DICOMDIR, whatever its name) is recognised by its SOP class
in the header pass. An input is a folder, or a NIfTI file (``--nifti``). A folder or link that cannot
be read is recorded, not fatal. Inputs stay inside the input: a symbolic link whose target lies
outside the input folder is not followed (unless ``follow_links``) and is recorded
(docs/design.md §11).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ich3d.dataset.nifti import is_nifti
from ich3d.errors import InputError

#: Suffixes that are never images (everything else is tried, and reported if unreadable).
IGNORED_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".txt", ".md", ".parquet", ".npy", ".npz", ".xml",
                              ".html", ".png", ".jpg", ".jpeg", ".gif", ".zip", ".tar", ".py", ".log", ".yaml",
                              ".yml", ".pdf", ".tsv", ".tmp", ".pt", ".lock", ".gz"})


@dataclass(frozen=True)
class InputFiles:
    """Candidate files of a build.

    Attributes:
        paths: absolute paths, sorted per input folder.
        sources: the input (a folder, or a NIfTI file; as given) each path came from.
        n_ignored: files skipped by name or found twice.
        files_id: fingerprint of the paths, sizes and modification times.
        unreadable: (path, error) of folders and links that could not be read (their files are missing
            from ``paths``; the build reports them).
        outside_links: (link, target) of symbolic links leading out of their input folder that were not
            followed (the build reports them; ``follow_links`` follows them).
    """

    paths: list[str]
    sources: list[str]
    n_ignored: int
    files_id: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    outside_links: list[tuple[str, str]] = field(default_factory=list)

    def relative_paths(self) -> list[str]:
        """Each path relative to the input folder (a file input: its folder; with several, to their
        common parent), with ``/`` separators: stable across machines, and unique."""
        inputs = {Path(source).resolve() for source in self.sources}
        roots = sorted({str(root.parent if root.is_file() else root) for root in inputs})
        base = roots[0] if len(roots) == 1 else os.path.commonpath(roots)
        return [os.path.relpath(path, base).replace(os.sep, "/") for path in self.paths]


@dataclass
class _Walk:
    """One input folder's walk: its root, whether links out of it are followed, and what it met."""

    root: Path
    exclude: Path
    follow_links: bool
    unreadable: list[tuple[str, str]]
    outside_links: list[tuple[str, str]]

    def leads_out(self, entry: os.DirEntry) -> bool:
        """True when ``entry`` is a link whose target is outside the root (recorded, unless followed)."""
        if self.follow_links or not entry.is_symlink():
            return False
        target = Path(entry.path).resolve()
        if target == self.root or self.root in target.parents:
            return False
        self.outside_links.append((entry.path, str(target)))
        return True

    def files(self) -> Iterator[tuple[str, os.stat_result]]:
        """(path, stat) of the files under the root, recursively, following links once (those leading out
        only when ``follow_links``); hidden entries and ``exclude`` skipped. Folders, files and links that
        cannot be read are appended to ``unreadable``."""
        stack, seen = [self.root], {self.exclude}
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                with os.scandir(current) as entries:
                    found = [entry for entry in entries if not entry.name.startswith(".")]
            except OSError as exc:
                self.unreadable.append((str(current), f"{type(exc).__name__}: {exc.strerror or exc}"))
                continue
            for entry in found:
                try:
                    if self.leads_out(entry):
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(Path(entry.path).resolve())
                    elif entry.is_file(follow_symlinks=True):
                        yield entry.path, entry.stat()
                    elif entry.is_symlink():
                        self.unreadable.append((entry.path, "broken symbolic link"))
                except OSError as exc:
                    self.unreadable.append((entry.path, f"{type(exc).__name__}: {exc.strerror or exc}"))


def is_candidate(name: str) -> bool:
    """True when a file of this name may be an image (see the module docstring)."""
    lower = name.lower()
    return os.path.splitext(lower)[1] not in IGNORED_SUFFIXES or is_nifti(lower)


def _input_files(source: Path, walk: _Walk) -> Iterator[tuple[str, os.stat_result]]:
    """(path, stat) of the files of one input: a folder's walk, or a NIfTI file itself."""
    if source.is_file() and is_nifti(source.name):
        yield str(source.resolve()), source.stat()
    elif source.is_dir():
        yield from walk.files()
    else:
        raise InputError(f"{source}: not a folder nor a NIfTI volume (.nii, .nii.gz); give a --dicom-dir folder "
                         f"or a --nifti volume")


def collect_files(dicom_dirs: Sequence[Path], exclude: Path, follow_links: bool = False) -> InputFiles:
    """Finds the candidate files under each folder (a NIfTI file given as an input is its own candidate).

    Args:
        dicom_dirs: input folders (or NIfTI files).
        exclude: a folder never searched (the output).
        follow_links: follow symbolic links that lead out of their input folder (default: record them).

    Raises:
        InputError: an input that is neither a folder nor a NIfTI file, or a folder without candidate files.
    """
    paths, sources, n_ignored, seen, unreadable, outside = [], [], 0, set(), [], []
    digest = hashlib.sha256()
    for folder in dicom_dirs:
        found = []
        walk = _Walk(Path(folder).resolve(), Path(exclude).resolve(), follow_links, unreadable, outside)
        for path, stat in _input_files(Path(folder), walk):
            if not is_candidate(os.path.basename(path)) or path in seen:
                n_ignored += 1
                continue
            seen.add(path)
            found.append((path, stat.st_size, stat.st_mtime_ns))
        if not found:
            problems = f"; unreadable: {unreadable[0][0]} ({unreadable[0][1]})" if unreadable else ""
            links = f"; {len(outside)} links lead out of it (--follow-links follows them)" if outside else ""
            raise InputError(f"--dicom-dir {folder}: no image files found (searched recursively; "
                             f"{n_ignored} files ignored by their suffix or already found{problems}{links})")
        found.sort()
        for path, size, mtime in found:
            digest.update(f"{path}\0{size}\0{mtime}\n".encode())
        paths += [path for path, _, _ in found]
        sources += [str(folder)] * len(found)
    return InputFiles(paths, sources, n_ignored, digest.hexdigest(), unreadable, outside)


def file_id(path: Path | None) -> str | None:
    """A file's identity for reuse checks: resolved path, size and modification time (None for None)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
