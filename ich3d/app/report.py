"""``ich3d report``: one self-contained HTML page of an inference output (docs/design.md §10).

Sections, each present when its inputs are: Summary (scores with bootstrap CIs against the prior,
how images were predicted, every file that was not), Curves (ROC, precision-recall, reliability),
Series strips, Error gallery (with Grad-CAM when a run is given), Training (metrics.jsonl, config,
build.json), Model card (the run's ``model_card.md``) and Exams (when ``exams.csv`` exists). Figures are PNGs embedded as ``data:`` URIs; the
page is written from a ``string.Template`` with every value HTML-escaped; it holds no script.
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
from ich3d.app import report_figures as figures
from ich3d.app import report_html as markup
from ich3d.atomic import atomic_write
from ich3d.constants import LABEL_COLUMNS, LABELS, SHORT_NAMES, WINDOWS
from ich3d.data.windowing import bsb, scaled_window
from ich3d.dataset.opened import Dataset
from ich3d.dataset.labels import read_labels
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder, InferFolder, RunFolder
from ich3d.metrics import (
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
#: Columns of exams.csv shown in the exam table, when present (all of them when none is).
EXAM_COLUMNS = ("patient_id", "study_uid", "status", "series_uid", "n_images", *PROBS, "key_slice_index",
                "slices_any", "reason")


@dataclass(frozen=True)
class ReportOptions:
    """What the page shows.

    Attributes:
        max_series: series strips at most (the most informative series, see :func:`pick_series`).
        gallery: false positives and false negatives each in the error gallery.
        n_boot: bootstrap resamples of the AUC confidence intervals (series resampled whole).
        device: where Grad-CAM runs ("cpu", "cuda", ... or None for the best available).
    """

    max_series: int = 24
    gallery: int = 4
    n_boot: int = 1000
    device: str | None = None

    def __post_init__(self) -> None:
        if self.max_series < 0 or self.gallery < 0 or self.n_boot < 1:
            raise InputError(f"--max-series {self.max_series} and --gallery {self.gallery} must be >= 0 "
                             f"(bootstrap resamples {self.n_boot} >= 1)")


@dataclass
class _Inputs:
    folder: InferFolder
    predictions: pd.DataFrame  # one row per image, PROBS columns
    truth: np.ndarray | None  # (n_images, 6), NaN = unlabeled
    prior: np.ndarray | None  # (6,)
    dataset: Dataset | None
    runs: list[Path]
    explainer: Any = None

    def explain(self, image_ids: list[str], options: ReportOptions) -> list[Any] | None:
        """Grad-CAM explanations of images (None without a run and a dataset)."""
        if not self.runs or self.dataset is None or not image_ids:
            return None
        if self.explainer is None:
            from ich3d.app.explain import Explainer

            self.explainer = Explainer(self.runs, self.dataset, options.device)
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
    for build in (_summary, _curves, _strips, _gallery, _training, _model_card, _exams):
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
    counts = [[by, str(n)] for by, n in frame["predicted_by"].value_counts().items()]
    parts.append("<h3>How the images were predicted</h3>" + markup.table(["predicted by", "images"], counts))
    failed = frame[frame["status"].fillna("missing") != "ok"]
    columns = [c for c in ("image_id", "path", "relative_path", "series_uid", "status", "error", "predicted_by")
               if c in failed]
    cells = [[markup.text(v) for v in row] for row in failed[columns].itertuples(index=False)]
    parts.append(f"<h3>Files not read as images ({len(failed)})</h3>"
                 + (markup.table(columns, cells) if cells else "<p>None: every file was read.</p>"))
    if inputs.dataset is not None and inputs.dataset.folder.build_summary().is_file():
        build = json.loads(inputs.dataset.folder.build_summary().read_text())
        parts.append("<h3>The dataset's build.json</h3>" + markup.mapping_table(build))
    return "summary", "Summary", "\n".join(parts)


def _score_table(inputs: _Inputs, options: ReportOptions) -> str:
    """Per-label log loss (model and prior), ROC-AUC with its 95 % CI, AP and ECE; the weighted log
    loss and the series- and exam-level AUC of ``any`` above it."""
    frame, truth = inputs.predictions, inputs.truth
    pred = frame[PROBS].to_numpy(np.float64)
    labeled = ~np.isnan(truth).all(axis=1)
    truth, pred, frame = truth[labeled], pred[labeled], frame[labeled]
    groups = frame["series_uid"].fillna(frame["image_id"]).to_numpy()
    prior = prior_predictions(inputs.prior, len(pred)) if inputs.prior is not None else None
    loss, ece = per_label_log_loss(truth, pred), per_label_ece(truth, pred)
    prior_loss = per_label_log_loss(truth, prior) if prior is not None else {}
    num, rows = markup.num, []
    for j, name in enumerate(LABELS):
        auc, low, high = bootstrap_auc(truth[:, j], pred[:, j], groups, n_boot=options.n_boot)
        rows.append([name, num(loss[name]), num(prior_loss.get(name)), f"{num(auc, 3)} [{num(low, 3)}, {num(high, 3)}]",
                     num(average_precision(truth[:, j], pred[:, j]), 3), num(ece[name])])
    exams = frame["study_uid"].fillna(frame["image_id"]).to_numpy() if "study_uid" in frame else None
    exam_auc = num(series_auc_any(truth[:, 0], pred[:, 0], exams), 3) if exams is not None else "n/a (no study UIDs)"
    lines = [f"weighted log loss <b>{num(weighted_log_loss(truth, pred))}</b>"
             + (f" (prior {num(weighted_log_loss(truth, prior))})" if prior is not None else ""),
             f"series-level AUC (any) {num(series_auc_any(truth[:, 0], pred[:, 0], groups), 3)}",
             f"exam-level AUC (any) {exam_auc}", f"{len(truth)} labelled images"]
    header = ["label", "log loss", "prior log loss", f"ROC-AUC [95 % CI, {options.n_boot} series resamples]",
              "average precision", "ECE"]
    return "<p>" + "; ".join(lines) + ".</p>" + markup.table(header, rows)


def _curves(inputs: _Inputs, options: ReportOptions) -> Section | None:
    if inputs.truth is None:
        return None
    pred = inputs.predictions[PROBS].to_numpy(np.float64)
    body = "".join(markup.img(png, alt) for png, alt in (
        (figures.curves_png(inputs.truth, pred, "roc"), "ROC curves per label"),
        (figures.curves_png(inputs.truth, pred, "pr"), "precision-recall curves per label"),
        (figures.reliability_png(inputs.truth, pred), "reliability diagrams per label")))
    return "curves", "Curves", body


def pick_series(predictions: pd.DataFrame, truth: np.ndarray | None, limit: int) -> list[tuple[str, str]]:
    """The most informative series: series-level false negatives (labelled positive, max p(any) <
    THRESHOLD), then false positives, then the others by their weighted log loss, each group by loss;
    without labels, by max p(any). Returns up to ``limit`` (series_uid, reason)."""
    frame = predictions.assign(_row=np.arange(len(predictions))).dropna(subset=["series_uid"])
    picked = []
    for uid, rows in frame.groupby("series_uid", sort=False):
        score = float(rows["p_any"].max())
        true = truth[rows["_row"]] if truth is not None else None
        if true is None or np.isnan(true[:, 0]).all():
            picked.append((2, -score, uid, f"max p(any) {score:.2f}"))
            continue
        loss = weighted_log_loss(true, rows[PROBS].to_numpy(np.float64))
        positive, called = np.nanmax(true[:, 0]) == 1, score >= THRESHOLD
        if positive != called:
            group, what = (0, "false negative") if positive else (1, "false positive")
        else:
            group, what = 2, "true positive" if positive else "true negative"
        picked.append((group, -loss, uid, f"{what}: max p(any) {score:.2f}, weighted log loss {loss:.3f}"))
    return [(uid, reason) for *_, uid, reason in sorted(picked, key=lambda entry: entry[:2])[:limit]]


def _strips(inputs: _Inputs, options: ReportOptions) -> Section | None:
    frame = inputs.predictions.assign(_row=np.arange(len(inputs.predictions)))
    chosen = pick_series(inputs.predictions, inputs.truth, options.max_series)
    if not chosen:
        return None
    n_series = frame["series_uid"].nunique()
    body = [(f"<p class='note'>{len(chosen)} of {n_series} series: series-level false negatives first, then false "
             f"positives (called at p(any) &ge; {THRESHOLD}), then by weighted log loss. Thumbnails (brain window): "
             "the peak of p(any), the labelled-positive slice with the lowest p(any), the labelled-negative slice "
             "with the highest (dotted lines).</p>"), _legend()]
    for uid, reason in chosen:
        rows = frame[frame["series_uid"] == uid].sort_values("slice_index")
        probs = rows[PROBS].to_numpy(np.float64)
        truth = inputs.truth[rows["_row"]] if inputs.truth is not None else None
        keys = _key_slices(probs, truth, rows)
        plot = figures.strip_png(probs, truth, keys)
        tiles = []
        for k in keys:
            image = _cache_thumbnail(inputs.dataset, uid, int(rows["slice_index"].iloc[k]))
            if image is not None:
                caption = f"slice {k}: p(any) {probs[k, 0]:.2f}"
                tiles.append(f"<figure>{markup.img(figures.image_png(figures.shrink(image, 128)), caption, 128)}"
                             f"<figcaption>{caption}</figcaption></figure>")
        chart = markup.img(plot, f"probabilities along series {uid}")
        title = html.escape(f"{uid}: {len(rows)} slices; {reason}")
        body.append(f"<div class='strip'><div><p class='title'>{title}</p>{chart}</div>{''.join(tiles)}</div>")
    return "strips", "Series strips", "\n".join(body)


def _legend() -> str:
    """The strips' colours, once for all: a line per label, the shading and squares of the labels."""
    lines = "".join(f"<span style='color:{colour}'>&#9644; {name}</span> "
                    for name, colour in zip(LABELS, figures.LABEL_COLORS))
    return (f"<p class='note'>{lines}&nbsp; <span style='background:#f4c7c3'>&nbsp;shaded&nbsp;</span>: labelled "
            "any; squares under the curves: labelled subtypes, in their colours.</p>")


