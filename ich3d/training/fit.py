"""``ich3d train``: staged training (slice → sequence → finetune) of one fold or of every fold, resumable,
DDP-ready, calibrated.

The run folder (docs/design.md §4) holds ``config.yaml`` (the resolved config), ``run.json`` (version,
dataset path and index fingerprint, the folds, per fold its sizes, prevalence, training slice
spacing and the prior's validation metrics), ``splits.json`` and one ``fold_<K>/`` folder per
trained fold with ``metrics.jsonl``, ``encoder.pt`` (after the slice stage), ``model.pt`` (the final,
calibrated model) and ``last.pt`` (resume state, written atomically after every epoch). The folds
belong to the run: a resume continues them, and a resume with another ``--fold``/``--folds`` or
another dataset is refused. Randomness is derived from (seed, stage, epoch), so a run resumed from
``last.pt`` continues exactly as an uninterrupted one would on the CPU. How the folds are trained
and calibrated is :mod:`ich3d.training.folds`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ich3d import __version__
from ich3d.atomic import write_json_atomic
from ich3d.checkpoint import load_checkpoint
from ich3d.config import Config, load_config, save_config
from ich3d.constants import LABELS, RSNA_SLICE_SPACING_MM
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.opened import Dataset
from ich3d.errors import ConfigError
from ich3d.folders import FolderLock, prepare_output
from ich3d.layout import RunFolder
from ich3d.metrics import evaluate, prior_predictions
from ich3d.models.encoder import check_encoder_weights
from ich3d.models.model import check_model_config
from ich3d.provenance import provenance
from ich3d.runtime import Runtime, barrier, setup_runtime, teardown_runtime
from ich3d.training.engine import FoldData, StageContext
from ich3d.training.card import write_model_card
from ich3d.training.folds import train_folds
from ich3d.training.splits import load_splits, make_folds, save_splits, split_series

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """What ``ich3d train`` is asked besides the data and the config.

    Attributes:
        fold: train this validation fold.
        folds: ``"all"`` (or every fold number) trains every fold with an out-of-fold sequence
            stage (:mod:`ich3d.training.folds`). With neither, the config's ``train_folds``.
        resume: continue the run from its folds' ``last.pt``; a ``fold``/``folds`` that is not the
            run's is an error.
        device: "cpu", "cuda", ... or None for automatic.
        progress: show per-step progress bars.
    """

    fold: int | None = None
    folds: str | Sequence[int] | None = None
    resume: bool = False
    device: str | None = None
    progress: bool = False


def fit(dataset: Dataset | Path, out: Path, config: Config | str | Path | None = None, overrides: list[str] | None = None,
        options: TrainOptions = TrainOptions(),
        report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains the configured stages on one fold, or on every fold out of fold, of a built dataset.

    Args:
        dataset: a folder written by ``ich3d build-series`` (with labels), or it opened.
        out: the run folder (created; must not hold another run unless ``options.resume``).
        config: a :class:`Config`, a YAML path or packaged name; with ``resume`` None means the run's own.
        overrides: ``key=value`` strings applied on top of the config.
        options: fold(s), resume, device, progress bars (:class:`TrainOptions`).
        report: called on the main process with each epoch's record (for progress tables).

    Returns:
        ``folds`` (trained), ``mode`` (``single`` or ``out_of_fold``), ``calibration`` (its report)
        and ``metrics``: the calibrated held-out metrics (the validation fold, or every fold out of fold).

    Raises:
        ConfigError: a bad config, a run folder that does not match the request.
        InputError: an unusable dataset or output folder.
    """
    run = RunFolder(Path(out))
    resume, progress = options.resume, options.progress
    config = _resolve_config(run, config, overrides, resume)
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    asked = requested_folds(options.fold, options.folds, config.folds)
    if asked is None and not resume:  # neither --fold nor --folds: the config's train_folds
        asked = requested_folds(None, config.train_folds, config.folds)
    wanted = _check_run(run, dataset, asked, resume)
    _check_crop(dataset, config)
    runtime = setup_runtime(options.device, config.amp)
    try:
        if runtime.is_main:
            prepare_output(run.root, "--out")
        with FolderLock(run.lock, f"run folder {run.root}") if runtime.is_main else contextlib.nullcontext():
            contexts = _prepare(dataset, run, config, wanted, resume, runtime, report or (lambda record: None),
                                progress)
            states = [load_checkpoint(ctx.folder.last) if resume and ctx.folder.last.is_file() else None
                      for ctx in contexts]
            for ctx, state in zip(contexts, states):
                ctx.completed.extend(state["completed"] if state else [])
            calibration = train_folds(contexts, states)
            if runtime.is_main:
                _record_operating_points(run, calibration)
                write_model_card(run.root)
            return {"folds": wanted, "mode": "single" if len(wanted) == 1 else "out_of_fold",
                    "calibration": calibration, "metrics": calibration["after"]}
    finally:
        teardown_runtime()


