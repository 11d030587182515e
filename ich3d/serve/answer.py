"""A study's answer as files: the SR, the key images and their thumbnails in ``DATA/results/job-<id>/``.

Every object is a new series of the study it answers (its patient and study modules copied from a
received instance). The folder is written before the database records the result, and a job that
is interrupted writes it again from scratch, so a result in the database always has its files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ich3d.atomic import atomic_write
from ich3d.layout import ServeFolder
from ich3d.serve.analysis import ANALYSED, StudyAnalysis
from ich3d.serve.report_sr import Provenance, build_sr
from ich3d.serve.store import ResultRow


#: Type 2 attributes of the patient and study modules the answer copies: present (maybe empty) in the copy
#: even when the received instance left them out (anonymised or synthetic studies).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _read(path: Path, pixels: bool = False) -> Any:
    """A received instance (headers only unless ``pixels``), with the type 2 attributes an answer copies present."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _save(dataset: Any, path: Path) -> None:
    with atomic_write(path, fsync=True) as file:
        dataset.save_as(file, enforce_file_format=True)


def write_answer(analysis: StudyAnalysis, instances: dict[str, Path], out: Path, provenance: Provenance) -> ResultRow:
    """Writes the SR (and, for a positive study, the key images) of ``analysis`` into ``out``.

    Args:
        analysis: the model's answer.
        instances: SOPInstanceUID → stored file of every instance of the study.
        out: the result folder (emptied first).
        provenance: version, model fingerprint, the SR this one supersedes.

    Returns:
        The result as the database records it.
    """
    import highdicom as hd

    from ich3d.serve.key_images import build_key_images, key_slices

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if analysis.status == ANALYSED:
        referenced = {analysis.key_sop_uid, *analysis.label_keys.values()}
        evidence = {uid: _read(instances[uid]) for uid in sorted(referenced)}
    else:
        uid, path = min(instances.items())
        evidence = {uid: _read(path)}
    sr = build_sr(analysis, evidence, provenance, (hd.UID(), hd.UID()))
    _save(sr, ServeFolder.result_object(out, "sr"))
    objects = [sr.SOPInstanceUID]
    if analysis.finding == "present":
        slices = {uid: _read(instances[uid], pixels=True) for uid in key_slices(analysis)}
        for number, (image, thumbnail) in enumerate(build_key_images(analysis, slices), 1):
            _save(image, ServeFolder.result_object(out, "sc", number))
            with atomic_write(ServeFolder.result_object(out, "png", number)) as file:
                file.write(thumbnail)
            objects.append(image.SOPInstanceUID)
    summary = analysis.to_dict() | {"objects": objects, "sr_uid": sr.SOPInstanceUID}
    return ResultRow(analysis.status, analysis.finding, analysis.probabilities.get("any"),
                     ",".join(analysis.flagged), analysis.reason, str(out), summary)


def previous_sr(result: dict[str, Any] | None) -> Any:
    """The SR data set of a study's current result (what a new answer supersedes), None when there is none."""
    if not result or not result.get("folder"):
        return None
    path = ServeFolder.result_object(Path(result["folder"]), "sr")
    return _read(path) if path.is_file() else None