def _key_slices(probs: np.ndarray, truth: np.ndarray | None, rows: pd.DataFrame) -> list[int]:
    """Slice indices of the peak of p(any), the worst-missed positive and the worst false alarm
    (readable slices only), without repeats."""
    p = np.where(rows["predicted_by"].to_numpy() == "model", probs[:, 0], np.nan)
    if np.isnan(p).all():
        return []
    keys = [int(np.nanargmax(p))]
    if truth is not None:
        positive, negative = truth[:, 0] == 1, truth[:, 0] == 0
        if (positive & ~np.isnan(p)).any():
            keys.append(int(np.nanargmin(np.where(positive, p, np.nan))))
        if (negative & ~np.isnan(p)).any():
            keys.append(int(np.nanargmax(np.where(negative, p, np.nan))))
    return list(dict.fromkeys(keys))


def _cache_thumbnail(dataset: Dataset | None, series_uid: str, index: int) -> np.ndarray | None:
    """(h, w) uint8 brain window of a cached slice, cut to the head (None without a dataset or cache file)."""
    if dataset is None or not dataset.folder.cache_file(series_uid).is_file():
        return None
    hu = np.asarray(dataset.hu(series_uid)[index])
    return scaled_window(hu, *WINDOWS["brain"])[figures.head_box(hu)]


