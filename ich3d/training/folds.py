"""Training the folds of a run: one fold, or every fold with an out-of-fold sequence stage; then calibration.

One fold (``--fold K``) runs the configured stages in order and calibrates on its validation fold.

Every fold (``--folds all``) follows the recipe of the strong RSNA 2019 solutions, in phases, each
resumable fold by fold:

1. the slice stage of every fold (each encoder sees the other folds' series);
2. every fold's validation series embedded by that fold's encoder — the encoder that never saw them;
3. the sequence (and finetune) stages of every fold, the sequence head of fold k learning from the
   training series' *out-of-fold* features (each from the encoder that held it out), so it learns
   from features as unseen data give them, not from the optimistic ones of slices the encoder was
   trained on (with ``model.features: logits`` every encoder's features share one space);
4. one per-label calibration fitted on the pooled out-of-fold predictions of the fold models,
   written into every fold's ``model.pt``.

At inference the fold models are the members of an ensemble (docs/design.md §4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ich3d.data.tables import SeriesTable
from ich3d.inference.exams import smoothed_maximum
from ich3d.inference.predictor import Predictor
from ich3d.metrics import evaluate
from ich3d.models.calibration import apply_calibration, fit_calibration
from ich3d.models.io import load_trained, read_calibration_report, store_fitted
from ich3d.models.operating import OperatingPoints, fit_operating_points
from ich3d.runtime import barrier, gather_objects
from ich3d.training.engine import StageContext, run_stage, save_resume_state
from ich3d.training.stages import STAGES, embed_validation, stage_runtime

CALIBRATION = "calibration"


def _run_stages(ctx: StageContext, names: list[str], state: dict[str, Any] | None) -> None:
    """Runs the stages of ``names`` that the fold has not finished, resuming from ``state``."""
    for name in names:
        if name in ctx.completed:
            continue
        run_stage(STAGES[name](ctx), ctx, state if state and state.get("stage") == name else None)
        ctx.completed.append(name)
        save_resume_state(ctx, {"stage": None})
        state = None


def train_folds(contexts: list[StageContext], states: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Trains and calibrates ``contexts`` (one fold, or every fold out of fold; module docstring).

    Args:
        contexts: one :class:`StageContext` per fold, their ``completed`` stages restored.
        states: each fold's resume state (``last.pt``), or None.

    Returns:
        The calibration report (also stored in every fold's model): what it was fitted on and the
        metrics of those predictions before and after.
    """
    names = contexts[0].config.stages.names()
    if len(contexts) == 1:
        _run_stages(contexts[0], names, states[0])
    else:
        for ctx, state in zip(contexts, states):
            _run_stages(ctx, names[:1], state)
        for ctx in contexts:
            embed_validation(ctx)
        for k, (ctx, state) in enumerate(zip(contexts, states)):
            ctx.other_folds = {other.data.fold: (other.data.valid, other.folder) for other in contexts if other is not ctx}
            _run_stages(ctx, names[1:], state if state and state.get("stage") in names[1:] else None)
    return calibrate(contexts)


def _held_out_predictions(ctx: StageContext) -> tuple[np.ndarray, SeriesTable]:
    """The fold model's probabilities of its validation series, with the inference TTA (each rank a share)."""
    runtime, valid = ctx.runtime, ctx.data.valid
    predictor = Predictor([load_trained(ctx.folder.model, runtime.device)], runtime, stage_runtime(ctx))
    mine = np.arange(runtime.rank, len(valid.series_uids), runtime.world_size)
    parts = gather_objects(predictor.predict_member(0, valid, mine), runtime)
    probs = parts[0]
    for part in parts[1:]:
        probs = np.where(np.isnan(probs), part, probs)
    return probs, valid


def calibrate(contexts: list[StageContext]) -> dict[str, Any]:
    """Fits one calibration on the folds' held-out predictions and stores it in every fold's model.

    Already calibrated folds (``calibration`` in their completed steps) are not fitted again.
    """
    if all(CALIBRATION in ctx.completed for ctx in contexts):
        return read_calibration_report(contexts[0].folder.model)
    held_out = [_held_out_predictions(ctx) for ctx in contexts]
    probs, labels, series = [], [], []
    for p, valid in held_out:
        usable = valid.labeled_readable()
        probs.append(p[usable])
        labels.append(valid.labels[usable])
        series.append(valid.series_uids[valid.series_of_slice()][usable])
    probs, labels, series = np.concatenate(probs), np.concatenate(labels), np.concatenate(series)
    calibration = fit_calibration(probs, labels, series)
    fitted_on = (f"validation fold {contexts[0].data.fold}" if len(contexts) == 1 else
                 f"out-of-fold predictions of folds {[ctx.data.fold for ctx in contexts]}")
    operating = _operating_points(held_out, calibration, fitted_on)
    report = {"fitted_on": fitted_on, "n_slices": len(probs), "before": evaluate(labels, probs, series),
              "after": evaluate(labels, apply_calibration(probs, calibration), series), **calibration,
              "operating_points": operating.by_label()}
    for ctx in contexts:
        if ctx.runtime.is_main:
            store_fitted(ctx.folder.model, calibration, report, operating)
        barrier(ctx.runtime)
        ctx.completed.append(CALIBRATION)
        save_resume_state(ctx, {"stage": None})
    return report


def _operating_points(held_out: list[tuple[np.ndarray, SeriesTable]], calibration: dict[str, Any],
                      fitted_on: str) -> OperatingPoints:
    """Per-label thresholds reaching the target sensitivities on the held-out series, scored as exams are
    (the smoothed maximum of the calibrated slice probabilities, :mod:`ich3d.inference.exams`); a series'
    truth is the maximum of its labeled slices' labels."""
    scores, truth = [], []
    for probs, valid in held_out:
        for s in range(len(valid.series_uids)):
            rows = slice(valid.offsets[s], valid.offsets[s + 1])
            labels = valid.labels[rows]
            if rows.stop == rows.start or np.isnan(labels).all():
                continue
            scores.append(smoothed_maximum(apply_calibration(probs[rows], calibration)))
            truth.append(np.fmax.reduce(labels, axis=0))  # NaN where the whole series is unlabeled
    if not scores:
        return fit_operating_points(np.zeros((0, 6)), np.zeros((0, 6)), fitted_on)
    return fit_operating_points(np.stack(scores), np.stack(truth), f"{len(scores)} series of the {fitted_on}")
