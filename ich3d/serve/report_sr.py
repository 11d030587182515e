"""The answer as a DICOM Comprehensive 3D SR following TID 1500, built with highdicom (docs/design.md §13).

One measurement group per exam: the finding type *Intracranial hemorrhage* (SNOMED CT 1386000; not
274100004, which is intracerebral only), a qualitative evaluation Present (52101004) / Absent
(272519000) at the model's operating threshold of p(any), the six labels' exam probabilities as
measurements (unit ``1``), each named for what it is (``Probability of subdural hemorrhage``: the
DCM concept "Probability" alone would not say of what), each referencing the slice where that
label peaks, the key slice (highest p(any)) as the group's source image, and the algorithm (ich3d,
its version, the model's fingerprint, the threshold). A study the model did not read gets the same
group with the qualitative evaluation *Not analysed* and its reason instead of a finding. A result
that replaces an earlier one lists it in the Predecessor Documents Sequence and says so in its
series description. Concepts without a standard code use the private scheme ``99ICH3D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ich3d.constants import LABELS
from ich3d.serve.analysis import ANALYSED, StudyAnalysis

SCHEME = "99ICH3D"
MANUFACTURER = "ich3d"
SR_SERIES_NUMBER = 9901
_LABEL_CODE = {"any": "P-ICH", "epidural": "P-EDH", "intraparenchymal": "P-IPH", "intraventricular": "P-IVH",
               "subarachnoid": "P-SAH", "subdural": "P-SDH"}
_LABEL_MEANING = {"any": "intracranial hemorrhage (any type)", "epidural": "epidural hemorrhage",
                  "intraparenchymal": "intraparenchymal hemorrhage", "intraventricular": "intraventricular hemorrhage",
                  "subarachnoid": "subarachnoid hemorrhage", "subdural": "subdural hemorrhage"}
#: Reasons a study is not analysed, as codes of the private scheme (meaning: at most 64 characters).
NOT_ANALYSED_CODES = {"no-usable-image": ("NA-NO-IMAGE", "Not analysed: no usable CT image"),
                      "no-usable-series": ("NA-NO-SERIES", "Not analysed: no axial non-contrast CT series"),
                      "contrast": ("NA-CONTRAST", "Not analysed: contrast-enhanced series only"),
                      "too_short": ("NA-TOO-SHORT", "Not analysed: series too short to cover the head")}


@dataclass(frozen=True)
class Provenance:
    """What identifies the answer's author and history.

    Attributes:
        version: ich3d's version.
        fingerprint: the model files' fingerprint (:attr:`ich3d.serve.analysis.Analyser.fingerprint`).
        run_name: the run folder's name.
        supersedes: the SR data set this one replaces (None for a study's first answer).
    """

    version: str
    fingerprint: str
    run_name: str
    supersedes: Any = None


def _codes() -> dict[str, Any]:
    from pydicom.sr.coding import Code

    return {"ich": Code("1386000", "SCT", "Intracranial hemorrhage"), "present": Code("52101004", "SCT", "Present"),
            "absent": Code("272519000", "SCT", "Absent"), "head": Code("69536005", "SCT", "Head"),
            "procedure": Code("24725-4", "LN", "CT Head"), "unit": Code("1", "UCUM", "no units"),
            "status": Code("STATUS", SCHEME, "ich3d analysis status")}


def build_sr(analysis: StudyAnalysis, evidence: dict[str, Any], provenance: Provenance, uids: tuple[str, str]) -> Any:
    """The SR of one study's answer.

    Args:
        analysis: the model's answer.
        evidence: SOPInstanceUID → data set (headers are enough) of every slice the SR references, or for a
            study not analysed one instance of the study (its patient and study modules are copied).
        provenance: version, model fingerprint, what it supersedes.
        uids: (SeriesInstanceUID, SOPInstanceUID) of the SR.

    Returns:
        A ``highdicom.sr.Comprehensive3DSR``.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification, Comprehensive3DSR, DeviceObserverIdentifyingAttributes, Measurement,
        MeasurementReport, MeasurementsAndQualitativeEvaluations, ObservationContext, ObserverContext,
        QualitativeEvaluation, SourceImageForMeasurement, SourceImageForMeasurementGroup, TrackingIdentifier)
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    code = _codes()
    algorithm = AlgorithmIdentification(name="ich3d", version=provenance.version, parameters=[
        f"model {provenance.fingerprint}", f"run {provenance.run_name}", f"threshold any {analysis.threshold['any']:g}"])
    evaluation_name = code["ich"] if analysis.status == ANALYSED else code["status"]
    evaluation_value = (code[analysis.finding] if analysis.status == ANALYSED else
                        Code(NOT_ANALYSED_CODES[analysis.reason_code][0], SCHEME,
                             NOT_ANALYSED_CODES[analysis.reason_code][1]))

    def source(uid: str, cls: Any) -> Any:
        return cls(evidence[uid].SOPClassUID, uid)

    measurements = [Measurement(
        name=Code(_LABEL_CODE[name], SCHEME, f"Probability of {_LABEL_MEANING[name]}"), value=analysis.probabilities[name],
        unit=code["unit"],
        referenced_images=[source(analysis.label_keys[name], SourceImageForMeasurement)])
        for name in LABELS] if analysis.status == ANALYSED else None
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="ich3d exam result"),
        finding_type=code["ich"], algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(code["head"])], measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(evaluation_name, evaluation_value)],
        source_images=[source(analysis.key_sop_uid, SourceImageForMeasurementGroup)] if analysis.key_sop_uid else None)
    device = ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=(
        DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="ich3d", manufacturer_name=MANUFACTURER,
                                            model_name=f"ich3d {provenance.version} model {provenance.fingerprint}")))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                               procedure_reported=code["procedure"], imaging_measurements=[group])
    description = "ich3d ICH result" + (" (supersedes an earlier result)" if provenance.supersedes is not None else "")
    first = next(iter(evidence.values()))
    sr = Comprehensive3DSR(
        evidence=list(evidence.values()), content=report, series_instance_uid=uids[0], series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids[1], instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description=description,
        previous_versions=[provenance.supersedes] if provenance.supersedes is not None else None)
    if "SpecificCharacterSet" in first:
        sr.SpecificCharacterSet = first.SpecificCharacterSet
    return sr
