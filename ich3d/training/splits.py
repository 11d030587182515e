"""Cross-validation folds grouped by PatientID (no patient in two folds), saved as ``splits.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ich3d.atomic import write_json_atomic
from ich3d.errors import ConfigError, InputError


def make_folds(series: pd.DataFrame, n_folds: int, seed: int) -> dict[str, int]:
    """Assigns every labeled series to a fold, grouped by patient and stratified on positives.

    Patients are shuffled with ``seed``; patients with at least one hemorrhage-positive slice are
    dealt round-robin first, then the others, so every fold gets positives when there are enough.

    Args:
        series: series table with ``series_id``, ``patient_id``, ``n_labeled``, ``n_any``.
        n_folds: number of folds (>= 2).
        seed: shuffling seed; the same seed gives the same folds.

    Returns:
        ``{series_id: fold}`` for the labeled series.

    Raises:
        InputError: no labeled series, or fewer patients than folds.
    """
    labeled = series[series["n_labeled"] > 0]
    if labeled.empty:
        raise InputError("the dataset has no labeled series: build it with --labels CSV to train")
    patients = labeled.groupby("patient_id", sort=True)["n_any"].sum()
    if len(patients) < n_folds:
        raise InputError(f"{len(patients)} patients with labels is fewer than folds={n_folds}: lower 'folds'")
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = patients.iloc[order]
    ranked = pd.concat([shuffled[shuffled > 0], shuffled[shuffled == 0]])
    patient_fold = pd.Series(np.arange(len(ranked)) % n_folds, index=ranked.index)
    folds = labeled["patient_id"].map(patient_fold)
    return dict(zip(labeled["series_id"], folds.astype(int)))


def split_series(fold_of: dict[str, int], fold: int) -> tuple[list[str], list[str]]:
    """Training and validation series for one fold.

    Raises:
        ConfigError: the fold does not exist.
    """
    n_folds = max(fold_of.values()) + 1
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold {fold} does not exist: folds are 0..{n_folds - 1}")
    train = sorted(uid for uid, k in fold_of.items() if k != fold)
    valid = sorted(uid for uid, k in fold_of.items() if k == fold)
    return train, valid


def save_splits(path: Path, fold_of: dict[str, int], series: pd.DataFrame, seed: int) -> None:
    """Writes ``splits.json``: per fold its patients and series (readable, diffable)."""
    patient_of = dict(zip(series["series_id"], series["patient_id"]))
    n_folds = max(fold_of.values()) + 1
    folds = []
    for k in range(n_folds):
        uids = sorted(uid for uid, f in fold_of.items() if f == k)
        folds.append({"fold": k, "patients": sorted({patient_of[u] for u in uids}), "series": uids})
    write_json_atomic(path, {"n_folds": n_folds, "seed": seed, "grouped_by": "patient_id", "folds": folds})


def load_splits(path: Path) -> dict[str, int]:
    """Reads ``splits.json`` back into ``{series_id: fold}``."""
    data = json.loads(path.read_text())
    return {uid: entry["fold"] for entry in data["folds"] for uid in entry["series"]}
