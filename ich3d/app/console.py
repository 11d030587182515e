"""Rich tables printed by the CLI: build summary, training epochs, inference counts, scores, the demo."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ich3d.constants import LABELS, SHORT_NAMES


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


#: Summary keys printed as their own tables, not as rows of the build table.
_OWN_TABLES = ("series_choice", "versions", "labels")
#: Rows of the series-choice table printed at most (build.json and series.parquet hold them all).
CHOICE_ROWS = 40


def print_build_summary(summary: dict[str, Any], console: Console) -> None:
    """Counts of files by status, series, roles, labels and timings of a build; then, for the studies
    where a series had to be chosen, the table study / series / description / role / read / why."""
    table = Table(title="build-series", show_header=False)
    for key, value in summary.items():
        if key in _OWN_TABLES:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value[:5])) + (" ..." if len(value) > 5 else "") if value else "-"
        table.add_row(key, _fmt(value))
    console.print(table)
    choice = summary.get("series_choice") or {}
    if choice.get("rows"):
        console.print(series_choice_table(choice))


def series_choice_table(choice: dict[str, Any]) -> Table:
    """The series choice of :func:`ich3d.dataset.roles.choice_table` as a rich table."""
    rows = choice["rows"]
    table = Table(title=f"series choice: {choice['n_studies']} studies with a choice to make")
    for column in ("study", "series", "description", "role", "read", "why"):
        table.add_column(column, overflow="fold")
    for row in rows[:CHOICE_ROWS]:
        table.add_row(_short(row["study_uid"]), _short(row["series_uid"]), str(row.get("series_description") or ""),
                      row["role"], "yes" if row["predict"] else "no", row["choice"])
    if len(rows) > CHOICE_ROWS or choice.get("truncated"):
        table.caption = f"first {CHOICE_ROWS} series shown; all are in build.json and index/series.parquet"
    return table


def _short(uid: str, keep: int = 14) -> str:
    """The end of a long UID, which is where UIDs differ."""
    return uid if len(uid) <= keep else "…" + uid[-keep:]


class EpochTable:
    """Prints one row per finished epoch (validation metrics), then the saved model's record."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def add(self, record: dict[str, Any]) -> None:
        valid = record["valid"]
        auc = valid.get("auc", {}).get("any")
        self.console.print(
            f"fold {record['fold']} [bold]{record['stage']:>8}[/] epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f}  "
            f"valid wlogloss {_fmt(valid['weighted_log_loss'])}  AUC(any) {_fmt(auc)}  "
            f"series AUC {_fmt(valid.get('series_auc_any'))}  ({record['seconds']:.0f} s)"
        )

    def final(self, result: dict[str, Any], out: Path) -> None:
        calibration = result["calibration"]
        before, after = calibration["before"]["weighted_log_loss"], calibration["after"]["weighted_log_loss"]
        self.console.print(score_table(result["metrics"], f"{out}: folds {result['folds']}, calibrated on "
                                                          f"{calibration['fitted_on']}"))
        self.console.print(f"calibration: weighted log loss {_fmt(before)} -> {_fmt(after)} "
                           f"(in-sample on the data it was fitted on)")


def score_table(metrics: dict[str, Any], title: str) -> Table:
    """Per-label log loss and AUC, with the weighted log loss and series AUC in the caption."""
    table = Table(title=title)
    table.add_column("label")
    table.add_column("log loss", justify="right")
    table.add_column("AUC", justify="right")
    for name in LABELS:
        table.add_row(name, _fmt(metrics["log_loss"][name]), _fmt(metrics["auc"][name]))
    table.caption = (f"weighted log loss {_fmt(metrics['weighted_log_loss'])}"
                     + (f", series AUC(any) {_fmt(metrics['series_auc_any'])}" if metrics.get("series_auc_any") is not None else ""))
    return table


def print_score(metrics: dict[str, Any], console: Console) -> None:
    console.print(score_table(metrics, "score"))
    console.print(f"weighted log loss: {metrics['weighted_log_loss']:.5f}")


