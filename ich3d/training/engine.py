"""The training engine shared by all stages: run context, epoch loop, validation, checkpoints."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.config import Config, StageConfig
from ich3d.constants import LABELS, LAST_CHECKPOINT, RUN_METRICS_FILE
from ich3d.data.tables import SeriesTable
from ich3d.metrics import evaluate
from ich3d.models.model import IchModel, build_model
from ich3d.progress import progress_bar
from ich3d.runtime import Runtime, barrier, derive_seed, gather_objects, seed_everything


@dataclass
class RunContext:
    """What every stage needs: the config, the run folder, the device and the fold's tables."""

    config: Config
    out: Path
    runtime: Runtime
    fold: int
    train: SeriesTable
    valid: SeriesTable
    prevalence: np.ndarray  # (6,) training-slice label means
    report: Callable[[dict[str, Any]], None]
    progress: bool = False  # per-step progress bars (main process only)
    completed: list[str] = field(default_factory=list)  # finished stages, in order

    def step_bar(self, description: str, total: int) -> Any:
        """A progress bar over an epoch's steps; yields ``advance(n)`` (no-op when disabled)."""
        return progress_bar(self.progress and self.runtime.is_main, description, total)


def model_spec(config: Config, head: str | None = None) -> dict[str, Any]:
    """The plain-dict model description given to :func:`build_model` (and stored in checkpoints)."""
    spec = config.to_dict()["model"]
    if head is not None:
        spec["head"]["name"] = head
    return spec


def save_last(ctx: RunContext, payload: dict[str, Any]) -> None:
    """Writes the resume state ``last.pt`` (main process), with the finished stages and the config."""
    if ctx.runtime.is_main:
        save_checkpoint(ctx.out / LAST_CHECKPOINT, {**payload, "completed": list(ctx.completed),
                                                     "config": ctx.config.to_dict()})
    barrier(ctx.runtime)


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup, then cosine decay to 0 at ``total_steps``."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def wrap_ddp(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running under torchrun; else the module."""
    if runtime.world_size == 1:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def validate(ctx: RunContext, predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Validation metrics of per-slice probabilities, each rank predicting a share of the series.

    Args:
        predict: maps (K,) series positions of ``ctx.valid`` to (n_slices, 6) probabilities (NaN elsewhere).
    """
    runtime = ctx.runtime
    mine = np.arange(runtime.rank, len(ctx.valid.series_uids), runtime.world_size)
    parts = gather_objects(predict(mine), runtime)
    probs = parts[0]
    for part in parts[1:]:
        probs = np.where(np.isnan(probs), part, probs)
    usable = ctx.valid.labeled_readable()
    series_ids = ctx.valid.series_uids[ctx.valid.series_of_slice()][usable]
    return evaluate(ctx.valid.labels[usable], probs[usable], series_ids=series_ids)


def run_epochs(ctx: RunContext, name: str, model: IchModel, cfg: StageConfig, steps_per_epoch: int,
               train_epoch: Callable[..., float], predict: Callable[[np.ndarray], np.ndarray],
               state: dict[str, Any] | None) -> dict[str, Any]:
    """The epoch loop shared by all stages: optimise, validate, keep the best, checkpoint.

    Args:
        train_epoch: ``(epoch, rng, generator, optimizer, scheduler) -> mean training loss``.
        predict: validation predictor (see :func:`validate`).
        state: this stage's resume state from ``last.pt``, or None.

    Returns:
        The best epoch's record; ``model`` holds the best weights on return.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_fraction))
    best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "state": None, "record": None}
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best, start = state["best"], state["epoch"] + 1
    seed = ctx.config.seed
    for epoch in range(start, cfg.epochs):
        generator = seed_everything(derive_seed(seed, name, epoch, ctx.runtime.rank))
        rng = np.random.default_rng(derive_seed(seed, name, epoch))
        began = time.perf_counter()
        train_loss = train_epoch(epoch, rng, generator, optimizer, scheduler)
        metrics = validate(ctx, predict)
        record = {"stage": name, "epoch": epoch, "train_loss": train_loss, "valid": metrics,
                  "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - began, 2)}
        if metrics["weighted_log_loss"] < best["loss"]:
            best = {"loss": metrics["weighted_log_loss"], "epoch": epoch, "state": copy.deepcopy(model.state_dict()),
                    "record": record}
        save_last(ctx, {"stage": name, "epoch": epoch, "model": model.state_dict(), "best": best,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
        _log_epoch(ctx, record)
    model.load_state_dict(best["state"])
    return best["record"]


def _log_epoch(ctx: RunContext, record: dict[str, Any]) -> None:
    if not ctx.runtime.is_main:
        return
    with open(ctx.out / RUN_METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    ctx.report(record)


def save_model(ctx: RunContext, path: Path, model: IchModel, spec: dict[str, Any], record: dict[str, Any]) -> None:
    """Writes a self-contained checkpoint: weights, model spec, config, labels, prevalence, metrics."""
    if ctx.runtime.is_main:
        save_checkpoint(path, {
            "model": spec, "state_dict": model.state_dict(), "config": ctx.config.to_dict(),
            "in_channels": ctx.config.data.in_channels, "image_size": ctx.config.data.image_size,
            "labels": list(LABELS), "prevalence": ctx.prevalence.tolist(), "fold": ctx.fold,
            "stage": record["stage"], "epoch": record["epoch"], "metrics": record["valid"],
        })
    barrier(ctx.runtime)


def load_model(path: Path, device: torch.device) -> tuple[IchModel, dict[str, Any]]:
    """Rebuilds the model of a checkpoint written by :func:`save_model` (weights_only loading)."""
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint["model"], checkpoint["in_channels"], load_weights=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), checkpoint


