"""Rich tables printed by the CLI: build summary, training epochs, inference counts, scores, the demo."""

from __future__ import annotations

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
    """Per-label exam AUC (95 % CI), sensitivity and specificity at the threshold."""
    table = Table(title=f"exams: {result['n_exams']} scored" + (f", {result['n_unscored']} without a usable series"
                                                                 if result["n_unscored"] else ""))
    for column in ("label", "AUC (95 % CI)", "sensitivity", "specificity", "TP / FP / TN / FN"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, s in result["labels"].items():
        auc = "n/a" if s["auc"] is None else f"{s['auc']:.3f} ({s['auc_low']:.3f}-{s['auc_high']:.3f})"
        table.add_row(name, auc, _fmt(s["sensitivity"]), _fmt(s["specificity"]),
                      f"{s['tp']} / {s['fp']} / {s['tn']} / {s['fn']}")
    table.caption = f"threshold {result['threshold']:g}"
    console.print(table)


def print_infer_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="infer", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


def print_demo(result: dict[str, Any], console: Console) -> None:
    """The demo's scores next to the prevalence prior's, then the clinical export's exams."""
    console.print(score_table(result["score"], "demo: held-out synthetic test split"))
    table = Table(title="demo summary: weighted log loss")
    table.add_column("model")
    table.add_column("validation (first fold)", justify="right")
    table.add_column("held-out test", justify="right")
    table.add_row("prevalence prior", _fmt(result.get("prior_valid")), f"{result['prior_score']:.4f}")
    table.add_row("CNN, slice-only", _fmt(result.get("slice_valid")), _fmt(result.get("slice_score")))
    table.add_row("CNN + GRU", _fmt(result.get("sequence_valid")), _fmt(result.get("raw_score")))
    table.add_row("[bold]CNN + GRU, calibrated[/]", _fmt(result.get("calibrated_valid")) + "*",
                  f"[bold]{result['score']['weighted_log_loss']:.4f}[/]")
    labels = ", ".join(result.get("calibrated_labels") or []) or "none (no fit paid off out of sample)"
    table.caption = (f"* validation predicted with the inference TTA ({_fmt(result.get('tta_valid'))} before "
                     f"calibration); calibration fitted on {result.get('calibration_fitted_on')}, in-sample "
                     f"there; labels calibrated: {labels}")
    console.print(table)
    if result.get("exams"):
        console.print(exam_table(result["exams"], "demo: exams of a PACS-style export (one row per study)"))
        auc = result["exam_score"]["labels"]["any"]["auc"]
        console.print(f"exam AUC(any) against the reads: {_fmt(auc)} over {result['exam_score']['n_exams']} exams "
                      f"(few exams: the table is the point); exams.csv: {result['exams_csv']}")
    console.print(f"demo test weighted log loss: {result['score']['weighted_log_loss']:.4f} "
                  f"(prior {result['prior_score']:.4f}); outputs in {result['out']} ({result['seconds']:.0f} s)")
    console.print(f"report: {result['report']}")


def exam_table(exams: list[dict[str, Any]], title: str) -> Table:
    """Rows of ``exams.csv``: status, series read, exam probabilities, key slice and the ranges of positives."""
    table = Table(title=title)
    for column in ("study", "status", "series read", "p(any)", "key slice", "findings (slices)"):
        table.add_column(column, justify="right" if column.startswith("p(") else "left", overflow="fold")
    for exam in exams:
        found = [f"{SHORT_NAMES[name]} {exam[f'slices_{name}']}" for name in LABELS[1:]
                 if isinstance(exam.get(f"slices_{name}"), str) and exam[f"slices_{name}"]]
        key = "" if exam.get("key_slice_index") is None else str(int(exam["key_slice_index"]))
        table.add_row(_short(exam["study_uid"]), exam["status"], str(exam.get("series_description") or "-"),
                      _fmt(exam.get("p_any")), key, "; ".join(found) or "-")
    return table

