"""Synthetic head-CT dataset in the RSNA 2019 layout: DICOM series of a 3-D phantom with hemorrhages, labels
and the RSNA quirks (12-bit intercept wrap, gantry tilt, pixel representations, window tags, odd sizes,
instance numbers, transfer syntaxes, a corrupt and a non-DICOM file per split, duplicate label rows).

Layout under OUT: stage_2_train/ and stage_2_test/ (ID_<9 hex>.dcm), stage_2_train.csv,
stage_2_sample_submission.csv (every test file, incl. the corrupt and the junk one), stage_2_test_labels.csv
(ground truth of every test file: the corrupt image, and the junk file as all-negative),
synth.json (settings, counts, which series carry which quirk) and masks/<series_uid>.npz (every series'
lesion masks in its original pixel grid: ich3d.synth.series.write_mask, ich3d.layout.SynthFolder).
Output is byte-identical for the same config; each series draws from its own generator seeded with
(seed, split, series index); the masks draw no random numbers.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ich3d import __version__
from ich3d.constants import LABELS
from ich3d.errors import ConfigError, InputError
from ich3d.layout import SynthFolder
from ich3d.synth.dicom_writer import truncate_pixels
from ich3d.synth.plan import SPLITS, SeriesPlan, SynthConfig, plan_dataset
from ich3d.synth.series import write_series

log = logging.getLogger(__name__)


def make_synthetic_dataset(out: Path, config: SynthConfig, progress: Callable[[int], None] | None = None,
                           workers: int = 1) -> dict:  # fmt: skip
    """Write a synthetic RSNA-layout dataset under `out` (see the module docstring) and return its summary.

    Args:
        out: output folder; created if missing, must not already hold stage_2_train/ or stage_2_test/ files.
        config: the settings.
        progress: called with the number of files just written, after each series and extra file
            (`count_files(config)` files in all).
        workers: processes writing series in parallel (the output does not depend on it).

    Returns:
        The summary also written to out/synth.json: config, counts per split (files, images, series,
        studies, patients, positive slices per label) and which series carry which quirk.

    Raises:
        InputError: `out` is a file or already holds a dataset.
        ConfigError: workers < 1.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (got {workers}).")
    out = Path(out)
    layout = SynthFolder(out)
    for split in SPLITS:
        folder = layout.split(split)
        if out.is_file() or (folder.is_dir() and any(folder.iterdir())):
            raise InputError(f"{folder} already holds files: choose an empty --out folder or delete it first.")
        folder.mkdir(parents=True, exist_ok=True)
    layout.masks.mkdir(exist_ok=True)
    start = time.perf_counter()
    plans, extras = plan_dataset(config)
    labels: dict[str, dict[str, tuple[int, ...]]] = {split: {} for split in SPLITS}
    infos = []
    for plan, (series_labels, info) in zip(plans, _write_all_series(out, plans, config, progress, workers)):
        labels[plan.split].update(series_labels)
        infos.append(info)
    for split, (corrupt, junk) in extras.items():
        truncate_pixels(layout.split(split) / f"{corrupt}.dcm")
        junk_rng = np.random.default_rng([config.seed, SPLITS.index(split), 99])
        (layout.split(split) / f"{junk}.dcm").write_bytes(b"not a DICOM file\n" + junk_rng.bytes(2048))
        if progress is not None:
            progress(1)  # the junk file (the corrupt one is a slice of a series)
    summary = _summary(config, plans, infos, labels, extras)
    _write_csvs(out, config, labels, extras)
    layout.summary.write_text(json.dumps(summary, indent=1) + "\n")
    n_files = sum(s["files"] for s in summary["splits"].values())
    log.info("wrote %d files in %.1f s to %s", n_files, time.perf_counter() - start, out)
    return summary


def count_files(config: SynthConfig) -> int:
    """How many files `make_synthetic_dataset` writes for `config` (for progress bars)."""
    plans, extras = plan_dataset(config)
    return sum(len(plan.sop_uids) for plan in plans) + len(extras)


