"""What the CLI prints at the end of a job: the exam table of ``infer`` and the exam scores of ``score``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from rich.console import Console

from ich3d.app.cli import main
from ich3d.app.console import exam_table, findings, print_exam_score, series_read


def test_infer_ends_with_the_exam_table_ordered_by_risk(trained_run: Path, clinical_export: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["infer", "--run", str(trained_run), "--dicom-dir",
                                       str(clinical_export / "export"), "--out", str(out)],
                                 env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    exams = pd.read_csv(out / "exams.csv").sort_values("p_any", ascending=False)
    assert "highest p(any) first" in text
    for column in ("study", "patient", "series read", "status", "p(any)", "flagged labels", "key slice"):
        assert column in text
    # one line per exam, in the order of p(any), each with its short study UID, patient and series read
    lines = [next(line for line in text.splitlines() if study[-14:] in line) for study in exams["study_uid"]]
    assert [text.splitlines().index(line) for line in lines] == sorted(text.splitlines().index(line) for line in lines)
    for line, exam in zip(lines, exams.to_dict("records")):
        assert exam["patient_id"] in line and f"{exam['p_any']:.3f}" in line
        assert exam["series_description"].split()[0] in line and exam["status"] in line
        assert str(int(exam["key_slice_index"])) in line
    assert "candidate files" not in text and text.count("exams (4)") == 1
    facts = json.loads((out / "infer.json").read_text())["provenance"]
    assert facts["device"] == "cpu" and facts["torch"] and "provenance" not in text


def test_exam_rows_say_series_findings_and_thresholds() -> None:
    exam = {"study_uid": "1.2.3.4", "patient_id": "P1", "status": "ok", "series_uid": "1.2.3.4.5",
            "series_description": "Head  5.0  H31s", "slice_thickness": 5.0, "convolution_kernel": "H31s",
            "p_any": 0.93, "p_epidural": 0.1, "p_intraparenchymal": 0.2, "p_intraventricular": 0.05,
            "p_subarachnoid": 0.61, "p_subdural": 0.91, "slices_any": "12-15", "slices_subdural": "12-14",
            "key_slice_index": 13}
    assert series_read(exam) == "Head 5.0 H31s"  # thickness and kernel already in the description
    assert series_read(exam | {"series_description": "Brain", "slice_thickness": 1.25}) == "Brain · 1.25 mm · H31s"
    assert findings(exam, [0.5] * 6) == "any 0.93 (12-15), SDH 0.91 (12-14), SAH 0.61"
    assert findings(exam, [0.95] * 6) == ""
    assert findings(exam, [0.5, 0.5, 0.5, 0.5, 0.7, 0.95]) == "any 0.93 (12-15)"  # per-label operating thresholds
    assert findings(exam | {"flag_subdural": False, "flag_any": True}, [0.5] * 6) == "any 0.93 (12-15), SAH 0.61"
    low = exam | {"study_uid": "1.2.3.9", "p_any": 0.2}
    unusable = {"study_uid": "1.2.3.8", "patient_id": "P2", "status": "no usable series", "p_any": float("nan")}
    console = Console(width=200, record=True)
    console.print(exam_table([unusable, low, exam], "exams", 0.5))
    text = console.export_text()
    rows = [line for line in text.splitlines() if "1.2.3." in line]
    assert [re.search(r"1\.2\.3\.\d", row).group() for row in rows] == ["1.2.3.4", "1.2.3.9", "1.2.3.8"]
    assert "1 of 3 exams flagged for any (p(any) >= 0.5)" in text


def test_exam_scores_print_their_intervals_and_say_when_there_is_none() -> None:
    scores = {"auc": 1.0, "auc_low": None, "auc_high": None, "auc_note": "no interval", "sensitivity": 1.0,
              "sensitivity_low": 0.51, "sensitivity_high": 1.0, "specificity": 0.75, "specificity_low": 0.3,
              "specificity_high": 0.954, "tp": 4, "fp": 1, "tn": 3, "fn": 0, "n_positive": 4, "n_negative": 4}
    console = Console(width=200, record=True)
    print_exam_score({"n_exams": 8, "n_unscored": 0, "threshold": 0.5, "labels": {"any": scores}}, console)
    text = console.export_text()
    assert "1.000 (no CI: 4+ / 4-)" in text and "1.000 (0.510-1.000)" in text and "0.750 (0.300-0.954)" in text
    assert "Wilson" in text and "at least 10 positive" in text
    json.dumps(scores)
