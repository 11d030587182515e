"""``ich3d train``: staged training (slice → sequence → finetune) of one fold, resumable, DDP-ready.

The run folder (docs/design.md §4) holds ``config.yaml`` (the resolved config), ``run.json`` (version,
dataset path and index fingerprint, the fold, the prior), ``splits.json`` and one ``fold_<K>/`` folder
per trained fold with ``metrics.jsonl``, ``encoder.pt`` (after the slice stage), ``model.pt`` (the
final model) and ``last.pt`` (resume state, written atomically after every epoch). The fold is part
of the run: it is stored, a resume continues it, and a resume with another ``--fold`` or another
dataset is refused. Randomness is derived from (seed, stage, epoch), so a run resumed from
``last.pt`` continues exactly as an uninterrupted one would on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ich3d import __version__
from ich3d.atomic import write_json_atomic
from ich3d.checkpoint import load_checkpoint
from ich3d.config import Config, load_config, save_config
from ich3d.constants import LABELS, RSNA_SLICE_SPACING_MM
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.index import index_fingerprint, load_index
from ich3d.errors import ConfigError
from ich3d.folders import FolderLock, prepare_output
from ich3d.layout import RunFolder
from ich3d.metrics import evaluate, prior_predictions
from ich3d.models.model import check_model_config
from ich3d.runtime import Runtime, barrier, setup_runtime, teardown_runtime
from ich3d.training.engine import FoldData, StageContext, run_stage, save_resume_state
from ich3d.training.splits import load_splits, make_folds, save_splits, split_series
from ich3d.training.stages import STAGES

log = logging.getLogger(__name__)


def fit(dataset: Path, out: Path, config: Config | str | Path | None = None, overrides: list[str] | None = None,
        fold: int | None = None, resume: bool = False, device: str | None = None,
        report: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Trains the configured stages on one fold of a built dataset.

    Args:
        dataset: a folder written by ``ich3d build-series`` (with labels).
        out: the run folder (created; must not hold another run unless ``resume``).
        config: a :class:`Config`, a YAML path or packaged name; with ``resume`` None means the run's own.
        overrides: ``key=value`` strings applied on top of the config.
        fold: the validation fold (default 0); with ``resume``, None continues the run's fold and
            another fold is an error.
        resume: continue the run in ``out`` from its ``last.pt``.
        device: "cpu", "cuda", ... or None for automatic.
        report: called on the main process with each epoch's record (for progress tables).
        progress: show per-step progress bars.

    Returns:
        The saved model's ``fold``, ``stage``, ``epoch`` and validation ``metrics``.

    Raises:
        ConfigError: a bad config, a run folder that does not match the request.
        InputError: an unusable dataset or output folder.
    """
    run = RunFolder(Path(out))
    config = _resolve_config(run, config, overrides, resume)
    dataset = Path(dataset)
    fold = _check_run(run, dataset, fold, resume)
    runtime = setup_runtime(device, config.amp)
    try:
        if runtime.is_main:
            prepare_output(run.root, "--out")
        with FolderLock(run.lock, f"run folder {run.root}") if runtime.is_main else contextlib.nullcontext():
            ctx = _prepare(dataset, run, config, fold, resume, runtime, report or (lambda record: None), progress)
            state = load_checkpoint(ctx.folder.last) if resume else None
            ctx.completed.extend(state["completed"] if state else [])
            for name in config.stages.names():
                if name in ctx.completed:
                    continue
                run_stage(STAGES[name](ctx), ctx, state if state and state.get("stage") == name else None)
                ctx.completed.append(name)
                save_resume_state(ctx, {"stage": None})
                state = None
            return _final_record(ctx)
    finally:
        teardown_runtime()


def _resolve_config(run: RunFolder, config: Config | str | Path | None, overrides: list[str] | None,
                    resume: bool) -> Config:
    if resume and config is None:
        if not run.config.is_file():
            raise ConfigError(f"--resume: {run.root} holds no {run.config.name}: is it a run folder of `ich3d train`?")
        config = run.config
    resolved = config if isinstance(config, Config) else load_config(config, overrides)
    check_model_config(resolved.to_dict()["model"])  # an unknown encoder fails now, not after files are written
    if resume and run.config.is_file() and load_config(run.config).to_dict() != resolved.to_dict():
        raise ConfigError(f"--resume: the config differs from the one saved in {run.config}; "
                          f"resume without --config/--set")
    return resolved


