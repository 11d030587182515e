"""The one place the node calls the model: a study's folder → its exam result (docs/design.md §13).

The study is read by exactly the code path of ``ich3d infer --dicom-dir``
(:meth:`ich3d.inference.predictor.Predictor.predict_folder`: header pass, series roles and choice, thin
slabs, the exam table of docs/design.md §11) with one :class:`~ich3d.inference.predictor.Predictor`
built at start and kept warm: the node has no second pipeline and loads the model once. The operating
thresholds are the run's (docs/design.md §4) unless the serve config gives one ``threshold``. What the model must not read gets a *not analysed* result with the reason, as the
commercial triage products do (adult non-contrast head CT only): no usable series (only a topogram, a
dose report, bone-kernel or reformatted series, another modality), or only a contrast-enhanced or a
too-short series (``infer`` falls back to those; the node does not answer from them).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.inference.exams import exam_flags
from ich3d.inference.outputs import PROB_COLUMNS

ANALYSED, NOT_ANALYSED = "analysed", "not analysed"
MAX_KEY_IMAGES = 3
_NOT_READ = {"contrast": "only a contrast-enhanced series: the model reads non-contrast head CT",
             "too_short": "only a series too short to cover the head"}


@dataclass(frozen=True)
class StudyAnalysis:
    """The model's answer for one study.

    Attributes:
        status: :data:`ANALYSED` or :data:`NOT_ANALYSED`.
        reason: why not analysed, or notes on an analysed study (unreadable slices...); "" otherwise.
        reason_code: why not analysed, as a key: ``no-usable-image``, ``no-usable-series``, ``contrast``,
            ``too_short``.
        probabilities: label → exam probability (empty when not analysed).
        threshold: operating threshold of each label (the finding is ``any`` at or above its own).
        series_uid: the series read.
        key_sop_uid: the key slice (highest p(any)); label_keys: per label, the slice of its highest probability.
        strip: (n,) p(any) per slice of the series read, in slice order.
        heatmaps: SOPInstanceUID of each key slice → (rows, cols) float32 >= 0, the Grad-CAM on the slice's
            own pixel grid of the first label it is the key slice of (positive studies only).
    """

    status: str
    reason: str
    probabilities: dict[str, float]
    threshold: dict[str, float]
    series_uid: str | None = None
    key_sop_uid: str | None = None
    label_keys: dict[str, str] | None = None
    strip: tuple[float, ...] = ()
    reason_code: str = ""
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def finding(self) -> str | None:
        """``present`` / ``absent`` at the operating threshold of ``any``; None when not analysed."""
        if self.status != ANALYSED:
            return None
        return "present" if self.probabilities["any"] >= self.threshold["any"] else "absent"

    @property
    def flagged(self) -> list[str]:
        """Subtypes at or above their thresholds, on a positive study (:func:`exam_flags`, as ``exams.csv``)."""
        if self.status != ANALYSED:
            return []
        flags = exam_flags(np.array([self.probabilities[name] for name in LABELS]),
                           np.array([self.threshold[name] for name in LABELS]))
        return [name for name, flag in zip(LABELS[1:], flags[1:]) if flag]

    def __post_init__(self) -> None:
        if self.status == ANALYSED and not self.probabilities:
            raise ValueError("an analysed study has probabilities")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "finding": self.finding, "flagged": self.flagged,
                "probabilities": self.probabilities, "threshold": self.threshold, "series_uid": self.series_uid,
                "key_sop_uid": self.key_sop_uid, "label_keys": self.label_keys, "strip": list(self.strip)}


class Analyser:
    """Reads studies with one run's models, loaded once.

    Args:
        run: run folder, fold folder or checkpoint (as ``ich3d infer --run``).
        device: torch device, None for CUDA when available.
        threshold: one operating threshold for every label; None: the run's own (per label).
    """

    def __init__(self, run: Path, device: str | None, threshold: float | None) -> None:
        from ich3d.inference.job import PredictOptions
        from ich3d.inference.predictor import Predictor, RuntimeOptions
        from ich3d.models.io import model_checkpoints

        self.run = Path(run)
        self.fingerprint = _fingerprint(model_checkpoints([self.run]))
        # one process reads a study's few hundred files; no data-loader process per study
        self.predictor = Predictor.from_runs([self.run], RuntimeOptions(device=device, workers=1, loader_workers=0))
        run_thresholds = self.predictor.operating.threshold
        self.thresholds = {name: float(threshold if threshold is not None else run_thresholds[j])
                           for j, name in enumerate(LABELS)}
        self.options = PredictOptions(exam_threshold=threshold)

    def analyse(self, study_folder: Path, work: Path) -> StudyAnalysis:
        """Reads the instances in ``study_folder`` as ``ich3d infer --dicom-dir`` does (output in ``work``,
        removed afterwards)."""
        from ich3d.errors import InputError

        shutil.rmtree(work, ignore_errors=True)
        try:
            try:
                result = self.predictor.predict_folder(study_folder, work, self.options)
            except InputError as exc:  # no file of the study is a usable CT image (dose reports only...)
                return StudyAnalysis(NOT_ANALYSED, f"no usable CT image ({exc})", {}, self.thresholds,
                                     reason_code="no-usable-image")
            exams = result.exams.to_dict("records")
            if len(exams) != 1:
                raise AssertionError(f"{len(exams)} exams in one study's folder")
            analysis = self._answer(exams[0], result.predictions)
            if analysis.finding == "present":
                read = result.predictions[result.predictions["series_id"] == exams[0]["series_id"]]
                analysis = replace(analysis, heatmaps=self._heatmaps(analysis, read, result.dataset))
            return analysis
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _answer(self, exam: dict[str, Any], predictions: pd.DataFrame) -> StudyAnalysis:
        if exam["status"] == "no usable series":
            return StudyAnalysis(NOT_ANALYSED, f"no axial non-contrast CT series ({exam['reason']})", {},
                                 self.thresholds, reason_code="no-usable-series")
        if exam["role"] in _NOT_READ:
            return StudyAnalysis(NOT_ANALYSED, _NOT_READ[exam["role"]], {}, self.thresholds, exam["series_uid"],
                                 reason_code=exam["role"])
        rows = predictions[predictions["series_id"] == exam["series_id"]].sort_values("slice_index")
        probabilities = {name: float(exam[column]) for name, column in zip(LABELS, PROB_COLUMNS)}
        label_keys = {name: str(rows["sop_uid"].iloc[int(rows[column].to_numpy().argmax())])
                      for name, column in zip(LABELS, PROB_COLUMNS)}
        return StudyAnalysis(ANALYSED, exam.get("reason") or "", probabilities, self.thresholds, exam["series_uid"],
                             exam["key_sop_uid"], label_keys, tuple(rows["p_any"].astype(float).round(4)))


    def _heatmaps(self, analysis: StudyAnalysis, read: pd.DataFrame, dataset: Path) -> dict[str, np.ndarray]:
        """Grad-CAM of each key slice (:func:`key_slices`) by the warm predictor's members, for the first label
        it is the key slice of, on the slice's own pixel grid (``read``: the per-image rows of the series read)."""
        from ich3d.inference.explainer import Explainer

        keys = key_slices(analysis)
        image_of = dict(zip(read["sop_uid"], read["image_id"]))
        labels = tuple(name for name in LABELS if any(name in wanted for wanted in keys.values()))
        explained = Explainer(self.predictor, dataset).explain([image_of[uid] for uid in keys], labels)
        return {uid: explanation.heatmaps[labels.index(wanted[0])]
                for (uid, wanted), explanation in zip(keys.items(), explained)}


def key_slices(analysis: StudyAnalysis) -> dict[str, list[str]]:
    """SOPInstanceUID → the labels it is the key slice of (``any`` first, then flagged subtypes; at most
    :data:`MAX_KEY_IMAGES` slices)."""
    slices: dict[str, list[str]] = {analysis.key_sop_uid: ["any"]}
    for name in analysis.flagged:
        uid = analysis.label_keys[name]
        if uid in slices or len(slices) < MAX_KEY_IMAGES:
            slices.setdefault(uid, []).append(name)
    return slices


def _fingerprint(checkpoints: list[Path]) -> str:
    """The first 12 hex digits of the SHA-256 over the model files' bytes (names the model in every answer)."""
    digest = hashlib.sha256()
    for path in checkpoints:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]
