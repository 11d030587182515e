"""The seams of training: a stage's step and validation as the engine runs them (training/engine.py,
training/stages.py), and the checkpoint a stage writes read back by inference's Predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING

from ich3d.config import load_config
from ich3d.data.tables import build_table
from ich3d.dataset.opened import Dataset
from ich3d.inference.predictor import Predictor
from ich3d.layout import RunFolder
from ich3d.models.io import load_trained
from ich3d.runtime import Runtime, derive_seed, seed_everything
from ich3d.training.engine import FoldData, Optimisation, StageContext, run_stage, train_step, validate
from ich3d.training.stages import STAGES, SequenceStage, SliceStage, stage_runtime

CONFIG = load_config("cpu_small", [*TINY_TRAINING, "stages.slice.epochs=1", "stages.slice.samples_per_epoch=32",
                                   "stages.sequence.epochs=1", "infer.tta_reverse=false"])


def context(dataset_path: Path, out: Path) -> StageContext:
    """Fold 0: every other series held out."""
    dataset = Dataset.open(dataset_path)
    uids = dataset.series.loc[dataset.series["build_cache"], "series_uid"].tolist()
    train = build_table(dataset.root, dataset.slices, uids[1::2])
    valid = build_table(dataset.root, dataset.slices, uids[::2])
    prevalence = np.nanmean(train.labels, axis=0)
    data = FoldData(0, train, valid, prevalence, 5.0)
    return StageContext(CONFIG, Runtime(torch.device("cpu")), data, RunFolder(out).fold(0))


@pytest.fixture(scope="module")
def trained_slice(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> StageContext:
    ctx = context(tiny_dataset, tmp_path_factory.mktemp("stages"))
    run_stage(SliceStage(ctx), ctx, None)
    return ctx


def test_the_stages_run_in_order() -> None:
    assert list(STAGES) == ["slice", "sequence", "finetune"]


def test_a_step_moves_only_the_trainable_parameters(trained_slice: StageContext) -> None:
    stage = SequenceStage(trained_slice)
    frozen = {k: v.clone() for k, v in stage.model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in stage.model.head.state_dict().items()}
    optimisation = Optimisation.of(stage, trained_slice.runtime)
    generator = seed_everything(derive_seed(0, "test"))
    stage.train_mode()
    batch = next(iter(stage.batches(0, np.random.default_rng(0), generator)))
    assert set(batch) == {"index", "mask", "view"} and batch["index"].shape == batch["mask"].shape
    loss = train_step(stage, batch, generator, optimisation)
    assert np.isfinite(loss) and loss > 0
    assert all(torch.equal(frozen[k], v) for k, v in stage.model.encoder.state_dict().items())
    assert any(not torch.equal(head[k], v) for k, v in stage.model.head.state_dict().items())


def test_validation_covers_every_valid_slice(trained_slice: StageContext) -> None:
    stage = SliceStage(trained_slice)
    metrics, probs = validate(stage, trained_slice.data.valid, trained_slice.runtime)
    assert probs.shape == (trained_slice.data.valid.n_slices, 6) and np.isfinite(probs).all()
    assert 0 < metrics["weighted_log_loss"] < 5


def test_the_saved_stage_model_predicts_as_it_validated(trained_slice: StageContext) -> None:
    ctx = trained_slice
    trained = load_trained(ctx.folder.encoder)
    assert (trained.fold, trained.stage, trained.slice_spacing) == (0, "slice", 5.0)
    np.testing.assert_allclose(trained.prevalence, ctx.data.prevalence)
    stage = SliceStage(ctx)
    stage.model.load_state_dict(trained.module.state_dict())
    from_training = stage.predict_valid(np.arange(len(ctx.data.valid.series_uids)))
    no_tta = type(trained.tta)(tta_flip=False, tta_reverse=False)
    member = type(trained)(**{**trained.__dict__, "tta": no_tta})
    from_inference = Predictor([member], ctx.runtime, stage_runtime(ctx)).predict_member(0, ctx.data.valid)
    np.testing.assert_array_equal(from_training, from_inference)