def _record_operating_points(run: RunFolder, report: dict[str, Any]) -> None:
    """Adds the operating thresholds (per label: threshold, target and measured sensitivity, specificity)
    to ``run.json``."""
    info = json.loads(run.info.read_text())
    info["operating_points"] = report.get("operating_points")
    write_json_atomic(run.info, info)


def requested_folds(fold: int | None, folds: str | Sequence[int] | None, n_folds: int) -> list[int] | None:
    """The folds a request names: ``--fold K`` → [K], ``--folds all`` → every fold, ``--folds 0,1,2``;
    None when neither is given (a new run trains fold 0, a resumed one its own folds).

    Raises:
        ConfigError: both given, unknown folds, or several folds that are not all of them (out-of-fold
            features need every fold).
    """
    if fold is not None and folds is not None:
        raise ConfigError("give --fold K (one fold) or --folds all (every fold), not both")
    if folds is None:
        return None if fold is None else [fold]
    if isinstance(folds, str):
        try:
            folds = list(range(n_folds)) if folds == "all" else [int(part) for part in folds.split(",")]
        except ValueError:
            raise ConfigError(f"--folds {folds}: give 'all' or fold numbers such as 0,1,2") from None
    chosen = sorted(set(folds))
    if any(not 0 <= k < n_folds for k in chosen):
        raise ConfigError(f"--folds {folds}: folds are 0..{n_folds - 1} (config key 'folds': {n_folds})")
    if 1 < len(chosen) < n_folds:
        raise ConfigError(f"--folds {folds}: out-of-fold training needs every fold (0..{n_folds - 1}); train one "
                          f"fold with --fold, or set folds={len(chosen)} in the config")
    return chosen


def _resolve_config(run: RunFolder, config: Config | str | Path | None, overrides: list[str] | None,
                    resume: bool) -> Config:
    if resume and config is None:
        if not run.config.is_file():
            raise ConfigError(f"--resume: {run.root} holds no {run.config.name}: is it a run folder of `ich3d train`?")
        config = run.config
    resolved = config if isinstance(config, Config) else load_config(config, overrides)
    check_model_config(resolved.to_dict()["model"])  # an unknown encoder fails now, not after files are written
    if not resume:
        check_encoder_weights(resolved.to_dict()["model"]["encoder"])  # so do weights that are not on this machine
    if resume and run.config.is_file() and load_config(run.config).to_dict() != resolved.to_dict():
        raise ConfigError(f"--resume: the config differs from the one saved in {run.config}; "
                          f"resume without --config/--set")
    return resolved


def _check_run(run: RunFolder, dataset: Dataset, folds: list[int] | None, resume: bool) -> list[int]:
    """The folds to train; checks the run folder against the request before anything is written.

    Raises:
        ConfigError: a new run into a folder holding one, or a resume that does not match the run
            (version, folds, dataset).
    """
    fingerprint = dataset.fingerprint
    if not resume:
        if _has_checkpoint(run):
            raise ConfigError(f"{run.root} already holds a training run: pass --resume to continue it, "
                              f"or choose a new --out")
        if run.info.exists() or run.folds_present():
            log.warning("%s holds a run killed before its first checkpoint: starting it over", run.root)
        return folds or [0]
    if not run.info.is_file():
        raise ConfigError(f"--resume: {run.root} holds no {run.info.name}: nothing to resume (start without --resume)")
    info = json.loads(run.info.read_text())
    version = info.get("ich3d_version")
    if version is None or version.split(".")[:2] != __version__.split(".")[:2]:
        raise ConfigError(f"{run.root} was written by ich3d {version}, this is {__version__}: train into a new --out")
    stored = list(info["folds"])
    if folds is not None and folds != stored:
        what = f"fold {stored[0]}" if len(stored) == 1 else f"folds {stored}"
        asked = f"--fold {folds[0]}" if len(folds) == 1 else f"--folds {folds}"
        raise ConfigError(f"--resume: {run.root} trains {what}, not {asked}; resume without --fold/--folds, or "
                          f"train into a new --out")
    if info.get("dataset_fingerprint") != fingerprint:
        raise ConfigError(f"--resume: {run.root} was trained on {info.get('dataset')} (index {info.get('dataset_fingerprint')}), "
                          f"--dataset {dataset.root} is another (index {fingerprint}); resume with the run's dataset")
    if not _has_checkpoint(run):
        log.warning("--resume: %s was killed before its first checkpoint: its folds start from the beginning",
                    run.root)
    return stored


