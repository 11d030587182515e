"""One synthetic clinical study written the way a scanner and a PACS export write it: every series of the
exam with vendor-typical headers (ich3d.synth.clinical writes the export and its truth).

A study holds a two-image topogram (lateral and AP localizer), the 5 mm soft-kernel axial series, often
a 1.25 mm thin series of the same range, a bone-kernel copy of the 5 mm geometry, sometimes a coronal
reformat, a contrast series and a three-slice motion repeat, and a dose report (an RGB secondary capture).
CT images go through ich3d.synth.dicom_writer (its template, its pixel encoders with the RSNA quirks,
write_slice); :data:`VENDORS` adds what Siemens, GE and Philips scanners write. UIDs live under
pydicom's root and are hashes of the export's settings and the image's place in it: deterministic, and
unique across the export while file names repeat in every series folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import cast

import numpy as np
from pydicom import dcmwrite
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from ich3d.constants import LABELS
from ich3d.layout import ClinicalExportFolder
from ich3d.synth import clinical_images as images
from ich3d.synth.clinical_plan import (
    AXIAL_KINDS,
    ROLES,
    SERIES_FOLDERS,
    ClinicalConfig,
    StudyPlan,
)
from ich3d.synth.dicom_writer import encoder, instance_numbers, template, write_slice
from ich3d.synth.phantom import SliceGrid
from ich3d.synth.plan import SeriesPlan


@dataclass(frozen=True)
class Vendor:
    """What one manufacturer's scanner writes.

    Attributes:
        kernels: ConvolutionKernel of the soft-tissue, bone and localizer reconstructions.
        pixels: how its CT images store pixels (a pixel kind of ich3d.synth.dicom_writer.encoder).
        descriptions: SeriesDescription of each series kind.
        image_types: ImageType of original axial images, localizers and reformats.
        study_descriptions: StudyDescription without and with a contrast series.
        agent: ContrastBolusAgent of contrast series; plain_agent: the one of other CT series (GE writes
            the element empty), None when the element is left out.
        dose_modality, dose_number: Modality and SeriesNumber of its dose report.
    """

    manufacturer: str
    model: str
    kernels: tuple[str, str, str]
    pixels: str
    descriptions: dict[str, str]
    image_types: dict[str, tuple[str, ...]]
    study_descriptions: tuple[str, str]
    agent: str
    plain_agent: str | None
    dose_modality: str
    dose_number: int


VENDORS: tuple[Vendor, ...] = (
    Vendor("SIEMENS", "SOMATOM Definition AS+", ("H31s", "H70h", "T20s"), "unsigned12",
           {"localizer": "Topogram  0.6  T20s", "thick": "Head  5.0  H31s", "thin": "Head  1.25  H31s",
            "bone": "Bone  5.0  H70h", "reformat": "Cor  3.0  H31s MPR", "contrast": "Head C+  5.0  H31s",
            "repeat": "Head  5.0  H31s", "dose": "Patient Protocol"},
           {"axial": ("ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"),
            "localizer": ("ORIGINAL", "PRIMARY", "LOCALIZER", "CT_SOM5 TOP"),
            "reformat": ("DERIVED", "SECONDARY", "MPR")},
           ("Head^HeadSeq (Adult)", "Head^HeadSeq C+ (Adult)"), "APPLIED", None, "CT", 501),
    Vendor("GE MEDICAL SYSTEMS", "LightSpeed VCT", ("STANDARD", "BONE", "STANDARD"), "signed",
           {"localizer": "Scout", "thick": "5mm STND", "thin": "1.25mm STND", "bone": "5mm Bone",
            "reformat": "COR 3mm REFORMAT", "contrast": "5mm STND C+", "repeat": "5mm STND", "dose": "Dose Report"},
           {"axial": ("ORIGINAL", "PRIMARY", "AXIAL"), "localizer": ("ORIGINAL", "PRIMARY", "LOCALIZER"),
            "reformat": ("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE")},
           ("CT HEAD WO CONTRAST", "CT HEAD WO+W CONTRAST"), "OMNIPAQUE 350", "", "CT", 999),
    Vendor("Philips", "Brilliance 64", ("UB", "YC", "UB"), "unsigned",
           {"localizer": "Surview", "thick": "Brain 5mm", "thin": "Brain 1.25mm", "bone": "Brain 5mm Bone",
            "reformat": "Brain Cor 3mm MPR", "contrast": "Brain 5mm C+", "repeat": "Brain 5mm", "dose": "Dose Info"},
           {"axial": ("ORIGINAL", "PRIMARY", "AXIAL"), "localizer": ("ORIGINAL", "PRIMARY", "LOCALIZER"),
            "reformat": ("DERIVED", "SECONDARY", "MPR")},
           ("Brain", "Brain C+"), "Iohexol 350", None, "OT", 1001),
)  # fmt: skip
SERIES_NUMBERS = {"localizer": 1, "thick": 2, "thin": 3, "bone": 4, "reformat": 5, "contrast": 6, "repeat": 7}
SLICE_THICKNESS = {"localizer": 0.6, "thick": images.THICK_MM, "thin": images.THIN_MM, "bone": images.THICK_MM,
                   "reformat": images.REFORMAT_MM, "contrast": images.THICK_MM, "repeat": images.THICK_MM}  # fmt: skip
#: Window (center, width) of the kinds not read in a brain window, where the series has a single pair.
_WINDOWS = {"bone": ("450", "1500"), "localizer": ("1800", "3600")}
#: Noise of each kind relative to the thick series' (thinner slices are noisier), and whether it is
#: correlated between neighbours (soft kernel) or white (bone kernel).
_NOISE = {"localizer": (2.0, True), "thick": (1.0, True), "thin": (2.0, True), "bone": (3.0, False),
          "reformat": (0.8, True), "contrast": (1.0, True), "repeat": (1.0, True)}  # fmt: skip
_QUIRK_NAMES = {("pixels", "wrapped12"): "wrapped12", ("window", "multi"): "multi_window",
                ("window", "absent"): "no_window", ("syntax", "implicit"): "implicit_vr"}  # fmt: skip


def export_uid(config: ClinicalConfig, *parts: object) -> str:
    """A UID under pydicom's root, a hash of the export's settings and `parts` (e.g. study, kind, image)."""
    return generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["|".join(map(str, ("ich3d-clinical", config, *parts)))])


def _elem(keyword: str, value: object, vr: str | None = None) -> DataElement:
    """A data element by keyword, with its dictionary VR unless `vr` is given."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return DataElement(tag, vr or dictionary_VR(tag), value)