def print_exam_score(result: dict[str, Any], console: Console) -> None:
    """Per-label exam AUC, sensitivity and specificity at the threshold, each with its 95 % interval
    (none for an AUC on too few exams, and the caption says so)."""
    from ich3d.metrics import MIN_PER_CLASS_FOR_AUC_CI

    table = Table(title=f"exams: {result['n_exams']} scored" + (f", {result['n_unscored']} without a usable series"
                                                                 if result["n_unscored"] else ""))
    for column in ("label", "AUC (95 % CI)", "sensitivity (95 % CI)", "specificity (95 % CI)", "TP / FP / TN / FN"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, s in result["labels"].items():
        table.add_row(name, _with_interval(s, "auc"), _with_interval(s, "sensitivity"),
                      _with_interval(s, "specificity"), f"{s['tp']} / {s['fp']} / {s['tn']} / {s['fn']}")
    table.caption = (f"threshold {result['threshold']:g}; sensitivity and specificity with Wilson intervals; an AUC "
                     f"interval (bootstrap over exams) only with at least {MIN_PER_CLASS_FOR_AUC_CI} positive and "
                     f"{MIN_PER_CLASS_FOR_AUC_CI} negative exams")
    console.print(table)


def _with_interval(scores: dict[str, Any], key: str) -> str:
    """``0.750 (0.301-0.954)``; ``1.000 (no CI: 3+ / 5-)`` for an AUC on too few exams; n/a when undefined."""
    value, low, high = scores[key], scores.get(f"{key}_low"), scores.get(f"{key}_high")
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.3f} (no CI: {scores['n_positive']}+ / {scores['n_negative']}-)"
    return f"{value:.3f} ({low:.3f}-{high:.3f})"


def print_infer_summary(summary: dict[str, Any], console: Console) -> None:
    """How the images were predicted, then the exams ordered by p(any) (when the job wrote exams.csv)."""
    table = Table(title="infer", show_header=False)
    for key, value in summary.items():
        if key == "provenance":  # versions, commit, device: in infer.json
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "-"
        table.add_row(key, str(value))
    console.print(table)
    exams = Path(summary.get("exams_csv") or "")
    if summary.get("exams") and exams.is_file():
        import pandas as pd

        rows = json.loads(pd.read_csv(exams).to_json(orient="records"))
        console.print(exam_table(rows, f"exams ({len(rows)}), highest p(any) first", summary.get("exam_threshold")))
        console.print(f"every column, full UIDs and slice ranges: {exams}")


def print_demo(result: dict[str, Any], console: Console) -> None:
    """The demo's scores next to the prevalence prior's, then the clinical export's exams."""
    console.print(score_table(result["score"], "demo: held-out synthetic test split"))
    console.print(demo_table(result))
    if result.get("exams"):
        console.print(exam_table(result["exams"], "demo: exams of a PACS-style export (one row per study)",
                                 result.get("exam_threshold")))
        auc = result["exam_score"]["labels"]["any"]["auc"]
        console.print(f"exam AUC(any) against the reads: {_fmt(auc)} over {result['exam_score']['n_exams']} exams "
                      f"(few exams: the table is the point); exams.csv: {result['exams_csv']}")
    console.print(f"demo test weighted log loss: {result['score']['weighted_log_loss']:.4f} "
                  f"(prior {result['prior_score']:.4f}); outputs in {result['out']} ({result['seconds']:.0f} s)")
    console.print(f"report: {result['report']}")


def demo_table(result: dict[str, Any]) -> Table:
    """The demo summary (README's demo table): validation and test weighted log loss of the prior, the
    slice-only CNN, the CNN + GRU and the calibrated CNN + GRU, from the demo's ``demo.json``."""
    table = Table(title="demo summary: weighted log loss")
    table.add_column("model")
    table.add_column("validation (first fold)", justify="right")
    table.add_column("held-out test", justify="right")
    for name, valid, test in demo_rows(result):
        star = "*" if name == DEMO_ROWS[-1] else ""
        table.add_row(f"[bold]{name}[/]" if star else name, _fmt(valid) + star,
                      f"[bold]{_fmt(test)}[/]" if star else _fmt(test))
    labels = ", ".join(result.get("calibrated_labels") or []) or "none (no fit paid off out of sample)"
    table.caption = (f"* validation predicted with the inference TTA ({_fmt(result.get('tta_valid'))} before "
                     f"calibration); calibration fitted on {result.get('calibration_fitted_on')}, in-sample "
                     f"there; labels calibrated: {labels}")
    return table


#: The rows of the demo table, in order.
DEMO_ROWS = ("prevalence prior", "CNN, slice-only", "CNN + GRU", "CNN + GRU, calibrated")