def _write_all_series(out: Path, plans: list[SeriesPlan], config: SynthConfig,
                      progress: Callable[[int], None] | None, workers: int) -> list[tuple[dict, dict]]:  # fmt: skip
    """write_series for every plan, in `workers` processes; results in plan order."""
    report = progress or (lambda n: None)
    folders = [SynthFolder(out).split(plan.split) for plan in plans]
    masks = [SynthFolder(out).mask_file(plan.series_uid) for plan in plans]
    if workers == 1:
        results = []
        for folder, plan, mask in zip(folders, plans, masks):
            results.append(write_series(folder, plan, config, mask))
            report(len(plan.sop_uids))
        return results
    with ProcessPoolExecutor(min(workers, len(plans))) as pool:
        futures = [pool.submit(write_series, folder, plan, config, mask)
                   for folder, plan, mask in zip(folders, plans, masks)]
        for future, plan in zip(futures, plans):
            future.result()
            report(len(plan.sop_uids))
        return [future.result() for future in futures]


def _summary(config: SynthConfig, plans: list[SeriesPlan], infos: list[dict],
             labels: dict[str, dict[str, tuple[int, ...]]], extras: dict[str, tuple[str, str]]) -> dict:  # fmt: skip
    """Settings, counts per split and one entry per series (JSON-serialisable, deterministic)."""
    splits = {}
    for split in SPLITS:
        mine = [p for p in plans if p.split == split]
        table = np.array(list(labels[split].values()), dtype=int).reshape(-1, len(LABELS))
        splits[split] = {
            "files": len(labels[split]) + (1 if split in extras else 0),
            "images": len(labels[split]),
            "series": len(mine),
            "studies": len({p.study_uid for p in mine}),
            "patients": len({p.patient_id for p in mine}),
            "positive_slices": dict(zip(LABELS, table.sum(axis=0).tolist())),
            "corrupt_image": extras[split][0] if split in extras else None,
            "junk_file": f"{extras[split][1]}.dcm" if split in extras else None,
        }
    series = []
    for plan, info in zip(plans, infos):
        positives = np.array([labels[plan.split][sop] for sop in plan.sop_uids]).sum(axis=0)
        series.append({"split": plan.split, "series_uid": plan.series_uid, "study_uid": plan.study_uid,
                       "patient_id": plan.patient_id, "n_slices": len(plan.sop_uids), **info, **plan.quirks,
                       "positive_slices": dict(zip(LABELS, positives.tolist()))})  # fmt: skip
    return {"generator": f"ich3d.synth.generate {__version__}", "config": asdict(config), "splits": splits, "series": series}


def _write_csvs(out: Path, config: SynthConfig, labels: dict[str, dict[str, tuple[int, ...]]],
                extras: dict[str, tuple[str, str]]) -> None:  # fmt: skip
    """stage_2_train.csv (with a few duplicated images), stage_2_test_labels.csv, sample submission."""
    rng = np.random.default_rng([config.seed, 3000])
    train = list(rng.permutation(list(labels["train"])))
    if config.quirks:
        for image in rng.choice(train, size=max(1, len(train) // 400), replace=False):
            train.insert(int(rng.integers(len(train) + 1)), str(image))
    layout = SynthFolder(out)
    _write_long(layout.train_labels, [(i, labels["train"][i]) for i in train])
    test = list(rng.permutation(list(labels["test"])))
    junk = [extras["test"][1]] if "test" in extras else []
    # Like RSNA's, the truth covers every image the sample asks for: the junk file shows no hemorrhage.
    truth = [(i, labels["test"][i]) for i in test] + [(i, (0,) * len(LABELS)) for i in junk]
    _write_long(layout.test_labels, truth)
    submission = test + junk
    _write_long(layout.sample_submission, [(i, None) for i in rng.permutation(submission)])


def _write_long(path: Path, rows: list[tuple[str, tuple[int, ...] | None]]) -> None:
    """Long RSNA format: ``ID,Label`` with six rows ``<image>_<label>`` per image (None: Label 0.5)."""
    lines = ["ID,Label"]
    for image, values in rows:
        lines += [f"{image}_{name},{0.5 if values is None else values[j]}" for j, name in enumerate(LABELS)]
    path.write_text("\n".join(lines) + "\n")