def _gallery(inputs: _Inputs, options: ReportOptions) -> Section | None:
    if inputs.dataset is None:
        return None
    frame = inputs.predictions.assign(_row=np.arange(len(inputs.predictions)))
    frame = frame[(frame["predicted_by"] == "model") & frame["series_uid"].notna()]
    if inputs.truth is not None:
        truth = inputs.truth[frame["_row"], 0]
        groups = [("False positives (labelled negative, highest p(any))",
                   frame[truth == 0].nlargest(options.gallery, "p_any")),
                  ("False negatives (labelled positive, lowest p(any))",
                   frame[truth == 1].nsmallest(options.gallery, "p_any"))]
    else:
        groups = [("Highest p(any) (no labels)", frame.nlargest(options.gallery, "p_any"))]
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
    return "gallery", "Error gallery", "\n".join(body)


def _card(inputs: _Inputs, row: dict[str, Any], explanation: Any) -> str:
    """One gallery entry: BSB image (and Grad-CAM overlay), with the slice's identity and scores."""
    truth = inputs.truth[row["_row"], 0] if inputs.truth is not None else math.nan
    caption = (f"{row['image_id']} (series {row['series_uid']}, slice {int(row['slice_index'])}): "
               f"p(any) {row['p_any']:.3f}, label {'n/a' if np.isnan(truth) else int(truth)}")
    if explanation is not None:
        hu, images = explanation.hu, [_rgb(bsb(explanation.hu)), explanation.overlay("any")]
    else:
        hu = np.asarray(inputs.dataset.hu(row["series_uid"])[int(row["slice_index"])])
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
    body.append("<h3>run.json</h3>" + markup.mapping_table(info))
    if run.config.is_file():
        body.append(f"<h3>Resolved config ({html.escape(str(run.config))})</h3><pre>"
                    f"{html.escape(run.config.read_text())}</pre>")
    build = DatasetFolder(Path(info.get("dataset", ""))).build_summary()
    if info.get("dataset") and build.is_file():
        body.append(f"<h3>Training data: {html.escape(str(build))}</h3>"
                    + markup.mapping_table(json.loads(build.read_text())))
    return "training", "Training", "\n".join(body)