def demo_rows(result: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(model, validation, test) weighted log loss of each row of :data:`DEMO_ROWS` from ``demo.json``."""
    return list(zip(DEMO_ROWS, (result.get("prior_valid"), result.get("slice_valid"), result.get("sequence_valid"),
                                result.get("calibrated_valid")),
                    (result.get("prior_score"), result.get("slice_score"), result.get("raw_score"),
                     result["score"]["weighted_log_loss"])))


def exam_table(exams: list[dict[str, Any]], title: str, thresholds: Sequence[float] | float = 0.5) -> Table:
    """Rows of ``exams.csv`` ordered by p(any), highest first (exams without one last): study (the end of
    its UID), patient, the series read (description, thickness, kernel), status, p(any), the labels the
    exam is flagged for (exam probability at or above the label's threshold; with the slices), and the
    key slice (highest p(any)). ``thresholds``: one per label (the models' operating points), or one
    for all."""
    limits = label_thresholds(thresholds)
    table = Table(title=title)
    for column in ("study", "patient", "series read", "status", "p(any)", "flagged labels", "key slice"):
        wraps = column in ("series read", "status", "flagged labels")  # the others stay whole on narrow screens
        table.add_column(column, justify="right" if column in ("p(any)", "key slice") else "left",
                         overflow="fold", no_wrap=not wraps)
    for exam in sorted(exams, key=_risk):
        table.add_row(_short(str(exam["study_uid"])), str(exam.get("patient_id") or "-"), series_read(exam),
                      _status(exam), _p(exam.get("p_any")), findings(exam, limits) or "-",
                      "-" if _missing(exam.get("key_slice_index")) else str(int(exam["key_slice_index"])))
    n_flagged = sum(1 for exam in exams if flagged(exam, 0, limits))
    table.caption = f"{n_flagged} of {len(exams)} exams flagged for any (p(any) >= {limits[0]:g})" + (
        "" if len(set(limits)) == 1 else "; thresholds " + ", ".join(
            f"{SHORT_NAMES[name]} {limit:g}" for name, limit in zip(LABELS, limits)))
    return table


def label_thresholds(value: Sequence[float] | float | None) -> list[float]:
    """One threshold per label from ``infer``'s ``exam_threshold`` (a list, or one number for all)."""
    if value is None:
        return [0.5] * len(LABELS)
    if isinstance(value, (int, float)):
        return [float(value)] * len(LABELS)
    return [float(v) for v in value]


def flagged(exam: dict[str, Any], j: int, thresholds: Sequence[float]) -> bool:
    """Whether an exam row is flagged for label ``j``: its ``flag_<label>`` column when written, else its
    probability at or above the threshold."""
    flag = exam.get(f"flag_{LABELS[j]}")
    if flag is not None and not _missing(flag):
        return flag in (True, "True", "true", 1)
    p = exam.get(f"p_{LABELS[j]}")
    return not _missing(p) and float(p) >= thresholds[j]


def series_read(exam: dict[str, Any]) -> str:
    """``5mm STND · 5 mm · STANDARD`` of an exam (or series) row: the series description, then its slice
    thickness and kernel unless the description already says them."""
    description = " ".join(str(exam.get("series_description") or "").split())
    parts = [description] if description else []
    thickness, kernel = exam.get("slice_thickness"), exam.get("convolution_kernel")
    if not _missing(thickness) and float(thickness) not in _numbers(description):
        parts.append(f"{float(thickness):g} mm")
    if kernel and not _missing(kernel) and str(kernel).lower() not in description.lower():
        parts.append(str(kernel))
    return " · ".join(parts) if parts else ("-" if not exam.get("series_uid") else "(no description)")


def _numbers(text: str) -> set[float]:
    """The numbers written in a text (``Head 5.0 H31s`` -> {5.0, 31.0})."""
    return {float(value) for value in re.findall(r"\d+(?:\.\d+)?", text)}


def findings(exam: dict[str, Any], thresholds: Sequence[float]) -> str:
    """The labels an exam is flagged for (see :func:`flagged`), highest probability first, with the slices
    at or above the threshold: ``any 0.93 (12-15), SDH 0.91 (12-14)``."""
    found = []
    for j, name in enumerate(LABELS):
        if flagged(exam, j, thresholds):
            p, where = float(exam[f"p_{name}"]), exam.get(f"slices_{name}")
            where = f" ({where})" if isinstance(where, str) and where else ""
            found.append((p, f"{SHORT_NAMES[name]} {p:.2f}{where}"))
    return ", ".join(text for _, text in sorted(found, key=lambda entry: -entry[0]))


def _risk(exam: dict[str, Any]) -> tuple[bool, float]:
    p = exam.get("p_any")
    return (_missing(p), -float(p) if not _missing(p) else 0.0)


def _status(exam: dict[str, Any]) -> str:
    reason = exam.get("reason")
    return str(exam["status"]) + (f": {reason}" if reason and not _missing(reason) else "")


def _p(value: Any) -> str:
    return "-" if _missing(value) else f"{float(value):.3f}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