def _has_checkpoint(run: RunFolder) -> bool:
    """Whether any fold of ``run`` saved a checkpoint (a run killed before its first one holds nothing to keep)."""
    return any(run.fold(k).last.is_file() or run.fold(k).model.is_file() for k in run.folds_present())


def _check_crop(dataset: Dataset, config: Config) -> None:
    """The dataset's cache must be cropped as the config says (the model would read other images).

    Raises:
        ConfigError: another crop.
    """
    crop = dataset.crop
    if crop is not None and crop != config.data.crop:
        raise ConfigError(f"--dataset {dataset.root} was built with --crop {crop}, the config says data.crop={config.data.crop}: "
                          f"rebuild with --crop {config.data.crop}, or --set data.crop={crop}")


def _prepare(dataset: Dataset, run: RunFolder, config: Config, folds: list[int], resume: bool, runtime: Runtime,
             report: Callable, progress: bool) -> list[StageContext]:
    """Writes config, splits and run.json (new runs) and builds every fold's tables and context."""
    slices, series = dataset.slices, dataset.series
    series = series[series["build_cache"]]  # the labeled series of a clinical export that have a cache
    fold_of = load_splits(run.splits) if resume else make_folds(series, config.folds, config.seed)
    contexts = [_fold_context(dataset, slices, series, fold_of, run, config, k, runtime, report, progress)
                for k in folds]
    if runtime.is_main and not resume:
        save_config(config, run.config)
        save_splits(run.splits, fold_of, series, config.seed)
        write_json_atomic(run.info, {
            "ich3d_version": __version__, "dataset": str(dataset.root.resolve()),
            "dataset_fingerprint": dataset.fingerprint, "folds": folds,
            "mode": "single" if len(folds) == 1 else "out_of_fold",
            "per_fold": {str(ctx.data.fold): _fold_info(ctx) for ctx in contexts},
            "provenance": provenance(runtime.device, config.num_workers)})
    barrier(runtime)
    return contexts


def _fold_context(dataset: Dataset, slices: pd.DataFrame, series: pd.DataFrame, fold_of: dict[str, int], run: RunFolder,
                  config: Config, fold: int, runtime: Runtime, report: Callable, progress: bool) -> StageContext:
    train_uids, valid_uids = split_series(fold_of, fold)
    train, valid = build_table(dataset.root, slices, train_uids), build_table(dataset.root, slices, valid_uids)
    prevalence = train.labels[train.labeled_readable()].mean(axis=0)
    if runtime.is_main:
        prepare_output(run.fold(fold).root, "--out")
    log.info("fold %d: %d training series (%d slices), %d validation series", fold, len(train_uids),
             int(train.labeled_readable().sum()), len(valid_uids))
    spacing = float(series.set_index("series_id").loc[train_uids, "slice_spacing"].median())
    data = FoldData(fold, train, valid, prevalence, spacing if np.isfinite(spacing) else RSNA_SLICE_SPACING_MM)
    return StageContext(config, runtime, data, run.fold(fold), report, progress)


def _fold_info(ctx: StageContext) -> dict[str, Any]:
    data = ctx.data
    return {"train_series": len(data.train.series_uids), "valid_series": len(data.valid.series_uids),
            "prevalence": dict(zip(LABELS, data.prevalence.tolist())), "slice_spacing": data.slice_spacing,
            "prior_valid": _prior_metrics(data.valid, data.prevalence)}


def _prior_metrics(valid: SeriesTable, prevalence: np.ndarray) -> dict[str, Any]:
    """Validation metrics of the prevalence prior: the baseline every model must beat."""
    usable = valid.labeled_readable()
    series_ids = valid.series_uids[valid.series_of_slice()][usable]
    return evaluate(valid.labels[usable], prior_predictions(prevalence, int(usable.sum())), series_ids=series_ids)