def _model_card(inputs: _Inputs, options: ReportOptions) -> Section | None:
    """The run's model card (``model_card.md``, written by train, copied by export), as written."""
    cards = [RunFolder(path).model_card for path in inputs.runs]
    card = next((path for path in cards if path.is_file()), None)
    if card is None:
        return None
    return ("model-card", "Model card", f"<p>{html.escape(str(card))}</p><pre>{html.escape(card.read_text())}</pre>")


def _exams(inputs: _Inputs, options: ReportOptions) -> Section | None:
    if not inputs.folder.exams_csv.is_file():
        return None
    exams = pd.read_csv(inputs.folder.exams_csv)
    keys = _key_images(exams, inputs.predictions)
    by_id = inputs.predictions.set_index("image_id")
    wanted = [k for k in keys if k is not None and by_id.loc[k, "predicted_by"] == "model"] if inputs.dataset else []
    called = [k for k in wanted if by_id.loc[k, "p_any"] >= THRESHOLD]  # Grad-CAM explains the calls
    explained = dict(zip(called, inputs.explain(called, options) or []))
    shown = [c for c in EXAM_COLUMNS if c in exams] or list(exams.columns)
    header = [f"p({SHORT_NAMES[c[2:]]})" if c in PROBS else c for c in shown]
    rows = []
    for key, values in zip(keys, exams[shown].itertuples(index=False)):
        image = None
        if key in explained:
            image = explained[key].overlay("any")[figures.head_box(explained[key].hu)]
        elif key in wanted:
            image = _cache_thumbnail(inputs.dataset, by_id.loc[key, "series_uid"], int(by_id.loc[key, "slice_index"]))
        cell = "" if image is None else markup.img(figures.image_png(figures.shrink(image, 160)), f"key {key}", 120)
        rows.append([cell, *(html.escape(markup.text(v)) for v in values)])
    note = (f"Key slices (highest p(any)) in the brain window, with the Grad-CAM of p(any) where it is at least "
            f"{THRESHOLD}; every column is in {inputs.folder.exams_csv}.")
    return "exams", "Exams", (f"<p class='note'>{html.escape(note)}</p><div class='wide'>"
                              + markup.table(["key slice", *header], rows, escape=False) + "</div>")


def _key_images(exams: pd.DataFrame, predictions: pd.DataFrame) -> list[str | None]:
    """The key image ID of each exam: from the first ``key*`` column whose values are image IDs or
    SOP UIDs of the predictions (None where there is none)."""
    known = {name: dict(zip(predictions[name].astype(str), predictions["image_id"]))
             for name in ("image_id", "sop_uid") if name in predictions}
    for column in (c for c in exams.columns if c.lower().startswith("key")):
        for lookup in known.values():
            values = exams[column].astype(str)
            if values.isin(lookup.keys()).any():
                return [lookup.get(value) for value in values]
    return [None] * len(exams)


def _page(inputs: _Inputs, sections: list[Section]) -> str:
    meta = (f"predictions {inputs.folder.predictions}; {len(inputs.predictions)} images; labels "
            f"{'yes' if inputs.truth is not None else 'no'}; run {', '.join(map(str, inputs.runs)) or 'not given'}; "
            f"ich3d {__version__}; written {time.strftime('%Y-%m-%d %H:%M')}")
    return markup.page(inputs.folder.root.name, meta, sections)