def _orientation(grid: SliceGrid) -> DataElement:
    """ImageOrientationPatient of `grid` (a localizer's second image lies in another plane than the template's)."""
    return _elem("ImageOrientationPatient", [f"{x + 0.0:.6f}" for x in (*grid.row_dir, *grid.col_dir)])


def _merge(*groups: list[DataElement]) -> list[DataElement]:
    """The elements of all groups; a later element replaces an earlier one with the same tag."""
    return list({elem.tag: elem for group in groups for elem in group}.values())


@dataclass(frozen=True)
class _Study:
    """What every series of a study shares: its plan, vendor, UIDs, study-level elements and start time."""

    config: ClinicalConfig
    plan: StudyPlan
    vendor: Vendor
    exam: images.Exam
    elements: list[DataElement]
    date: str  # StudyDate, YYYYMMDD
    seconds: int  # study start, seconds after midnight

    def uid(self, *parts: object) -> str:
        return export_uid(self.config, self.plan.index, *parts)

    def record(self, kind: str) -> dict:
        """The summary of the series `kind`, as far as its plan and vendor decide it (and its header says)."""
        v, dose, axial = self.vendor, kind == "dose", kind in AXIAL_KINDS
        return {
            "study_uid": self.uid("study"), "series_uid": self.uid("series", kind), "kind": kind, "role": ROLES[kind],
            "folder": str(PurePosixPath(ClinicalExportFolder.EXPORT, self.plan.folder, SERIES_FOLDERS[kind])),
            "series_number": v.dose_number if dose else SERIES_NUMBERS[kind], "description": v.descriptions[kind],
            "modality": v.dose_modality if dose else "CT", "manufacturer": v.manufacturer,
            "image_type": ["DERIVED", "SECONDARY", "OTHER"] if dose else list(v.image_types[
                "axial" if axial else kind]),
            "slice_thickness": None if dose else SLICE_THICKNESS[kind],
            "kernel": None if dose else v.kernels[1 if kind == "bone" else 2 if kind == "localizer" else 0],
            "contrast_agent": None if dose else v.agent if kind == "contrast" else v.plain_agent,
            "tilt_degrees": round(self.exam.tilt, 2) if axial else None,
        }  # fmt: skip

    def series_elements(self, kind: str) -> list[DataElement]:
        """Series-level elements of `kind` (the pixel and geometry elements come from the template)."""
        facts = self.record(kind)
        started = min(self.seconds + 90 * self.plan.kinds.index(kind), 86399)
        out = [_elem("ImageType", facts["image_type"]), _elem("SeriesDate", self.date),
               _elem("SeriesTime", _clock(started)), _elem("Modality", facts["modality"]),
               _elem("SeriesDescription", facts["description"]), _elem("SeriesInstanceUID", facts["series_uid"]),
               _elem("SeriesNumber", str(facts["series_number"]))]  # fmt: skip
        if facts["kernel"] is not None:
            out += [_elem("SliceThickness", f"{facts['slice_thickness']:g}"), _elem("KVP", "120"),
                    _elem("ConvolutionKernel", facts["kernel"])]  # fmt: skip
        if facts["tilt_degrees"] is not None:
            out.append(_elem("GantryDetectorTilt", f"{facts['tilt_degrees']:.1f}"))
        if facts["contrast_agent"] is not None:
            out.append(_elem("ContrastBolusAgent", facts["contrast_agent"]))
        return out


