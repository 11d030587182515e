"""Synthetic clinical head-CT export, the way a PACS writes one, with exam-level truth in the CQ500 format.

Layout under OUT (names in ich3d.layout.ClinicalExportFolder):

    export/<S0001_SYN0123456>/<series folder>/CT000000.dcm ...   one folder per study and per series
    reads.csv        name,Category,R1:ICH,R1:IPH,R1:IVH,R1:SDH,R1:EDH,R1:SAH,R2:...,R3:SAH (three readers)
    reads_map.csv    name,study_uid
    exam_labels.csv  study_uid,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural
    image_labels.csv ID,Label (ID = <SOPInstanceUID>_<label>, six rows per axial CT image)
    synth.json       settings, counts, every study (with the series a reader should choose), every series

Series folders (ich3d.synth.clinical_plan.SERIES_FOLDERS) and their headers: ich3d.synth.clinical_series.
A study's series all show one exam (ich3d.synth.clinical_images), so its thick and thin series agree.
Output is byte-identical for the same config, whatever the number of workers: each study draws from its
own generator seeded with (seed, study index), the reads from (seed, 3000).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ich3d import __version__
from ich3d.atomic import write_text_atomic
from ich3d.constants import LABELS
from ich3d.errors import ConfigError, InputError
from ich3d.layout import ClinicalExportFolder
from ich3d.synth.clinical_images import plan_exam
from ich3d.synth.clinical_plan import (
    ClinicalConfig,
    StudyPlan,
    pick_exactly,
    plan_export,
)
from ich3d.synth.clinical_series import n_images, write_study
from ich3d.workers import process_pool

log = logging.getLogger(__name__)

#: The CQ500 reads' columns and the label each stands for.
CQ500_COLUMNS: dict[str, str] = {"ICH": "any", "IPH": "intraparenchymal", "IVH": "intraventricular",
                                 "SDH": "subdural", "EDH": "epidural", "SAH": "subarachnoid"}  # fmt: skip
N_READERS = 3


def make_clinical_export(out: Path, config: ClinicalConfig, progress: Callable[[int], None] | None = None,
                         workers: int = 1) -> dict:  # fmt: skip
    """Write a synthetic clinical export under `out` (see the module docstring) and return its summary.

    Args:
        out: output folder; created if missing; its ``export/`` must be missing or empty.
        config: the settings.
        progress: called with the number of files just written, after each study (`count_files(config)`
            files in all).
        workers: processes writing studies in parallel (the output does not depend on it).

    Returns:
        The summary also written to ``synth.json``: ``generator``, ``layout``, ``config``, ``counts``,
        ``studies`` (name, UIDs, vendor, exam labels, ``chosen_series_uid``, ...) and ``series`` (folder,
        description, expected ``role``, thickness, kernel, ``n_images``, ``quirks``, ...).

    Raises:
        InputError: `out` is a file or its ``export/`` already holds files.
        ConfigError: workers < 1.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (got {workers}).")
    folder = ClinicalExportFolder(Path(out))
    if folder.root.is_file() or (folder.export.is_dir() and any(folder.export.iterdir())):
        raise InputError(f"{folder.export} already holds files: choose an empty --out folder or delete it first.")
    folder.export.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans = plan_export(config)
    report = progress or (lambda n: None)
    results = []
    with process_pool(min(workers, len(plans))) as pool:
        written = pool.map(write_study, [folder.export] * len(plans), [config] * len(plans), plans) if pool else (
            write_study(folder.export, config, plan) for plan in plans)  # fmt: skip
        for result in written:
            results.append(result)
            report(result["n_files"])
    summary = _summary(config, results)
    _write_truth(folder, config, plans, results)
    write_text_atomic(folder.summary, json.dumps(summary, indent=1) + "\n")
    log.info("wrote %d files in %.1f s to %s", summary["counts"]["files"], time.perf_counter() - start, folder.export)
    return summary


