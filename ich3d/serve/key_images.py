"""Key images of a positive study: Secondary Capture images a PACS viewer shows beside the study.

One image per key slice (the slice of highest p(any), then the peak slice of each flagged subtype
when it is another slice; at most :data:`~ich3d.serve.analysis.MAX_KEY_IMAGES`): the slice in the brain
window (centre 40, width 80 HU) with the Grad-CAM of its label over it (jet, blended in proportion to the
map), upscaled to at least 512 pixels, the exam's probabilities written on it
and a banner saying it is a research result, not for diagnostic use. ``BurnedInAnnotation`` is YES
and the Source Image Sequence references the slice. Each image also yields a PNG thumbnail for the
worklist.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ich3d.constants import LABELS
from ich3d.inference.explainer import heat_overlay
from ich3d.serve.analysis import StudyAnalysis, key_slices

SC_SERIES_NUMBER = 9902
BANNER = "RESEARCH RESULT - NOT FOR DIAGNOSTIC USE"
BRAIN_WINDOW = (40.0, 80.0)
MIN_SIDE = 512
THUMBNAIL_SIDE = 384
_SHORT = {"any": "ICH", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
          "subarachnoid": "SAH", "subdural": "SDH"}


def brain_window(ds: Any) -> np.ndarray:
    """(rows, cols) uint8: the slice's HU in the brain window."""
    from pydicom.pixels import apply_rescale

    hu = apply_rescale(ds.pixel_array.astype(np.float32), ds)
    centre, width = BRAIN_WINDOW
    return (np.clip((hu - centre + width / 2) / width, 0, 1) * 255).astype(np.uint8)


def render(gray: np.ndarray, analysis: StudyAnalysis, labels: list[str], heat: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the windowed slice (with its Grad-CAM) upscaled, the banner on top, the probabilities below.

    Args:
        gray: (rows, cols) uint8 windowed slice.
        labels: what this slice is the key slice of.
        heat: (rows, cols) float >= 0, the Grad-CAM of ``labels[0]`` on the slice's grid, or None.
    """
    from PIL import Image, ImageDraw, ImageFont

    scale = max(1, int(np.ceil(MIN_SIDE / max(gray.shape))))
    shown = heat_overlay(gray, heat) if heat is not None and heat.shape == gray.shape else gray
    image = Image.fromarray(shown).convert("RGB").resize((gray.shape[1] * scale, gray.shape[0] * scale),
                                                         Image.Resampling.BILINEAR)
    side = image.width
    font = ImageFont.load_default(size=max(12, side // 36))
    line = font.size + 6
    canvas = Image.new("RGB", (side, image.height + 4 * line), "black")
    canvas.paste(image, (0, 2 * line))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, side, 2 * line - 2), fill=(160, 0, 0))
    draw.text((6, 2), BANNER, font=font, fill="white")
    draw.text((6, 2 + line), f"ich3d: hemorrhage suspected; key slice of {', '.join(_SHORT[n] for n in labels)}",
              font=font, fill="white")
    probabilities = "  ".join(f"{_SHORT[n]} {analysis.probabilities[n]:.2f}" for n in LABELS)
    flagged = ", ".join(_SHORT[n] for n in analysis.flagged) or "none"
    bottom = image.height + 2 * line
    draw.text((6, bottom + 2), probabilities, font=font, fill=(255, 220, 0))
    draw.text((6, bottom + 2 + line), f"threshold {analysis.threshold['any']:.2f}; subtypes flagged: {flagged}",
              font=font, fill=(255, 220, 0))
    return np.asarray(canvas)


def thumbnail(rgb: np.ndarray) -> bytes:
    """PNG bytes of ``rgb`` (H, W, 3) shrunk to :data:`THUMBNAIL_SIDE` pixels wide."""
    from PIL import Image

    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE * 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_key_images(analysis: StudyAnalysis, slices: dict[str, Any]) -> list[tuple[Any, bytes]]:
    """The SC key images of a positive study and their thumbnails.

    Args:
        analysis: a positive answer.
        slices: SOPInstanceUID → data set (with pixels) of every slice of :func:`key_slices`.

    Returns:
        [(highdicom ``SCImage``, PNG thumbnail bytes)], the ``any`` key slice first.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset

    series_uid = hd.UID()
    images = []
    for number, (uid, labels) in enumerate(key_slices(analysis).items(), 1):
        source = slices[uid]
        rgb = render(brain_window(source), analysis, labels, analysis.heatmaps.get(uid))
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=number, manufacturer="ich3d", patient_orientation=("L", "P"),
            series_description="ich3d key images (research use)", transfer_syntax_uid="1.2.840.10008.1.2.1")
        image.BurnedInAnnotation = "YES"
        image.ImageComments = f"ich3d key slice of {', '.join(labels)}; {BANNER}"
        reference = Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, uid
        image.SourceImageSequence = [reference]
        image.DerivationDescription = ("ich3d: brain window of the key slice, Grad-CAM of p(" + labels[0] + ") "
                                       "overlaid, probabilities burned in")
        if "SpecificCharacterSet" in source:
            image.SpecificCharacterSet = source.SpecificCharacterSet
        images.append((image, thumbnail(rgb)))
    return images
