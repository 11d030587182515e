"""Image identity: one unique, stable key per image, and duplicate files recorded instead of joined twice.

A file's name is not an identity: PACS exports repeat ``CT000000.dcm`` in every series folder. The key
of an image (``image_id``) is its SOPInstanceUID (with ``#<frame>`` for a frame of a multi-frame
file); a file without one is keyed by its path relative to the input folder, without a ``.dcm``
suffix (with ``#<slice>`` for a slice of a NIfTI volume). In the RSNA layout the file stem ``ID_<hex>`` is the SOPInstanceUID, so the submission IDs
are those of Kaggle. Two files with the same key are one image stored twice: the first (a readable
one, then in path order) is used, the others become ``duplicate`` rows keyed by their own path and
naming the file they duplicate, with whether their content is identical (docs/design.md §11).
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from ich3d.constants import Status

log = logging.getLogger(__name__)


def path_key(relative_path: pd.Series) -> pd.Series:
    """The key of a file without a SOPInstanceUID: its relative path without a ``.dcm`` suffix (any case)."""
    return relative_path.str.replace(r"\.[dD][cC][mM]$", "", regex=True)


def _same_content(a: str, b: str) -> bool:
    """True when the two files hold the same bytes."""
    def digest(path: str) -> str:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    try:
        return digest(a) == digest(b)
    except OSError:
        return False


def assign_image_ids(header: pd.DataFrame) -> pd.DataFrame:
    """Adds ``image_id`` as the first column and records duplicate images.

    Args:
        header: the header pass's rows, with ``path``, ``relative_path``, ``sop_uid``, ``frame``,
            ``status``, ``error`` and ``series_uid``.

    Returns:
        A copy with unique ``image_id`` values; rows that duplicate another image have status
        ``duplicate``, an ``error`` naming the file they duplicate, and no series (``series_uid`` NA),
        so nothing downstream joins them twice.
    """
    out = header.copy()
    by_path = path_key(out["relative_path"])
    frame = out["frame"].astype("Int64")
    suffix = ("#" + frame.astype(str)).where(frame.notna(), "")
    key = out["sop_uid"].where(out["sop_uid"].notna(), by_path) + suffix
    order = pd.DataFrame({"key": key, "bad": out["status"] != str(Status.OK), "path": out["relative_path"]})
    order = order.sort_values(["key", "bad", "path"], kind="stable")
    repeated = order.duplicated("key", keep="first")
    duplicates = order.index[repeated.to_numpy()]
    out.insert(0, "image_id", key)
    if len(duplicates):
        kept = order[~repeated].set_index("key")["path"]
        log.warning("%d files repeat an image found in another file (same SOPInstanceUID), e.g. %s: each used once",
                    len(duplicates), out.at[duplicates[0], "relative_path"])
        path_of = dict(zip(out["relative_path"], out["path"]))
        notes = [_duplicate_note(out.at[i, "path"], kept[out.at[i, "image_id"]], path_of) for i in duplicates]
        out.loc[duplicates, "status"] = str(Status.DUPLICATE)
        out.loc[duplicates, "error"] = notes
        out.loc[duplicates, "image_id"] = (by_path + suffix)[duplicates]
        out.loc[duplicates, "series_uid"] = pd.NA
    return _unique(out)


def _duplicate_note(path: str, original: str, path_of: dict[str, str]) -> str:
    """Why a duplicate is not used: the file it repeats (relative path) and whether the bytes are the same."""
    same = "identical file" if _same_content(path, path_of[original]) else "different content"
    return f"same SOPInstanceUID as {original} ({same}); that file is used"


def _unique(out: pd.DataFrame) -> pd.DataFrame:
    """Suffixes ``~2``, ``~3``... to keys that still collide (a path key equal to another image's UID)."""
    clash = out["image_id"].duplicated(keep=False)
    if clash.any():
        rank = out.groupby("image_id").cumcount() + 1
        out.loc[clash & (rank > 1), "image_id"] = out["image_id"] + "~" + rank.astype(str)
        log.warning("%d image keys collided and were made unique with ~<n>", int((clash & (rank > 1)).sum()))
    assert out["image_id"].is_unique, "image keys are not unique"
    return out

