"""Identity: the keys the package makes for images and series, checked for collisions here and only here.

Header values (UIDs, descriptions) are data, kept verbatim (identifiers whose bytes are not valid
text are escaped one-to-one, :func:`escape_identifier`). Keys are made:

- An image's key (``image_id``) is its SOPInstanceUID (with ``#<frame>`` for a frame of a
  multi-frame file); a file without one is keyed by its path relative to the input folder, without a
  ``.dcm`` suffix (with ``#<slice>`` for a slice of a NIfTI volume). A file name is not an identity:
  PACS exports repeat ``CT000000.dcm`` in every series folder. In the RSNA layout the file stem
  ``ID_<hex>`` is the SOPInstanceUID, so the submission IDs are those of Kaggle.
- Two files with the same key are one image stored twice: the original is used (a readable copy,
  then ImageType ORIGINAL over DERIVED, lossless over lossy, the larger bit depth, then path order)
  and the others become ``duplicate`` rows keyed by their own path, naming both files and why.
- A stack's key (``series_id``, also the name of its cache file) is a short hash of (patient ID,
  study UID, series UID, stack number): never the UID's text, so no two patients, studies or stacks
  share a key or a file, whatever the UIDs hold (docs/design.md §2, §11).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from ich3d.constants import Status

log = logging.getLogger(__name__)

#: Hex digits of a ``series_id`` (64 bits; more only if two stacks' digests share this prefix).
SERIES_ID_DIGITS = 16
#: Transfer syntaxes that lose information (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and
#: HTJ2K lossy, JPIP, MPEG/HEVC video): a copy stored so is not the original.
LOSSY_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108", "1.2.840.10008.1.2.4.203",
})


def escape_identifier(value: bytes) -> str:
    """An identifier's bytes as text, one-to-one: valid UTF-8 without a backslash or NUL is kept as it
    is; otherwise every backslash becomes ``\\\\``, every NUL ``\\x00`` and every byte that is not
    valid UTF-8 ``\\xNN``.

    Two different byte strings never give the same text (``S\\xe9`` and ``S\\xfc`` for Latin-1 ``Sé``
    and ``Sü``, never one replacement character), so identifiers are never merged by their decoding, and
    a NUL can separate them in a key (:func:`series_ids`).
    """
    escaped = value.replace(b"\\", b"\\\\")
    try:
        text = escaped.decode("utf-8")
    except UnicodeDecodeError:
        text = escaped.decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")


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


def _copy_rank(header: pd.DataFrame) -> pd.DataFrame:
    """Per row, what makes a copy of an image less of an original (each column: lower is better):
    unreadable, DERIVED/SECONDARY, lossy (LossyImageCompression 01 or a lossy transfer syntax), fewer bits."""
    def text(column: str) -> pd.Series:
        return header[column].fillna("").astype(str) if column in header else pd.Series("", index=header.index)
    derived = text("image_type").str.upper().str.split("\\").str[0].str.strip().isin(["DERIVED", "SECONDARY"])
    lossy = (text("lossy_compression").str.strip() == "01") | text("transfer_syntax").isin(LOSSY_SYNTAXES)
    bits = header["bits_stored"].astype("Float64").fillna(0).to_numpy(float) if "bits_stored" in header else 0.0
    return pd.DataFrame({"bad": (header["status"] != str(Status.OK)).to_numpy(), "derived": derived.to_numpy(),
                         "lossy": lossy.to_numpy(), "bits": -np.asarray(bits, dtype=float)}, index=header.index)


_PREFERENCE = (("bad", "it is readable"), ("derived", "it is ORIGINAL, this copy DERIVED"),
               ("lossy", "it is lossless, this copy lossy"), ("bits", "it has more bits stored"))


def assign_image_ids(header: pd.DataFrame) -> pd.DataFrame:
    """Adds ``image_id`` as the first column and records duplicate images.

    Args:
        header: the header pass's rows, with ``path``, ``relative_path``, ``sop_uid``, ``frame``,
            ``status``, ``error`` (and, when present, ``image_type``, ``lossy_compression``,
            ``transfer_syntax``, ``bits_stored``, which decide which copy is the original).

    Returns:
        A copy with unique ``image_id`` values; rows that duplicate another image have status
        ``duplicate`` and an ``error`` naming both files and why the other one is used; they are
        outside every series, so nothing downstream joins them twice.
    """
    out = header.copy()
    by_path = path_key(out["relative_path"])
    frame = out["frame"].astype("Int64")
    suffix = ("#" + frame.astype(str)).where(frame.notna(), "")
    key = out["sop_uid"].where(out["sop_uid"].notna(), by_path) + suffix
    shared = key.duplicated(keep=False).to_numpy()  # only copies need ranking (few rows)
    order = _copy_rank(out[shared]).assign(key=key[shared], path=out["relative_path"][shared])
    order = order.sort_values(["key", "bad", "derived", "lossy", "bits", "path"], kind="stable")
    repeated = order.duplicated("key", keep="first")
    duplicates = order.index[repeated.to_numpy()]
    out.insert(0, "image_id", key)
    if len(duplicates):
        kept = order[~repeated].set_index("key")
        log.warning("%d files repeat an image found in another file (same SOPInstanceUID), e.g. %s: each used once",
                    len(duplicates), out.at[duplicates[0], "relative_path"])
        path_of = dict(zip(out["relative_path"], out["path"]))
        notes = [_duplicate_note(out.loc[i], order.loc[i], kept.loc[key[i]], path_of) for i in duplicates]
        out.loc[duplicates, "status"] = str(Status.DUPLICATE)
        out.loc[duplicates, "error"] = notes
        out.loc[duplicates, "image_id"] = (by_path + suffix)[duplicates]
    return _unique(out)


def _duplicate_note(row: pd.Series, rank: pd.Series, original: pd.Series, path_of: dict[str, str]) -> str:
    """Why a copy is not used: both files (relative paths), whether their bytes are the same, and what
    made the other one (``original``: its rank and relative ``path``) the original."""
    same = _same_content(row["path"], path_of[original["path"]])
    why = next((reason for column, reason in _PREFERENCE if rank[column] != original[column]), "first in path order")
    content = "identical file" if same else f"different content; {why}"
    return f"{row['relative_path']} has the SOPInstanceUID of {original['path']} ({content}): that file is used"


def _unique(out: pd.DataFrame) -> pd.DataFrame:
    """Suffixes ``~2``, ``~3``... to keys that still collide (a path key equal to another image's UID),
    skipping suffixed keys that exist already, so the result is unique by construction."""
    clash = out["image_id"].duplicated(keep="first")
    if clash.any():
        used = set(out["image_id"])
        for i in out.index[clash.to_numpy()]:
            n = 2
            while f"{out.at[i, 'image_id']}~{n}" in used:
                n += 1
            out.at[i, "image_id"] = f"{out.at[i, 'image_id']}~{n}"
            used.add(out.at[i, "image_id"])
        log.warning("%d image keys collided and were made unique with ~<n>", int(clash.sum()))
    assert out["image_id"].is_unique, "image keys are not unique"
    return out


def series_ids(stacks: pd.DataFrame) -> pd.Series:
    """The key of each stack: the first :data:`SERIES_ID_DIGITS` hex digits of the SHA-256 of
    (patient ID, study UID, series UID, stack number), NUL-separated (escaped identifiers hold no NUL,
    :func:`escape_identifier`).

    Args:
        stacks: one row per stack with ``patient_id``, ``study_uid``, ``series_uid`` (header values; absent
            values count as empty) and ``stack`` (its number within the series).

    Returns:
        str keys aligned with ``stacks``; distinct for distinct rows: should two digests share their
        prefix, every key gets more digits until none do (checked, never assumed).

    Raises:
        AssertionError: the same stack given twice.
    """
    parts = [stacks[column].fillna("").astype(str) for column in ("patient_id", "study_uid", "series_uid")]
    text = parts[0] + "\0" + parts[1] + "\0" + parts[2] + "\0" + stacks["stack"].astype("Int64").astype(str)
    if text.duplicated().any():
        raise AssertionError("series_ids: the same (patient, study, series, stack) given twice")
    digests = [hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest() for value in text]
    for digits in range(SERIES_ID_DIGITS, 65, 8):
        keys = pd.Series([digest[:digits] for digest in digests], index=stacks.index, dtype=object)
        if keys.is_unique:
            return keys
    raise AssertionError("series_ids: two stacks have the same SHA-256")
