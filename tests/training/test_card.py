"""The model card: written by train with the run's facts (data, recipe, metrics, calibration, versions,
intended use), as Markdown and JSON, and rewritable from the run folder alone."""

from __future__ import annotations

import json
from pathlib import Path

from ich3d.checkpoint import load_checkpoint
from ich3d.layout import RunFolder
from ich3d.training.card import INTENDED_USE, model_card_facts, render_model_card


def test_train_writes_a_model_card_with_the_runs_facts(trained_run: Path) -> None:
    folder = RunFolder(trained_run)
    facts = json.loads(folder.model_card_json.read_text())
    info = json.loads(folder.info.read_text())
    checkpoint = load_checkpoint(folder.fold(0).model)
    assert facts["data"]["fingerprint"] == info["dataset_fingerprint"] and facts["data"]["synthetic"] is True
    assert facts["data"]["n_series"] >= 6 and facts["data"]["n_images"] > facts["data"]["n_series"]
    assert set(facts["data"]["prevalence"]) == {"any", "epidural", "intraparenchymal", "intraventricular",
                                                 "subarachnoid", "subdural"}
    assert facts["recipe"]["folds"] == [0] and facts["recipe"]["stages"]["slice"]["epochs"] == 2
    assert facts["metrics"]["per_fold"]["0"]["weighted_log_loss"] == checkpoint["metrics"]["weighted_log_loss"]
    report = checkpoint["calibration_report"]
    assert facts["metrics"]["before_calibration"] == report["before"]
    assert facts["metrics"]["after_calibration"] == report["after"]
    assert facts["calibration"]["a"] == report["a"] and facts["versions"]["torch"]
    assert facts["intended_use"] == INTENDED_USE and any("synthetic" in item for item in facts["limitations"])
    card = folder.model_card.read_text()
    for heading in ("## Intended use", "## Data", "## Recipe", "## Metrics", "## Operating thresholds",
                    "## Limitations", "## Versions"):
        assert heading in card
    assert "**synthetic**" in card and "adult non-contrast head CT" in card
    assert f"{report['after']['weighted_log_loss']:.4f}" in card
    # rewritable from the folder alone, same facts
    assert render_model_card(model_card_facts(trained_run)) == card
