"""Image identity: SOPInstanceUID keys, path keys for files without one, duplicates recorded once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ich3d.constants import Status
from ich3d.dataset.identity import assign_image_ids, path_key


def _header(tmp_path: Path, rows: list[dict]) -> pd.DataFrame:
    """Header rows with files on disk (their content decides 'identical file')."""
    out = []
    for row in rows:
        path = tmp_path / row["relative_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row.pop("content", b"x"))
        out.append({"path": str(path), "frame": None, "status": "ok", "error": "", "series_uid": "1.2.9", **row})
    frame = pd.DataFrame(out)
    frame["frame"] = frame["frame"].astype("Int64")
    return frame


def test_path_keys_strip_only_dcm() -> None:
    keys = path_key(pd.Series(["ID_0a1b2c3d4.dcm", "CT 5mm/CT000001.DCM", "1.2.840.1234", "a.dcm.bak"]))
    assert keys.tolist() == ["ID_0a1b2c3d4", "CT 5mm/CT000001", "1.2.840.1234", "a.dcm.bak"]


def test_keys_are_sop_uids_with_frames_and_paths_without(tmp_path: Path) -> None:
    header = _header(tmp_path, [
        {"relative_path": "s1/CT000000.dcm", "sop_uid": "1.2.3.1"},
        {"relative_path": "s2/CT000000.dcm", "sop_uid": "1.2.3.2"},  # the same file name in another series
        {"relative_path": "s3/enhanced.dcm", "sop_uid": "1.2.3.3", "frame": 7},
        {"relative_path": "junk/CT000000.dcm", "sop_uid": None, "status": "not_dicom"},
        {"relative_path": "ct_scans/049.nii", "sop_uid": None, "frame": 12},
    ])
    out = assign_image_ids(header)
    assert out.columns[0] == "image_id"
    assert out["image_id"].tolist() == ["1.2.3.1", "1.2.3.2", "1.2.3.3#7", "junk/CT000000", "ct_scans/049.nii#12"]
    assert (out["status"] != Status.DUPLICATE).all()


def test_a_second_copy_is_a_duplicate_naming_the_one_used(tmp_path: Path) -> None:
    header = _header(tmp_path, [
        {"relative_path": "a/CT000000.dcm", "sop_uid": "1.2.3.1", "status": "corrupt", "content": b"cut"},
        {"relative_path": "b/CT000000.dcm", "sop_uid": "1.2.3.1", "content": b"whole"},
        {"relative_path": "c/copy.dcm", "sop_uid": "1.2.3.1", "content": b"whole"},
    ])
    out = assign_image_ids(header).set_index("relative_path")
    assert out.at["b/CT000000.dcm", "image_id"] == "1.2.3.1"  # the readable copy is used
    assert out.at["b/CT000000.dcm", "status"] == "ok"
    for name, same in (("a/CT000000.dcm", "different content; it is readable"), ("c/copy.dcm", "identical file")):
        assert out.at[name, "status"] == Status.DUPLICATE
        assert out.at[name, "error"] == f"{name} has the SOPInstanceUID of b/CT000000.dcm ({same}): that file is used"
    assert out["image_id"].is_unique and len(out) == 3
