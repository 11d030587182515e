"""`ich3d train`: staged training (slice → sequence → finetune), resumable, DDP-ready.

A run folder holds everything: ``config.yaml``, ``run.json``, ``splits.json``, ``metrics.jsonl``,
``encoder.pt`` (after the slice stage), ``model.pt`` (the final model) and ``last.pt`` (resume
state, written atomically after every epoch). Randomness is derived from (seed, stage, epoch), so a
run resumed from ``last.pt`` continues exactly as an uninterrupted one would on the CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ich3d import __version__
from ich3d.training import stages
from ich3d.dataset.build import load_index
from ich3d.checkpoint import load_checkpoint
from ich3d.config import Config, load_config, save_config
from ich3d.constants import LABELS, LAST_CHECKPOINT, MODEL_CHECKPOINT, RUN_CONFIG_FILE, RUN_SPLITS_FILE
from ich3d.data.tables import SeriesTable, build_table
from ich3d.training.engine import RunContext, save_last
from ich3d.errors import ConfigError
from ich3d.metrics import evaluate
from ich3d.runtime import Runtime, barrier, setup_runtime, teardown_runtime
from ich3d.training.splits import load_splits, make_folds, save_splits, split_series

log = logging.getLogger(__name__)
RUN_INFO_FILE = "run.json"

STAGES: dict[str, Callable[[RunContext, dict[str, Any] | None], dict[str, Any]]] = {
    "slice": stages.slice_stage,
    "sequence": stages.sequence_stage,
    "finetune": stages.finetune_stage,
}


def fit(dataset: Path, out: Path, config: Config | str | Path | None = None, overrides: list[str] | None = None,
        fold: int = 0, resume: bool = False, device: str | None = None,
        report: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Trains the configured stages on one fold of a built dataset.

    Args:
        dataset: a folder written by ``ich3d build-series`` (with labels).
        out: the run folder (created; must not hold another run unless ``resume``).
        config: a :class:`Config`, a YAML path or packaged name; with ``resume`` None means the run's own.
        overrides: ``key=value`` strings applied on top of the config.
        fold: the validation fold.
        resume: continue the run in ``out`` from ``last.pt``.
        device: "cpu", "cuda", ... or None for automatic.
        report: called on the main process with each epoch's record (for progress tables).
        progress: show per-step progress bars of the slice and finetune stages.

    Returns:
        The saved model's ``stage``, ``epoch`` and validation ``metrics``.
    """
    config = _resolve_config(out, config, overrides, resume)
    runtime = setup_runtime(device, config.amp)
    try:
        ctx = _prepare(Path(dataset), Path(out), config, fold, resume, runtime, report or (lambda record: None))
        ctx.progress = progress
        state = load_checkpoint(ctx.out / LAST_CHECKPOINT) if resume else None
        ctx.completed.extend(state["completed"] if state else [])
        for name in config.stage_names():
            if name in ctx.completed:
                continue
            STAGES[name](ctx, state if state and state.get("stage") == name else None)
            ctx.completed.append(name)
            save_last(ctx, {"stage": None})
            state = None
        return _final_record(ctx)
    finally:
        teardown_runtime()


def _resolve_config(out: Path, config: Config | str | Path | None, overrides: list[str] | None, resume: bool) -> Config:
    saved = Path(out) / RUN_CONFIG_FILE
    if resume and config is None:
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no {RUN_CONFIG_FILE}: is it a run folder of `ich3d train`?")
        config = saved
    resolved = config if isinstance(config, Config) else load_config(config, overrides)
    if resume and saved.is_file() and load_config(saved).to_dict() != resolved.to_dict():
        raise ConfigError(f"--resume: the config differs from the one saved in {saved}; resume without --config/--set")
    return resolved


def _prepare(dataset: Path, out: Path, config: Config, fold: int, resume: bool, runtime: Runtime,
             report: Callable) -> RunContext:
    """Checks the run folder, writes config/splits, and builds the fold's tables."""
    _check_run_folder(out, resume)
    slices, series = load_index(dataset)
    splits_path = out / RUN_SPLITS_FILE
    fold_of = load_splits(splits_path) if resume and splits_path.is_file() else make_folds(series, config.folds, config.seed)
    train_uids, valid_uids = split_series(fold_of, fold)
    train, valid = build_table(dataset, slices, train_uids), build_table(dataset, slices, valid_uids)
    prevalence = train.labels[train.labeled_readable()].mean(axis=0)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / RUN_CONFIG_FILE)
        save_splits(splits_path, fold_of, series, config.seed)
        info = {"ich3d_version": __version__, "dataset": str(dataset.resolve()), "fold": fold,
                "train_series": len(train_uids), "valid_series": len(valid_uids),
                "prevalence": dict(zip(LABELS, prevalence.tolist())), "prior_valid": _prior_metrics(valid, prevalence)}
        (out / RUN_INFO_FILE).write_text(json.dumps(info, indent=1))
    barrier(runtime)
    log.info("fold %d: %d training series (%d slices), %d validation series", fold, len(train_uids),
             int(train.labeled_readable().sum()), len(valid_uids))
    return RunContext(config, out, runtime, fold, train, valid, prevalence, report)


def _prior_metrics(valid: SeriesTable, prevalence: np.ndarray) -> dict[str, Any]:
    """Validation metrics of the prevalence prior: the baseline every model must beat."""
    usable = valid.labeled_readable()
    series_ids = valid.series_uids[valid.series_of_slice()][usable]
    return evaluate(valid.labels[usable], np.tile(prevalence, (int(usable.sum()), 1)), series_ids=series_ids)


def _check_run_folder(out: Path, resume: bool) -> None:
    info = out / RUN_INFO_FILE
    if resume:
        if not (out / LAST_CHECKPOINT).is_file():
            raise ConfigError(f"--resume: no {LAST_CHECKPOINT} in {out}: nothing to resume (start without --resume)")
        version = json.loads(info.read_text()).get("ich3d_version") if info.is_file() else None
        if version is None or version.split(".")[:2] != __version__.split(".")[:2]:
            raise ConfigError(f"{out} was written by ich3d {version}, this is {__version__}: train into a new --out")
    elif (out / LAST_CHECKPOINT).exists():
        raise ConfigError(f"{out} already holds a training run: pass --resume to continue it, or choose a new --out")


def _final_record(ctx: RunContext) -> dict[str, Any]:
    checkpoint = load_checkpoint(ctx.out / MODEL_CHECKPOINT)
    return {"stage": checkpoint["stage"], "epoch": checkpoint["epoch"], "metrics": checkpoint["metrics"]}
