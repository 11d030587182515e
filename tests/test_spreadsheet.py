"""exams.csv and the like: formulas neutralised, line breaks quoted, values read back exactly (docs/design.md §9)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.inference.exam_score import score_exams
from ich3d.spreadsheet import read_table, write_table

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "'quoted", "1.2.3"]


def test_a_study_uid_starting_with_a_formula_is_text_in_a_spreadsheet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"study_uid": HOSTILE, "series_description": ["HEAD\r\nAXIAL"] * len(HOSTILE),
                          "key_position_mm": np.linspace(-40, 30, len(HOSTILE)), "n_images": range(len(HOSTILE))})
    write_table(tmp_path / "exams.csv", frame)
    with open(tmp_path / "exams.csv", newline="", encoding="utf-8") as file:
        cells = list(csv.reader(file))
    assert len(cells) == 1 + len(HOSTILE)  # a CR or LF inside a field never starts a row
    assert [row[0] for row in cells[1:]] == ["'" + value for value in HOSTILE[:-1]] + ["1.2.3"]
    assert cells[1][2] == "-40.0"  # a negative number is a number, not a formula
    back = read_table(tmp_path / "exams.csv")
    pd.testing.assert_frame_equal(back, frame)


def test_exam_scores_join_on_the_study_uid_as_it_was(tmp_path: Path) -> None:
    studies = ["=1+1", "-1.2", "1.2.3"]
    exams = pd.DataFrame({"study_uid": studies, **{f"p_{name}": [0.9, 0.2, 0.1] for name in LABELS}})
    write_table(tmp_path / "exams.csv", exams)
    labels = pd.DataFrame({"study_uid": studies, **{name: [1, 0, 0] for name in LABELS}})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = score_exams(tmp_path / "exams.csv", tmp_path / "labels.csv", n_boot=10)
    assert result["n_exams"] == 3 and result["n_unscored"] == 0
    assert result["labels"]["any"]["tp"] == 1 and result["labels"]["any"]["tn"] == 2
