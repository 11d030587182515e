"""Names, weights, windows and file-layout constants shared by every module (no imports of torch)."""

from __future__ import annotations

from enum import StrEnum

#: The six RSNA 2019 labels, in submission order.
LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: Short names of the labels, as radiologists write them.
SHORT_NAMES: dict[str, str] = {"any": "any", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
                               "subarachnoid": "SAH", "subdural": "SDH"}
#: Index columns holding the labels (nullable float: NaN = unlabeled).
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{name}" for name in LABELS)
#: Weights of the RSNA weighted multi-label log loss (``any`` counts twice).
LABEL_WEIGHTS: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs, as Kaggle scored.
LOG_LOSS_EPS: float = 1e-7

#: Display windows as (center, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "soft_tissue": (40.0, 380.0),
    "bone": (600.0, 2800.0),
}
#: The "BSB" three-channel image of the RSNA 2019 solutions.
BSB_WINDOWS: tuple[str, ...] = ("brain", "subdural", "soft_tissue")

#: Slice spacing (mm) of RSNA's series: the training thickness assumed where none is recorded.
RSNA_SLICE_SPACING_MM: float = 5.0

#: The largest side (pixels) of a cached slice or a network input: twice a CT's usual 512, and a bound
#: checked before anything is allocated (a (S, S) float32 slice of 100,000 pixels would need 40 GB).
MAX_IMAGE_SIZE: int = 1024

#: Value written into the HU cache for a slice whose pixels could not be read.
#: Such slices are always flagged in the index and never used as if they were real.
MISSING_HU: int = -1024
#: The HU range kept in the int16 cache.
HU_MIN: int = -1024
HU_MAX: int = 3071


class Status(StrEnum):
    """Why an input file is, or is not, usable (``status`` column of the index)."""

    OK = "ok"
    CORRUPT = "corrupt"  # DICOM header readable, pixel data truncated or undecodable
    NOT_DICOM = "not_dicom"  # not a DICOM file at all
    NO_PIXELS = "no_pixels"  # DICOM without Pixel Data
    UNSUPPORTED_SYNTAX = "unsupported_syntax"  # transfer syntax we cannot decode
    UNSUPPORTED_IMAGE = "unsupported_image"  # e.g. colour, multi-frame
    MISSING_GEOMETRY = "missing_geometry"  # no ImagePositionPatient / orientation
    MISSING_RESCALE = "missing_rescale"  # CT slice without RescaleIntercept (HU unknown)
    DUPLICATE = "duplicate"  # the same image (SOPInstanceUID) as another file, which is used
    READ_ERROR = "read_error"  # I/O error (permissions, vanished file)


# Exit codes of the CLI (0 success; click itself uses 2 for usage errors).
EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