def _clock(seconds: int) -> str:
    """DICOM time "HHMMSS" of `seconds` after midnight."""
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _study(rng: np.random.Generator, config: ClinicalConfig, plan: StudyPlan, exam: images.Exam) -> _Study:
    """The study-level header (identifiers, date, vendor; no names, no birth dates)."""
    vendor = VENDORS[plan.vendor]
    seconds = int(rng.integers(6 * 3600, 22 * 3600))
    date = str(np.datetime64("2019-01-01") + np.timedelta64(plan.days, "D")).replace("-", "")
    elements = [
        _elem("SpecificCharacterSet", "ISO_IR 100"), _elem("StudyDate", date),
        _elem("StudyTime", _clock(seconds)),
        _elem("AccessionNumber", f"SYNA{int(rng.integers(10**8)):08d}"), _elem("Manufacturer", vendor.manufacturer),
        _elem("StudyDescription", vendor.study_descriptions["contrast" in plan.kinds]),
        _elem("ManufacturerModelName", vendor.model), _elem("PatientID", plan.patient_id),
        _elem("BodyPartExamined", "HEAD"), _elem("PatientPosition", "HFS"),
        _elem("StudyInstanceUID", export_uid(config, plan.index, "study")),
        _elem("StudyID", str(int(rng.integers(1000, 99999)))),
        _elem("FrameOfReferenceUID", export_uid(config, plan.index, "frame")),
    ]  # fmt: skip
    return _Study(config, plan, vendor, exam, elements, date, seconds)


def n_images(kind: str, exam: images.Exam) -> int:
    """How many images the series `kind` of `exam` has."""
    counts = {"localizer": 2, "thin": len(exam.thin), "repeat": min(images.REPEAT_SLICES, len(exam.thick)), "dose": 1}
    if kind == "reformat":
        return len(images.reformat_planes(exam))
    return counts.get(kind, len(exam.thick))


