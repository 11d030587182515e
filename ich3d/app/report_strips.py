"""The series strips of ``ich3d report``: p(label) along each series that was read, with key thumbnails.

Only series with probabilities are drawn (a skipped topogram or bone-kernel series has none); labelled
series are ordered by how much they teach (misses, false alarms, loss), unlabelled ones by risk.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ich3d.app import report_figures as figures
from ich3d.app import report_html as markup
from ich3d.app.report_exams import ReportInputs, cache_thumbnail, series_descriptions, short_uid
from ich3d.constants import LABELS
from ich3d.inference.exams import THRESHOLD
from ich3d.inference.outputs import PROB_COLUMNS
from ich3d.metrics import weighted_log_loss

if TYPE_CHECKING:
    from ich3d.app.report import ReportOptions

Section = tuple[str, str, str]


def pick_series(predictions: pd.DataFrame, truth: np.ndarray | None, limit: int) -> list[tuple[str, str]]:
    """The most informative of the series that were read (series without a probability, e.g. skipped
    topograms or bone kernels, are never picked): labelled series first — series-level false negatives
    (labelled positive, max p(any) < THRESHOLD), then false positives, then the others by their weighted
    log loss, each group by loss — then unlabelled series by max p(any), highest risk first.
    Returns up to ``limit`` (series_uid, reason)."""
    frame = predictions.assign(_row=np.arange(len(predictions))).dropna(subset=["series_uid", "p_any"])
    picked = []
    for uid, rows in frame.groupby("series_uid", sort=False):
        score = float(rows["p_any"].max())
        true = truth[rows["_row"]] if truth is not None else None
        if true is None or np.isnan(true[:, 0]).all():
            picked.append((3, -score, uid, f"max p(any) {score:.2f}" + ("" if truth is None else ", unlabelled")))
            continue
        loss = weighted_log_loss(true, rows[PROB_COLUMNS].to_numpy(np.float64))
        positive, called = np.nanmax(true[:, 0]) == 1, score >= THRESHOLD
        if positive != called:
            group, what = (0, "false negative") if positive else (1, "false positive")
        else:
            group, what = 2, "true positive" if positive else "true negative"
        picked.append((group, -loss, uid, f"{what}: max p(any) {score:.2f}, weighted log loss {loss:.3f}"))
    return [(uid, reason) for *_, uid, reason in sorted(picked, key=lambda entry: entry[:2])[:limit]]


def strips_section(inputs: ReportInputs, options: ReportOptions) -> Section | None:
    frame = inputs.predictions.assign(_row=np.arange(len(inputs.predictions)))
    chosen = pick_series(inputs.predictions, inputs.truth, options.max_series)
    if not chosen:
        return None
    n_read = frame.dropna(subset=["p_any"])["series_uid"].nunique()
    if inputs.truth is not None:
        order = (f"labelled series first: series-level false negatives, then false positives (called at p(any) &ge; "
                 f"{THRESHOLD}), then by weighted log loss; then unlabelled series by p(any). Thumbnails "
                 "(brain window): the peak of p(any), the labelled-positive slice with the lowest p(any), the "
                 "labelled-negative slice with the highest (dotted lines).")
    else:
        order = "highest p(any) first. Thumbnail (brain window): the slice with the highest p(any) (dotted line)."
    body = [f"<p class='note'>{len(chosen)} of the {n_read} series read by the model, {order}</p>",
            _legend(inputs.truth is not None)]
    descriptions = series_descriptions(inputs.dataset)
    for uid, reason in chosen:
        rows = frame[frame["series_uid"] == uid].sort_values("slice_index")
        probs = rows[PROB_COLUMNS].to_numpy(np.float64)
        truth = inputs.truth[rows["_row"]] if inputs.truth is not None else None
        keys = _key_slices(probs, truth, rows)
        plot = figures.strip_png(probs, truth, keys)
        tiles = []
        for k in keys:
            image = cache_thumbnail(inputs.dataset, uid, int(rows["slice_index"].iloc[k]))
            if image is not None:
                caption = f"slice {k}: p(any) {probs[k, 0]:.2f}"
                tiles.append(f"<figure>{markup.img(figures.image_png(figures.shrink(image, 128)), caption, 128)}"
                             f"<figcaption>{caption}</figcaption></figure>")
        chart = markup.img(plot, f"probabilities along series {uid}")
        name = html.escape(descriptions.get(uid, "")) + " " if descriptions.get(uid) else ""
        title = f"{name}{short_uid(uid)}: {len(rows)} slices; {html.escape(reason)}"
        body.append(f"<div class='strip'><div><p class='title'>{title}</p>{chart}</div>{''.join(tiles)}</div>")
    return "strips", "Series strips", "\n".join(body)


def _legend(labelled: bool) -> str:
    """The strips' colours, once for all: a line per label (and the shading and squares of the labels)."""
    lines = "".join(f"<span style='color:{colour}'>&#9644; {name}</span> "
                    for name, colour in zip(LABELS, figures.LABEL_COLORS))
    if not labelled:
        return f"<p class='note'>{lines}</p>"
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
