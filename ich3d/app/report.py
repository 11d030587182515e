"""``ich3d report``: one self-contained HTML page of an inference output (docs/design.md §10).

The exam answer comes first. Sections, each present when its inputs are, in :data:`SECTIONS` order:
Exams (one row per study from ``exams.csv``, flagged studies first, key image and heat map), Summary
(scores with honest intervals against the prior, how images were predicted, every file that was
not), Series choice (study, series, role, read, why), Curves (ROC, precision-recall, reliability),
Series strips (series that were read, positives and highest risk first), Error gallery (with
Grad-CAM when a run is given), Training (metrics.jsonl, run.json, config), Build (build.json as
tables) and Model card (the run's ``model_card.md``). A section is a function ``(inputs, options) -> (id, title, html) | None``: a new one is a
function added to :data:`SECTIONS`. Figures are PNGs embedded as ``data:`` URIs; the page is written
from a ``string.Template`` with every value HTML-escaped; it holds no script.

Labels may cover all images, some (e.g. the read series only) or none: scores and curves use the
images that are labelled *and* predicted (skipped series have no probabilities); without labels the
page speaks of risk, never of false negatives.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d import __version__
from ich3d.app import report_exams as exam_markup
from ich3d.app import report_figures as figures
from ich3d.app import report_html as markup
from ich3d.app.report_strips import strips_section
from ich3d.atomic import atomic_write
from ich3d.constants import LABEL_COLUMNS, LABELS
from ich3d.data.windowing import bsb
from ich3d.dataset.opened import Dataset
from ich3d.dataset.labels import read_labels
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder, InferFolder, RunFolder
from ich3d.metrics import (
    MIN_PER_CLASS_FOR_AUC_CI,
    auc_interval_allowed,
    average_precision,
    bootstrap_auc,
    per_label_ece,
    per_label_log_loss,
    prior_predictions,
    series_auc_any,
    weighted_log_loss,
)

log = logging.getLogger(__name__)
PROBS = [f"p_{name}" for name in LABELS]
#: A series or slice counts as called positive at this probability of ``any``.
THRESHOLD = 0.5


@dataclass(frozen=True)
class ReportOptions:
    """What the page shows.

    Attributes:
        max_series: series strips at most (the most informative series, see :func:`pick_series`).
        max_exams: rows of the exam table at most (flagged first; every exam is in ``exams.csv``).
        heat_maps: exam rows (the first ones) with a Grad-CAM heat map of their key slice.
        gallery: false positives and false negatives each in the error gallery.
        n_boot: bootstrap resamples of the AUC confidence intervals (series resampled whole).
        device: where Grad-CAM runs ("cpu", "cuda", ... or None for the best available).
    """

    max_series: int = 24
    max_exams: int = 100
    heat_maps: int = 24
    gallery: int = 4
    n_boot: int = 1000
    device: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_series, self.max_exams, self.heat_maps, self.gallery) < 0 or self.n_boot < 1:
            raise InputError(f"--max-series {self.max_series}, --max-exams {self.max_exams}, heat maps "
                             f"{self.heat_maps} and --gallery {self.gallery} must be >= 0 (bootstrap resamples "
                             f"{self.n_boot} >= 1)")


@dataclass
class _Inputs:
    folder: InferFolder
    predictions: pd.DataFrame  # one row per image, PROBS columns
    truth: np.ndarray | None  # (n_images, 6), NaN = unlabeled
    prior: np.ndarray | None  # (6,)
    dataset: Dataset | None
    runs: list[Path]
    explainer: Any = None

    @property
    def scored(self) -> np.ndarray:
        """(n_images,) bool: labelled for at least one label and predicted (skipped images have no
        probabilities); all False without labels."""
        if self.truth is None:
            return np.zeros(len(self.predictions), dtype=bool)
        predicted = np.isfinite(self.predictions[PROBS].to_numpy(np.float64)).all(axis=1)
        return predicted & ~np.isnan(self.truth).all(axis=1)

    def explain(self, image_ids: list[str], options: ReportOptions) -> list[Any] | None:
        """Grad-CAM explanations of images (None without a run and a dataset)."""
        if not self.runs or self.dataset is None or not image_ids:
            return None
        if self.explainer is None:
            from ich3d.inference.explainer import Explainer

            self.explainer = Explainer.from_runs(self.runs, self.dataset, options.device)
        return self.explainer.explain(image_ids, labels=("any",))  # the page shows p(any)


def write_report(predictions: Path, out: Path | None = None, *, labels: Path | None = None,
                 runs: Sequence[Path] = (), dataset: Path | None = None,
                 options: ReportOptions = ReportOptions()) -> dict[str, Any]:
    """Writes the HTML report of an ``ich3d infer`` output folder.

    Args:
        predictions: the infer output folder (``predictions.parquet``, ``infer.json``, ``exams.csv``).
        out: the HTML file [default: ``predictions/report.html``].
        labels: RSNA long-format ground truth; without it, the dataset's index labels (if any) are used.
        runs: the run (folders, fold folders or checkpoints): training curves, config and Grad-CAM.
        dataset: the dataset holding the images [default: ``predictions/dataset`` when present].
        options: what to show.

    Returns:
        ``{"report": path, "sections": [ids], "seconds": float, "timings": {step: seconds}}`` (the
        steps: loading the inputs and each section's builder).

    Raises:
        InputError: no predictions in the folder, unreadable labels, dataset or run.
    """
    began = time.perf_counter()
    inputs = _load(Path(predictions), labels, list(map(Path, runs)), dataset)
    timings, sections = {"load": time.perf_counter() - began}, []
    for build in SECTIONS:
        start = time.perf_counter()
        section = build(inputs, options)
        timings[build.__name__.lstrip("_")] = time.perf_counter() - start
        sections += [section] if section is not None else []
    out = Path(out) if out is not None else inputs.folder.report
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as file:
        file.write(_page(inputs, sections).encode())
    seconds = time.perf_counter() - began
    log.info("wrote %s (%d sections) in %.1f s", out, len(sections), seconds)
    return {"report": str(out), "sections": [section[0] for section in sections], "seconds": seconds,
            "timings": timings}


def _load(folder_path: Path, labels: Path | None, runs: list[Path], dataset: Path | None) -> _Inputs:
    folder = InferFolder(folder_path)
    if not folder.predictions.is_file():
        raise InputError(f"{folder.root} holds no predictions.parquet: run `ich3d infer --out {folder.root}` first")
    predictions = pd.read_parquet(folder.predictions)
    if dataset is None and DatasetFolder(folder.dataset).slices.is_file():
        dataset = folder.dataset
    opened = Dataset.open(dataset) if dataset is not None else None
    index = opened.slices if opened is not None else None
    truth = None
    if labels is not None:
        table = read_labels(labels).labels
        truth = table.reindex(predictions["image_id"]).to_numpy(np.float64)
    elif index is not None and index[LABEL_COLUMNS[0]].notna().any():
        truth = index.set_index("image_id")[list(LABEL_COLUMNS)].reindex(predictions["image_id"]).to_numpy(np.float64)
    if index is not None and "study_uid" not in predictions:
        predictions = predictions.merge(index[["image_id", "study_uid"]].drop_duplicates("image_id"), on="image_id",
                                        how="left")
    return _Inputs(folder, predictions, truth, _prior(folder, runs), opened, runs)


def _prior(folder: InferFolder, runs: list[Path]) -> np.ndarray | None:
    """The training prevalence: from the inference parts' metadata, else from the run's run.json."""
    if folder.parts_meta.is_file():
        return np.asarray(json.loads(folder.parts_meta.read_text())["prior"], dtype=np.float64)
    for run in runs:
        if RunFolder(run).info.is_file():
            info = json.loads(RunFolder(run).info.read_text())
            prevalence = info.get("prevalence") or next(iter(info.get("per_fold", {}).values()), {}).get("prevalence")
            if prevalence:
                return np.array([prevalence[name] for name in LABELS], dtype=np.float64)
    return None


# --- sections: each returns (id, title, html) or None when its inputs are missing ---

Section = tuple[str, str, str]


def _summary(inputs: _Inputs, options: ReportOptions) -> Section:
    frame = inputs.predictions
    parts = []
    if inputs.truth is not None:
        parts.append(_score_table(inputs, options))
    how = frame.assign(reason=frame["reason"].fillna("") if "reason" in frame else "")
    counts = [[by, reason or "-", str(n)] for (by, reason), n in how.groupby(["predicted_by", "reason"]).size().items()]
    parts.append("<h3>How the images were predicted</h3>" + markup.table(["predicted by", "why", "images"], counts))
    failed = frame[frame["status"].fillna("missing") != "ok"]
    columns = [c for c in ("image_id", "path", "relative_path", "series_uid", "status", "error", "predicted_by")
               if c in failed]
    cells = [[markup.text(v) for v in row] for row in failed[columns].itertuples(index=False)]
    parts.append(f"<h3>Files not read as images ({len(failed)})</h3>"
                 + (markup.table(columns, cells) if cells else "<p>None: every file was read.</p>"))
    return "summary", "Summary", "\n".join(parts)


def _score_table(inputs: _Inputs, options: ReportOptions) -> str:
    """Per-label log loss (model and prior), ROC-AUC with its 95 % CI, AP and ECE over the images that are
    labelled and predicted; the weighted log loss and the series- and exam-level AUC of ``any`` above it."""
    scored = inputs.scored
    frame, truth = inputs.predictions[scored], inputs.truth[scored]
    if not len(frame):
        return "<p>No labelled image was predicted: nothing to score (the labels cover skipped series only).</p>"
    pred = frame[PROBS].to_numpy(np.float64)
    groups = frame["series_id"].fillna(frame["image_id"]).to_numpy()
    prior = prior_predictions(inputs.prior, len(pred)) if inputs.prior is not None else None
    loss, ece = per_label_log_loss(truth, pred), per_label_ece(truth, pred)
    prior_loss = per_label_log_loss(truth, prior) if prior is not None else {}
    num, rows = markup.num, []
    for j, name in enumerate(LABELS):
        auc = _auc_cell(truth[:, j], pred[:, j], groups, options)
        rows.append([name, num(loss[name]), num(prior_loss.get(name)), auc,
                     num(average_precision(truth[:, j], pred[:, j]), 3), num(ece[name])])
    exams = frame["study_uid"].fillna(frame["image_id"]).to_numpy() if "study_uid" in frame else None
    exam_auc = num(series_auc_any(truth[:, 0], pred[:, 0], exams), 3) if exams is not None else "n/a (no study UIDs)"
    unscored = int((~np.isnan(inputs.truth).all(axis=1)).sum()) - len(frame)
    lines = [f"weighted log loss <b>{num(weighted_log_loss(truth, pred))}</b>"
             + (f" (prior {num(weighted_log_loss(truth, prior))})" if prior is not None else ""),
             f"series-level AUC (any) {num(series_auc_any(truth[:, 0], pred[:, 0], groups), 3)}",
             f"exam-level AUC (any) {exam_auc}", f"{len(truth)} labelled images predicted"
             + (f" ({unscored} labelled images of series that were not read left out)" if unscored else "")]
    header = ["label", "log loss", "prior log loss", f"ROC-AUC [95 % CI, {options.n_boot} series resamples]",
              "average precision", "ECE"]
    note = (f"An AUC interval is given only with at least {MIN_PER_CLASS_FOR_AUC_CI} series holding a positive and "
            f"{MIN_PER_CLASS_FOR_AUC_CI} holding a negative image of the label: with fewer, a bootstrap interval "
            "collapses onto the estimate and claims a certainty the data cannot give.")
    return ("<p>" + "; ".join(lines) + ".</p>" + markup.table(header, rows)
            + f"<p class='note'>{html.escape(note)}</p>")


def _auc_cell(true: np.ndarray, pred: np.ndarray, groups: np.ndarray, options: ReportOptions) -> str:
    """``0.912 [0.850, 0.960]``, or the AUC alone with the counts of series when they are too few for an interval."""
    labelled = ~np.isnan(true)
    positive = len(np.unique(groups[labelled & (true == 1)]))
    negative = len(np.unique(groups[labelled & (true == 0)]))
    if not auc_interval_allowed(positive, negative):
        auc = bootstrap_auc(true, pred, groups, n_boot=1)[0]
        return f"{markup.num(auc, 3)} (no interval: {positive} positive / {negative} negative series)"
    auc, low, high = bootstrap_auc(true, pred, groups, n_boot=options.n_boot)
    return f"{markup.num(auc, 3)} [{markup.num(low, 3)}, {markup.num(high, 3)}]"


def _curves(inputs: _Inputs, options: ReportOptions) -> Section | None:
    scored = inputs.scored
    if not scored.any():
        return None
    truth, pred = inputs.truth[scored], inputs.predictions.loc[scored, PROBS].to_numpy(np.float64)
    body = "".join(markup.img(png, alt) for png, alt in (
        (figures.curves_png(truth, pred, "roc"), "ROC curves per label"),
        (figures.curves_png(truth, pred, "pr"), "precision-recall curves per label"),
        (figures.reliability_png(truth, pred), "reliability diagrams per label")))
    return "curves", "Curves", f"<p class='note'>{int(scored.sum())} labelled and predicted images.</p>" + body


def _gallery(inputs: _Inputs, options: ReportOptions) -> Section | None:
    if inputs.dataset is None:
        return None
    frame = inputs.predictions.assign(_row=np.arange(len(inputs.predictions)))
    frame = frame[(frame["predicted_by"] == "model") & frame["series_id"].notna()]
    if inputs.truth is not None:
        truth = inputs.truth[frame["_row"], 0]
        groups = [("False positives (labelled negative, highest p(any))",
                   frame[truth == 0].nlargest(options.gallery, "p_any")),
                  ("False negatives (labelled positive, lowest p(any))",
                   frame[truth == 1].nsmallest(options.gallery, "p_any"))]
    else:
        groups = [(f"The {options.gallery} slices with the highest p(any) (no labels)",
                   frame.nlargest(options.gallery, "p_any"))]
    chosen = pd.concat([rows for _, rows in groups]).to_dict("records")
    explained = inputs.explain([row["image_id"] for row in chosen], options)
    cards = {row["image_id"]: _card(inputs, row, explained[k] if explained else None) for k, row in enumerate(chosen)}
    note = ("Left: BSB windows of the original slice; right: Grad-CAM of p(any) through the sequence model over "
            "the brain window (jet colours, red = strongest evidence, each map scaled to its maximum)."
            if explained else "BSB windows of the cached slice; give --run for Grad-CAM overlays.")
    body = [f"<p class='note'>{note}</p>"]
    for title, rows in groups:
        body.append(f"<h3>{html.escape(title)}</h3><div class='gallery'>"
                    + ("".join(cards[image] for image in rows["image_id"]) or "<p>None.</p>") + "</div>")
    return "gallery", "Error gallery" if inputs.truth is not None else "Highest p(any)", "\n".join(body)


def _card(inputs: _Inputs, row: dict[str, Any], explanation: Any) -> str:
    """One gallery entry: BSB image (and Grad-CAM overlay), with the slice's identity and scores."""
    truth = inputs.truth[row["_row"], 0] if inputs.truth is not None else math.nan
    caption = (f"{row['image_id']} (series {row['series_uid']}, slice {int(row['slice_index'])}): "
               f"p(any) {row['p_any']:.3f}" + ("" if inputs.truth is None else
                                               f", label {'n/a' if np.isnan(truth) else int(truth)}"))
    if explanation is not None:
        hu, images = explanation.hu, [_rgb(bsb(explanation.hu)), explanation.overlay("any")]
    else:
        hu = np.asarray(inputs.dataset.hu(row["series_id"])[int(row["slice_index"])])
        images = [_rgb(bsb(hu))]
    head = figures.head_box(hu)
    pngs = [figures.image_png(figures.shrink(image[head], 256)) for image in images]
    tags = "".join(markup.img(png, caption, width=256) for png in pngs)
    return f"<figure>{tags}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _rgb(channels: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return np.rint(np.moveaxis(channels, 0, -1) * 255).astype(np.uint8)


def _training(inputs: _Inputs, options: ReportOptions) -> Section | None:
    run = next((RunFolder(path) for path in inputs.runs if RunFolder(path).info.is_file()), None)
    if run is None:
        return None
    body = []
    for fold in run.folds_present():
        path = run.fold(fold).metrics
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            body.append(f"<h3>Fold {fold}: loss per epoch</h3>" + markup.img(figures.training_png(records),
                                                                       f"training curves of fold {fold}"))
    info = json.loads(run.info.read_text())
    body.append("<h3>run.json</h3>" + markup.facts(info))
    if run.config.is_file():
        body.append(f"<h3>Resolved config ({html.escape(str(run.config))})</h3><pre>"
                    f"{html.escape(run.config.read_text())}</pre>")
    build = DatasetFolder(Path(info.get("dataset", ""))).build_summary()
    if info.get("dataset") and build.is_file():
        facts = {k: v for k, v in json.loads(build.read_text()).items() if k != "series_choice"}
        body.append(f"<h3>Training data: {html.escape(str(build))}</h3>" + markup.facts(facts))
    return "training", "Training", "\n".join(body)


def _model_card(inputs: _Inputs, options: ReportOptions) -> Section | None:
    """The run's model card (``model_card.md``, written by train, copied by export), as written."""
    cards = [RunFolder(path).model_card for path in inputs.runs]
    card = next((path for path in cards if path.is_file()), None)
    if card is None:
        return None
    return ("model-card", "Model card", f"<p>{html.escape(str(card))}</p><pre>{html.escape(card.read_text())}</pre>")


def _build(inputs: _Inputs, options: ReportOptions) -> Section | None:
    """The dataset's build.json as tables (the series choice has its own section)."""
    if inputs.dataset is None or not inputs.dataset.folder.build_summary().is_file():
        return None
    path = inputs.dataset.folder.build_summary()
    build = json.loads(path.read_text())
    build.pop("series_choice", None)
    return "build", "Build", f"<p class='note'>{html.escape(str(path))}</p>" + markup.facts(build)


def _page(inputs: _Inputs, sections: list[Section]) -> str:
    meta = (f"predictions {inputs.folder.predictions}; {len(inputs.predictions)} images; labels "
            f"{'yes' if inputs.truth is not None else 'no'}; run {', '.join(map(str, inputs.runs)) or 'not given'}; "
            f"ich3d {__version__}; written {time.strftime('%Y-%m-%d %H:%M')}")
    return markup.page(inputs.folder.root.name, meta, sections)


#: The page's sections in order; each builder returns (id, title, html) or None. The exam answer first.
SECTIONS = (exam_markup.exams_section, _summary, exam_markup.choice_section, _curves, strips_section, _gallery,
            _training, _build, _model_card)