def _check_run(run: RunFolder, dataset: Path, fold: int | None, resume: bool) -> int:
    """The fold to train; checks the run folder against the request before anything is written.

    Raises:
        ConfigError: a new run into a folder holding one, or a resume that does not match the run
            (version, fold, dataset).
    """
    fingerprint = index_fingerprint(dataset)  # also checks that the dataset is one
    if not resume:
        if run.info.exists() or run.folds_present():
            raise ConfigError(f"{run.root} already holds a training run: pass --resume to continue it, "
                              f"or choose a new --out")
        return 0 if fold is None else fold
    if not run.info.is_file():
        raise ConfigError(f"--resume: {run.root} holds no {run.info.name}: nothing to resume (start without --resume)")
    info = json.loads(run.info.read_text())
    version = info.get("ich3d_version")
    if version is None or version.split(".")[:2] != __version__.split(".")[:2]:
        raise ConfigError(f"{run.root} was written by ich3d {version}, this is {__version__}: train into a new --out")
    if fold is not None and fold != info["fold"]:
        raise ConfigError(f"--resume: {run.root} trains fold {info['fold']}, not --fold {fold}; resume without "
                          f"--fold, or train fold {fold} into a new --out")
    if info.get("dataset_fingerprint") != fingerprint:
        raise ConfigError(f"--resume: {run.root} was trained on {info.get('dataset')} (index {info.get('dataset_fingerprint')}), "
                          f"--dataset {dataset} is another (index {fingerprint}); resume with the run's dataset")
    if not run.fold(info["fold"]).last.is_file():
        raise ConfigError(f"--resume: no {run.fold(info['fold']).last}: nothing to resume (start without --resume)")
    return int(info["fold"])


def _prepare(dataset: Path, run: RunFolder, config: Config, fold: int, resume: bool, runtime: Runtime,
             report: Callable, progress: bool) -> StageContext:
    """Writes config, splits and run.json (new runs) and builds the fold's tables."""
    slices, series = load_index(dataset)
    series = series[series["build_cache"]]  # the labeled series of a clinical export that have a cache
    fold_of = load_splits(run.splits) if resume else make_folds(series, config.folds, config.seed)
    train_uids, valid_uids = split_series(fold_of, fold)
    train, valid = build_table(dataset, slices, train_uids), build_table(dataset, slices, valid_uids)
    prevalence = train.labels[train.labeled_readable()].mean(axis=0)
    folder = run.fold(fold)
    if runtime.is_main and not resume:
        prepare_output(folder.root, "--out")
        save_config(config, run.config)
        save_splits(run.splits, fold_of, series, config.seed)
        info = {"ich3d_version": __version__, "dataset": str(dataset.resolve()),
                "dataset_fingerprint": index_fingerprint(dataset), "fold": fold,
                "train_series": len(train_uids), "valid_series": len(valid_uids),
                "prevalence": dict(zip(LABELS, prevalence.tolist())), "prior_valid": _prior_metrics(valid, prevalence)}
        write_json_atomic(run.info, info)
    barrier(runtime)
    log.info("fold %d: %d training series (%d slices), %d validation series", fold, len(train_uids),
             int(train.labeled_readable().sum()), len(valid_uids))
    spacing = float(series.set_index("series_uid").loc[train_uids, "slice_spacing"].median())
    data = FoldData(fold, train, valid, prevalence, spacing if np.isfinite(spacing) else RSNA_SLICE_SPACING_MM)
    return StageContext(config, runtime, data, folder, report, progress)


def _prior_metrics(valid: SeriesTable, prevalence: np.ndarray) -> dict[str, Any]:
    """Validation metrics of the prevalence prior: the baseline every model must beat."""
    usable = valid.labeled_readable()
    series_ids = valid.series_uids[valid.series_of_slice()][usable]
    return evaluate(valid.labels[usable], prior_predictions(prevalence, int(usable.sum())), series_ids=series_ids)


def _final_record(ctx: StageContext) -> dict[str, Any]:
    checkpoint = load_checkpoint(ctx.folder.model)
    return {"fold": checkpoint["fold"], "stage": checkpoint["stage"], "epoch": checkpoint["epoch"],
            "metrics": checkpoint["metrics"]}