def _pixels(kind: str, exam: images.Exam, axial: images.AxialImages,
            size: int) -> tuple[list[SliceGrid], np.ndarray, np.ndarray | None]:  # fmt: skip
    """Planes, noise-free values (N, rows, cols) and labels (N, 6) or None of a CT series kind."""
    if kind == "localizer":
        grids, values = images.localizers(exam, size)
        return grids, values - 1024.0, None  # stored 12-bit values, through the CT encoders unchanged
    if kind == "reformat":
        grids = images.reformat_planes(exam)
        return grids, images.render_reformat(exam, grids), None
    if kind == "thin":
        return exam.thin, axial.thin, axial.thin_labels
    n = n_images(kind, exam)
    if kind == "bone":
        hu = images.bone_kernel(axial.thick)
    elif kind == "contrast":
        hu = images.enhance(axial.thick, exam, exam.thick)
    else:  # thick, repeat
        hu = axial.thick[:n]
    return exam.thick[:n], hu, axial.thick_labels[:n]


def _write_ct(folder: Path, rng: np.random.Generator, study: _Study, kind: str, grids: list[SliceGrid],
              values: np.ndarray, sigma: float) -> tuple[list[str], dict]:  # fmt: skip
    """Write one CT series (planes in position order, file numbers in InstanceNumber order, which runs
    head to feet or feet to head). Returns its SOPInstanceUIDs (plane order) and its header facts."""
    plan, quirks = study.plan, study.plan.quirks.get(kind, {})
    pixels = quirks.get("pixels", "unsigned12" if kind == "localizer" else study.vendor.pixels)
    setting = {"pixels": pixels, "window": quirks.get("window", "single"), "syntax": quirks.get("syntax", "explicit")}
    sops = [study.uid("image", kind, k) for k in range(len(grids))]
    series = SeriesPlan("clinical", plan.index, plan.patient, plan.patient_id, study.uid("study"),
                        study.uid("series", kind), tuple(sops), SLICE_THICKNESS[kind], plan.positive,
                        setting)  # fmt: skip
    base, syntax = template(rng, series, grids[0])
    center, width = _WINDOWS.get(kind, (None, None))
    single = center is not None and setting["window"] == "single"
    window = [_elem("WindowCenter", center), _elem("WindowWidth", width)] if single else []
    header = _merge(base, study.elements, study.series_elements(kind), window)
    encode = encoder(rng, pixels, grids[0].rows)
    scale, smooth = _NOISE[kind]
    folder.mkdir(parents=True)
    numbers = cast(list[int], instance_numbers(rng, "ordered", len(grids)))
    for grid, sop, number, image in zip(grids, sops, numbers, values):
        stored = encode(image + images.noise(rng, image.shape, scale * sigma, smooth))
        elements = header if grid.normal @ grids[0].normal > 0.99 else _merge(header, [_orientation(grid)])
        write_slice(folder / ClinicalExportFolder.image_name("CT", number - 1), elements, syntax, sop, number,
                    grid.origin, stored)  # fmt: skip
    names = [name for key, value in setting.items() if (name := _QUIRK_NAMES.get((key, value)))]
    facts = {"pixels": pixels, "quirks": names + (["gantry_tilt"] if kind in AXIAL_KINDS and plan.tilted else []),
             "rows": grids[0].rows, "cols": grids[0].cols, "pixel_spacing": round(grids[0].spacing, 4)}  # fmt: skip
    return sops, facts


def _dose_table(rng: np.random.Generator, study: _Study) -> tuple[list[tuple[str, ...]], float]:
    """The dose report's rows (one per irradiating acquisition: topogram, plain, contrast, repeat) and the total DLP."""
    rows: list[tuple[str, ...]] = [("SERIES", "KV", "MAS", "CTDIVOL", "DLP")]
    total = 0.0
    for kind in ("localizer", "thick", "contrast", "repeat"):
        if kind not in study.plan.kinds:
            continue
        mas = 35.0 if kind == "localizer" else float(rng.uniform(280.0, 380.0))
        ctdi = mas * (0.004 if kind == "localizer" else 0.16)
        length_cm = n_images(kind, study.exam) * images.THICK_MM / 10.0 if kind != "localizer" else 25.0
        dlp = ctdi * length_cm
        total += dlp
        rows.append((str(SERIES_NUMBERS[kind]), "120", f"{mas:.0f}", f"{ctdi:.2f}", f"{dlp:.1f}"))
    rows.append(("TOTAL", "", "", "DLP", f"{total:.1f}"))
    return rows, total


