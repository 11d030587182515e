"""The node's answer for one study without a network: the finding and the flagged subtypes follow the same
rule as ``exams.csv`` (a subtype only on a study positive for ``any``)."""

from __future__ import annotations

import numpy as np

from ich3d.constants import LABELS
from ich3d.inference.exams import exam_flags
from ich3d.serve.analysis import ANALYSED, NOT_ANALYSED, StudyAnalysis


def _analysis(p_any: float, p_subdural: float, thresholds: tuple[float, ...] = (0.9,) + (0.5,) * 5) -> StudyAnalysis:
    probabilities = dict.fromkeys(LABELS, 0.1) | {"any": p_any, "subdural": p_subdural}
    return StudyAnalysis(ANALYSED, "", probabilities, dict(zip(LABELS, thresholds)))


def test_a_subtype_is_flagged_only_on_a_study_positive_for_any() -> None:
    below_any = _analysis(p_any=0.85, p_subdural=0.7)
    assert below_any.finding == "absent" and below_any.flagged == []
    positive = _analysis(p_any=0.95, p_subdural=0.7)
    assert positive.finding == "present" and positive.flagged == ["subdural"]
    assert _analysis(p_any=0.9, p_subdural=0.5).flagged == ["subdural"]  # at the threshold counts


def test_the_node_and_exams_csv_flag_the_same_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        probs, thresholds = rng.random(len(LABELS)), rng.random(len(LABELS))
        analysis = StudyAnalysis(ANALYSED, "", dict(zip(LABELS, probs)), dict(zip(LABELS, thresholds)))
        expected = exam_flags(probs, thresholds)
        assert (analysis.finding == "present") == expected[0]
        assert analysis.flagged == [name for name, flag in zip(LABELS[1:], expected[1:]) if flag]


def test_a_study_not_analysed_has_no_finding_and_no_flags() -> None:
    analysis = StudyAnalysis(NOT_ANALYSED, "only a topogram", {}, dict.fromkeys(LABELS, 0.5))
    assert analysis.finding is None and analysis.flagged == []
