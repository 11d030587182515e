"""The model card of a run: what the model was trained on, how, how well, and what it is (not) for.

``ich3d train`` writes ``model_card.md`` and the same facts as ``model_card.json`` into the run folder
after the last fold is calibrated (docs/design.md §4); ``ich3d export`` copies both, ``ich3d report``
shows the card. Every fact is read back from the run folder (``run.json``, ``config.yaml``, every
fold's ``model.pt``) and the dataset's index, so the card of an older run can be written again with
:func:`write_model_card`.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ich3d import __version__
from ich3d.atomic import write_json_atomic, write_text_atomic
from ich3d.checkpoint import load_checkpoint
from ich3d.config import load_config
from ich3d.constants import LABELS
from ich3d.layout import RunFolder, SynthFolder

INTENDED_USE = ("Research on intracranial hemorrhage detection: per-image and per-exam probabilities of "
                "six labels on adult non-contrast head CT of the kind it was trained on. Not a medical device; "
                "not for diagnosis, triage or any decision about a patient.")
LIMITATIONS = (
    "Trained and measured only on the data named here; other scanners, protocols, reconstruction kernels, "
    "slice thicknesses, children, contrast-enhanced or post-operative scans are out of its scope.",
    "Metrics come from held-out folds of the same data (patients not mixed between folds), not from an "
    "external test set; small folds make them uncertain.",
    "Calibration and operating thresholds were fitted on the same held-out predictions they are reported on.",
    "Labels are per image as given by the training labels; it does not localise or measure bleeds "
    "(Grad-CAM maps are explanations, not segmentations).",
)
_PACKAGES = ("torch", "monai", "timm", "onnx", "onnxruntime", "pydicom", "numpy")


def model_card_facts(run: Path) -> dict[str, Any]:
    """The facts of the card of a trained run folder (plain JSON data).

    Raises:
        InputError: a fold without a readable ``model.pt``.
    """
    folder = RunFolder(Path(run))
    info = json.loads(folder.info.read_text())
    config = load_config(folder.config).to_dict()
    folds = [_fold_facts(folder, int(k)) for k in info["folds"]]
    calibration = folds[0].pop("calibration_report") or {}
    for fold in folds[1:]:
        fold.pop("calibration_report")
    synthetic = _synthetic(Path(info["dataset"]))
    return {
        "ich3d_version": __version__, "model": config["model"],
        "data": {"dataset": info["dataset"], "fingerprint": info.get("dataset_fingerprint"), "synthetic": synthetic,
                 **_dataset_counts(Path(info["dataset"])), "per_fold": info.get("per_fold", {})},
        "recipe": {"mode": info.get("mode"), "folds": info["folds"], "n_folds": config["folds"],
                   "seed": config["seed"], "input": config["data"],
                   "stages": {name: {"epochs": stage["epochs"], "batch_size": stage["batch_size"], "lr": stage["lr"]}
                              for name, stage in config["stages"].items() if stage}},
        "metrics": {"per_fold": {str(f["fold"]): f["metrics"] for f in folds},
                    "held_out": calibration.get("fitted_on"),
                    "before_calibration": calibration.get("before"), "after_calibration": calibration.get("after")},
        "calibration": {key: calibration.get(key) for key in ("fitted_on", "a", "b", "fitted")},
        "operating_points": folds[0]["operating_points"],
        "versions": {"python": platform.python_version(), **_versions()},
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS) + (["Trained on synthetic phantoms: its figures say nothing about real "
                                             "patients."] if synthetic else []),
    }


def write_model_card(run: Path) -> dict[str, Any]:
    """Writes ``model_card.md`` and ``model_card.json`` into the run folder (atomically); returns the facts."""
    folder = RunFolder(Path(run))
    facts = model_card_facts(folder.root)
    write_json_atomic(folder.model_card_json, facts)
    write_text_atomic(folder.model_card, render_model_card(facts))
    return facts


def _fold_facts(folder: RunFolder, fold: int) -> dict[str, Any]:
    checkpoint = load_checkpoint(folder.fold(fold).model)
    return {"fold": fold, "metrics": {"stage": checkpoint.get("stage"), "epoch": checkpoint.get("epoch"),
                                      **(checkpoint.get("metrics") or {})},
            "calibration_report": checkpoint.get("calibration_report"),
            "operating_points": checkpoint.get("operating_points")}


def _dataset_counts(dataset: Path) -> dict[str, Any]:
    """Series, images and label prevalence of the labelled images the run could train on."""
    from ich3d.dataset.index import load_index

    try:
        slices, series = load_index(dataset)
    except Exception as exc:  # noqa: BLE001 - a moved dataset leaves the card without counts, not the run without a card
        return {"counts": f"dataset not readable when the card was written: {type(exc).__name__}"}
    columns = [f"label_{name}" for name in LABELS]
    labels = slices[columns].to_numpy(dtype=np.float64)
    labelled = ~np.isnan(labels).any(axis=1)
    prevalence = labels[labelled].mean(axis=0) if labelled.any() else np.full(len(LABELS), np.nan)
    return {"n_series": int(len(series)), "n_images": int(len(slices)), "n_labelled_images": int(labelled.sum()),
            "prevalence": {name: round(float(value), 5) for name, value in zip(LABELS, prevalence)}}


def _synthetic(dataset: Path) -> bool:
    """Whether the dataset was built from ``ich3d synth`` output (its ``synth.json`` beside the DICOM folder)."""
    from ich3d.layout import DatasetFolder

    summary = DatasetFolder(dataset).build_summary()
    if not summary.is_file():
        return False
    inputs = json.loads(summary.read_text()).get("inputs") or []
    return any(SynthFolder(Path(p)).summary.is_file() or SynthFolder(Path(p).parent).summary.is_file()
               for p in inputs)


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_rows(metrics: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = ["| | weighted log loss | AUC any | series AUC any | images |", "|---|---|---|---|---|"]
    for name, m in metrics.items():
        if m:
            rows.append(f"| {name} | {_number(m.get('weighted_log_loss'))} | {_number((m.get('auc') or {}).get('any'))} "
                        f"| {_number(m.get('series_auc_any'))} | {_number(m.get('n_images'))} |")
    return rows


def _operating_rows(points: dict[str, Any] | None) -> list[str]:
    if not points:
        return ["No operating thresholds in this run (exam flags use the default probability)."]
    rows = [f"Fitted on: {points.get('fitted_on')}.", "", "| label | threshold | sensitivity | specificity |",
            "|---|---|---|---|"]
    for j, name in enumerate(LABELS):
        fitted = points["sensitivity"][j] is not None
        rows.append(f"| {name} | {_number(points['threshold'][j])}{'' if fitted else ' (default: too few positives)'} "
                    f"| {_number(points['sensitivity'][j])} | {_number(points['specificity'][j])} |")
    return rows


def render_model_card(facts: dict[str, Any]) -> str:
    """``model_card.md`` from :func:`model_card_facts`."""
    data, recipe, metrics = facts["data"], facts["recipe"], facts["metrics"]
    encoder, data_in = facts["model"]["encoder"], recipe["input"]
    prevalence = ", ".join(f"{k} {v:.3f}" for k, v in (data.get("prevalence") or {}).items())
    stages = "; ".join(f"{name}: {s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']:g}"
                       for name, s in recipe["stages"].items())
    per_fold = {f"fold {k}" + (f" ({m.get('stage')}, epoch {m.get('epoch')})" if m else ""): m
                for k, m in metrics["per_fold"].items()}
    lines = [
        "# Model card", "",
        f"ich3d {facts['ich3d_version']}: {encoder['name']} encoder"
        + (f" (weights from {encoder['weights']})" if encoder.get("weights") else "")
        + f", {facts['model']['head']['name']} head over each series, six labels ({', '.join(LABELS)}).", "",
        "## Intended use", "", facts["intended_use"], "",
        "## Data", "",
        f"- Dataset: {data['dataset']} (index fingerprint {data.get('fingerprint')})"
        + (" — **synthetic**" if data["synthetic"] else ""),
        f"- {data.get('n_series', '?')} series, {data.get('n_images', '?')} images "
        f"({data.get('n_labelled_images', '?')} labelled); label prevalence: {prevalence or 'n/a'}", "",
        "## Recipe", "",
        f"- {recipe['mode']} training, folds {recipe['folds']} of {recipe['n_folds']}, seed {recipe['seed']}",
        f"- Input: {data_in['image_size']} px, {data_in['input']}"
        + (f" (context {data_in['context']})" if data_in["input"] == "bsb25d" else "") + f", crop {data_in['crop']}",
        f"- Stages: {stages}", "",
        "## Metrics", "", f"Held out: {metrics.get('held_out') or 'n/a'}.", "",
        *_metrics_rows(per_fold | {"held out, before calibration": metrics.get("before_calibration"),
                                   "held out, after calibration": metrics.get("after_calibration")}), "",
        "## Operating thresholds", "", *_operating_rows(facts.get("operating_points")), "",
        "## Limitations", "", *[f"- {item}" for item in facts["limitations"]], "",
        "## Versions", "", ", ".join(f"{k} {v}" for k, v in facts["versions"].items()), "",
    ]
    return "\n".join(lines)