def _write_dose_report(folder: Path, study: _Study, table: list[tuple[str, ...]]) -> None:
    """Write the dose report: an RGB secondary capture of `table` (no patient geometry)."""
    sop, rgb = study.uid("image", "dose", 0), images.dose_report(table)
    ds = Dataset()
    for elem in _merge(study.elements, study.series_elements("dose"), [
        _elem("SOPClassUID", SecondaryCaptureImageStorage), _elem("SOPInstanceUID", sop),
        _elem("ConversionType", "WSD"), _elem("InstanceNumber", "1"), _elem("SamplesPerPixel", 3),
        _elem("PhotometricInterpretation", "RGB"), _elem("PlanarConfiguration", 0), _elem("Rows", rgb.shape[0]),
        _elem("Columns", rgb.shape[1]), _elem("BitsAllocated", 8), _elem("BitsStored", 8), _elem("HighBit", 7),
        _elem("PixelRepresentation", 0), _elem("PixelData", rgb.tobytes(), vr="OB"),
    ]):  # fmt: skip
        ds.add(elem)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True)
    dcmwrite(folder / ClinicalExportFolder.image_name(study.vendor.dose_modality, 0), ds, enforce_file_format=True)


def write_study(export: Path, config: ClinicalConfig, plan: StudyPlan) -> dict:
    """Render and write every series of one study under ``export/<plan.folder>/``.

    Everything is drawn from a generator seeded with (seed, study index) (the head per patient), so the
    files do not depend on which process writes the study.

    Returns:
        ``study``: its summary (name, UIDs, vendor, exam labels, the series a reader should choose, ...);
        ``series``: one summary per series (folder, description, expected role, thickness, kernel,
        images, quirks, ...); ``image_labels``: {SOPInstanceUID: six 0/1 labels} of its axial CT images;
        ``n_files``: files written.
    """
    rng = np.random.default_rng([config.seed, plan.index])
    exam = images.plan_exam(rng, config, plan)
    study = _study(rng, config, plan, exam)
    axial = images.render_axial(exam)
    sigma = float(rng.uniform(3.0, 5.0))  # noise of the 5 mm soft-kernel images, HU
    table, dlp = _dose_table(rng, study)
    records, labels = [], {}
    with disable_value_validation():
        for kind in plan.kinds:
            folder = export / plan.folder / SERIES_FOLDERS[kind]
            record = study.record(kind)
            if kind == "dose":
                _write_dose_report(folder, study, table)
                record.update(n_images=1, sop_class_uid=SecondaryCaptureImageStorage, pixels="rgb", quirks=[])
                records.append(record)
                continue
            grids, values, truth = _pixels(kind, exam, axial, config.image_size)
            sops, facts = _write_ct(folder, rng, study, kind, grids, values, sigma)
            record.update(n_images=len(sops), sop_class_uid=CTImageStorage, **facts)
            if truth is not None:
                labels.update(zip(sops, map(tuple, truth.tolist())))
                depth = sorted(float(g.origin @ g.normal) for g in (grids[0], grids[-1]))
                record.update(z_range=[round(d, 3) for d in depth],
                              positive_slices=dict(zip(LABELS, truth.sum(axis=0).tolist())))  # fmt: skip
            records.append(record)
    summary = {
        "name": plan.name, "study_uid": study.uid("study"), "patient_id": plan.patient_id,
        "folder": str(PurePosixPath(ClinicalExportFolder.EXPORT, plan.folder)),
        "manufacturer": study.vendor.manufacturer, "model": study.vendor.model, "category": plan.category,
        "study_date": study.date, "tilt_degrees": round(exam.tilt, 2),
        "lesions": [lesion.label for lesion in exam.lesions], "labels": dict(zip(LABELS, axial.exam_labels.tolist())),
        "chosen_series_uid": study.uid("series", "thick"), "dlp_mgy_cm": round(dlp, 1),
    }  # fmt: skip
    n_files = sum(record["n_images"] for record in records)
    return {"study": summary, "series": records, "image_labels": labels, "n_files": n_files}