def count_files(config: ClinicalConfig) -> int:
    """How many DICOM files `make_clinical_export` writes for `config` (for progress bars; no pixels drawn)."""
    total = 0
    for plan in plan_export(config):
        exam = plan_exam(np.random.default_rng([config.seed, plan.index]), config, plan)
        total += sum(n_images(kind, exam) for kind in plan.kinds)
    return total


def reads(config: ClinicalConfig, exam_labels: np.ndarray) -> np.ndarray:
    """Three readers' reads of every exam: (n_studies, 3, 6) 0/1 in CQ500_COLUMNS order.

    Every reader reads the truth, except that in `config.reader_disagreement` of the exams (at least one
    when above 0) one seeded reader reads one subtype the other way (and their ICH follows their
    subtypes), so the majority of the three is always the truth.

    Args:
        exam_labels: (n_studies, 6) 0/1 in LABELS order.
    """
    rng = np.random.default_rng([config.seed, 3000])
    truth = exam_labels[:, [LABELS.index(label) for label in CQ500_COLUMNS.values()]]
    out = np.repeat(truth[:, None, :], N_READERS, axis=1)
    rows = np.flatnonzero(pick_exactly(rng, len(truth), config.reader_disagreement))
    readers, columns = rng.integers(N_READERS, size=rows.size), rng.integers(1, len(CQ500_COLUMNS), size=rows.size)
    out[rows, readers, columns] ^= 1
    out[:, :, 0] = out[:, :, 1:].max(axis=2)
    return out


def _write_truth(folder: ClinicalExportFolder, config: ClinicalConfig, plans: list[StudyPlan],
                 results: list[dict]) -> None:  # fmt: skip
    """reads.csv, reads_map.csv, exam_labels.csv and image_labels.csv (atomically, in study order)."""
    uids = [result["study"]["study_uid"] for result in results]
    exams = np.array([[result["study"]["labels"][label] for label in LABELS] for result in results], dtype=np.uint8)
    header = ["name", "Category"] + [f"R{r + 1}:{c}" for r in range(N_READERS) for c in CQ500_COLUMNS]
    lines = [",".join(header)]
    for plan, read in zip(plans, reads(config, exams)):
        lines.append(",".join([plan.name, plan.category, *map(str, read.ravel().tolist())]))
    _write_lines(folder.reads, lines)
    _write_lines(folder.reads_map, ["name,study_uid"] + [f"{p.name},{uid}" for p, uid in zip(plans, uids)])
    _write_lines(folder.exam_labels, [",".join(("study_uid", *LABELS))] +
                 [",".join([uid, *map(str, row)]) for uid, row in zip(uids, exams.tolist())])  # fmt: skip
    rows = ["ID,Label"]
    for result in results:
        for sop, values in result["image_labels"].items():
            rows += [f"{sop}_{label},{value}" for label, value in zip(LABELS, values)]
    _write_lines(folder.image_labels, rows)


def _write_lines(path: Path, lines: list[str]) -> None:
    write_text_atomic(path, "\n".join(lines) + "\n")


def _summary(config: ClinicalConfig, results: list[dict]) -> dict:
    """Settings, counts, studies and series (JSON-serialisable, deterministic)."""
    studies = [result["study"] for result in results]
    series = [record for result in results for record in result["series"]]
    counts = {
        "studies": len(studies), "patients": len({s["patient_id"] for s in studies}), "series": len(series),
        "files": sum(result["n_files"] for result in results),
        "labelled_images": sum(len(result["image_labels"]) for result in results),
        "positive_studies": sum(s["labels"]["any"] for s in studies),
        "roles": {role: sum(r["role"] == role for r in series) for role in sorted({r["role"] for r in series})},
    }  # fmt: skip
    return {"generator": f"ich3d.synth.clinical {__version__}", "layout": "clinical", "config": asdict(config),
            "counts": counts, "studies": studies, "series": series}  # fmt: skip
