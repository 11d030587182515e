"""Exam results from per-image rows, and exam scoring against CQ500-style reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ich3d.constants import LABELS
from ich3d.errors import InputError
from ich3d.inference.exam_score import majority_reads, score_exams
from ich3d.inference.exams import _ranges, exam_flags, exam_table, smoothed_maximum
from ich3d.inference.outputs import PROB_COLUMNS
from ich3d.metrics import MIN_PER_CLASS_FOR_AUC_CI, wilson_interval


def _series() -> pd.DataFrame:
    return pd.DataFrame({
        "series_uid": ["thick", "thin", "bone", "topo"], "series_id": ["thick", "thin", "bone", "topo"], "study_uid": ["s1", "s1", "s1", "s2"],
        "patient_id": ["p1", "p1", "p1", "p2"], "series_description": ["CT 5mm", "CT 1.25mm", "CT BONE", "Topogram"],
        "role": ["axial", "axial", "bone_kernel", "localizer"], "chosen": [True, False, False, False],
        "predict": [True, False, False, False],
        "choice": ["chosen: axial", "another series of the study is preferred", "not read: bone_kernel (kernel H70h)",
                   "not read: localizer (ImageType LOCALIZER)"]})


def _predictions(any_curve: list[float]) -> pd.DataFrame:
    n = len(any_curve)
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "sop_uid": [f"1.2.{k}" for k in range(n)],
                          "patient_id": "p1", "study_uid": "s1", "series_uid": "thick", "series_id": "thick",
                          "slice_index": np.arange(n),
                          "position": np.arange(n) * 5.0, "predicted_by": "model"})
    frame[PROB_COLUMNS] = 0.01
    frame["p_any"] = any_curve
    frame["p_subdural"] = [0.9 if 2 <= k <= 4 else 0.02 for k in range(n)]
    topo = pd.DataFrame({"image_id": ["t0"], "patient_id": ["p2"], "study_uid": ["s2"], "series_uid": ["topo"],
                         "series_id": ["topo"], "predicted_by": ["skipped"]})
    return pd.concat([frame, topo], ignore_index=True)


def test_ranges_and_smoothing() -> None:
    assert _ranges(np.array([3, 4, 5, 9, 11, 12])) == "3-5, 9, 11-12" and _ranges(np.array([], int)) == ""
    spike = np.zeros((9, 6))
    spike[4] = 0.9  # one slice alone weighs a third
    np.testing.assert_allclose(smoothed_maximum(spike), 0.3)
    run = np.zeros((9, 6))
    run[3:6] = 0.9  # three neighbouring slices keep it
    np.testing.assert_allclose(smoothed_maximum(run), 0.9)


def test_one_exam_row_per_study_with_its_key_slice_and_ranges() -> None:
    exams = exam_table(_predictions([0.05, 0.2, 0.95, 0.9, 0.8, 0.1, 0.05]), _series()).set_index("study_uid")
    assert list(exams.index) == ["s1", "s2"]
    s1 = exams.loc["s1"]
    assert (s1["status"], s1["series_uid"], s1["series_description"], s1["n_images"]) == ("ok", "thick", "CT 5mm", 7)
    assert (s1["key_slice_index"], s1["key_sop_uid"], s1["key_position_mm"]) == (2, "1.2.2", 10.0)
    assert s1["slices_any"] == "2-4" and s1["slices_subdural"] == "2-4" and s1["slices_epidural"] == ""
    assert s1["p_any"] == pytest.approx((0.95 + 0.9 + 0.8) / 3)
    s2 = exams.loc["s2"]
    assert s2["status"] == "no usable series" and np.isnan(s2["p_any"]) and "localizer" in s2["reason"]


def test_a_subtype_is_flagged_only_on_an_exam_flagged_for_any() -> None:
    thresholds = np.array([0.99, 0.5, 0.5, 0.5, 0.5, 0.5])  # a strict `any` point beside unfitted subtypes
    below = exam_flags(np.array([0.97, 0.1, 0.1, 0.1, 0.1, 0.66]), thresholds)
    above = exam_flags(np.array([0.995, 0.1, 0.1, 0.1, 0.1, 0.66]), thresholds)
    assert not below.any()
    assert above.tolist() == [True, False, False, False, False, True]


def _reads(tmp_path: Path, truth: dict[str, list[int]], flips: dict[str, int] | None = None) -> Path:
    """CQ500-style reads of three readers, reader 3 flipping ICH on the named exams."""
    findings = {"any": "ICH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subdural": "SDH",
                "epidural": "EDH", "subarachnoid": "SAH"}
    rows = []
    for name, labels in truth.items():
        row = {"name": name, "Category": "B1"}
        for reader in (1, 2, 3):
            for label, finding in findings.items():
                value = labels[LABELS.index(label)]
                if reader == 3 and (flips or {}).get(name) and finding == "ICH":
                    value = 1 - value
                row[f"R{reader}:{finding}"] = value
        rows.append(row)
    path = tmp_path / "reads.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_exam_scores_equal_a_hand_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    truth = (rng.random((n, 6)) < 0.4).astype(int)
    truth[:, 0] = truth[:, 1:].max(axis=1)
    probs = np.clip(truth * 0.5 + rng.random((n, 6)) * 0.6, 0, 1)
    exams = pd.DataFrame(probs, columns=PROB_COLUMNS).assign(study_uid=[f"1.2.{k}" for k in range(n)],
                                                             patient_id=[f"SYN-CT-{k}" for k in range(n)])
    exams.loc[n - 1, PROB_COLUMNS] = np.nan  # an exam without a usable series
    exams.to_csv(tmp_path / "exams.csv", index=False)
    names = {f"SYN-CT-{k}": truth[k].tolist() for k in range(n)}
    reads = _reads(tmp_path, names, flips={"SYN-CT-3": 1})  # one reader disagrees: the majority holds
    result = score_exams(tmp_path / "exams.csv", reads, n_boot=200)
    assert (result["n_exams"], result["n_unscored"]) == (n, 1)
    for j, label in enumerate(LABELS):
        scores = result["labels"][label]
        assert scores["auc"] == pytest.approx(roc_auc_score(truth[:-1, j], probs[:-1, j]))
        if min(scores["n_positive"], scores["n_negative"]) >= MIN_PER_CLASS_FOR_AUC_CI:
            assert scores["auc_low"] <= scores["auc"] <= scores["auc_high"]
        else:
            assert scores["auc_low"] is None and "no interval" in scores["auc_note"]
        assert scores["sensitivity_low"] <= scores["sensitivity"] <= scores["sensitivity_high"]
        call = probs[:-1, j] > 0.5
        assert scores["tp"] == int((call & (truth[:-1, j] == 1)).sum())
        assert scores["sensitivity"] == pytest.approx(scores["tp"] / (scores["tp"] + scores["fn"]))
    mapping = tmp_path / "map.csv"
    pd.DataFrame({"name": list(names), "study_uid": exams["study_uid"]}).to_csv(mapping, index=False)
    assert score_exams(tmp_path / "exams.csv", reads, mapping, n_boot=50)["labels"]["any"]["auc"] == \
        result["labels"]["any"]["auc"]
    plain = pd.DataFrame(truth, columns=list(LABELS)).assign(study_uid=exams["study_uid"])
    plain.to_csv(tmp_path / "plain.csv", index=False)
    assert score_exams(tmp_path / "exams.csv", tmp_path / "plain.csv", n_boot=50)["labels"]["any"]["auc"] == \
        result["labels"]["any"]["auc"]


def test_reads_with_unknown_names_are_rejected_and_listed(tmp_path: Path) -> None:
    pd.DataFrame({"study_uid": ["1.2.1"], "patient_id": ["A"], **{p: [0.5] for p in PROB_COLUMNS}}).to_csv(
        tmp_path / "exams.csv", index=False)
    reads = _reads(tmp_path, {"A": [0] * 6, "CQ500-CT-7": [0] * 6, "CQ500-CT-9": [1] * 6})
    with pytest.raises(InputError, match="2 read name\\(s\\) match no exam .*: CQ500-CT-7, CQ500-CT-9"):
        score_exams(tmp_path / "exams.csv", reads)


def test_majority_of_readers() -> None:
    reads = pd.DataFrame({"name": ["a"], **{f"R{r}:{f}": [v] for r, v in ((1, 1), (2, 0), (3, 1))
                                          for f in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH")}})
    assert majority_reads(reads, Path("r.csv")).loc["a"].tolist() == [1.0] * 6


def test_small_sample_intervals_are_not_degenerate(tmp_path: Path) -> None:
    """8 exams, perfectly ranked: no AUC interval is claimed, and the sensitivity / specificity
    intervals (Wilson) stay wide instead of collapsing to 1.000-1.000."""
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.where(truth[:, None] == 1, 0.9, 0.1) * np.ones((8, 6))
    exams = pd.DataFrame(probs, columns=PROB_COLUMNS).assign(study_uid=[f"1.2.{k}" for k in range(8)])
    exams.to_csv(tmp_path / "exams.csv", index=False)
    plain = pd.DataFrame(np.repeat(truth[:, None], 6, axis=1), columns=list(LABELS)).assign(
        study_uid=exams["study_uid"])
    plain.to_csv(tmp_path / "labels.csv", index=False)
    scores = score_exams(tmp_path / "exams.csv", tmp_path / "labels.csv", n_boot=200)["labels"]["any"]
    assert scores["auc"] == 1.0
    assert scores["auc_low"] is None and scores["auc_high"] is None
    assert scores["auc_note"] == "no interval: 4 positive and 4 negative exams (one is given from 10 of each)"
    assert scores["sensitivity"] == 1.0 and scores["sensitivity_high"] == 1.0
    assert 0.4 < scores["sensitivity_low"] < 0.6  # Wilson 95 % for 4 of 4: 0.510
    assert scores["specificity_low"] == pytest.approx(wilson_interval(4, 4)[0])

