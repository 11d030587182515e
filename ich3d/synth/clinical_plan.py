"""What a synthetic clinical export will hold, decided before any pixel is drawn: settings, studies,
their series and quirks (ich3d.synth.clinical writes it).

Patients, vendors, which studies are positive or carry a thin, contrast, reformat or repeat series,
and which series carry which RSNA quirk come from one generator seeded with (seed, 1000), in exact
shares, so small exports still hold every kind; each study then renders from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ich3d.constants import LABELS
from ich3d.errors import ConfigError
from ich3d.synth.plan import SynthConfig

#: Series kinds in SeriesNumber order and the role a reader should give each.
ROLES: dict[str, str] = {
    "localizer": "localizer", "thick": "axial", "thin": "axial", "bone": "bone_kernel", "reformat": "reformat",
    "contrast": "contrast", "repeat": "too_short", "dose": "non_ct",
}  # fmt: skip
#: The export's folder name of each series kind (file names restart at CT000000.dcm in each).
SERIES_FOLDERS: dict[str, str] = {
    "localizer": "Topogram", "thick": "CT 5mm plain", "thin": "CT 1.25mm plain", "bone": "CT BONE",
    "reformat": "CT COR 3mm", "contrast": "CT 5mm C+", "repeat": "CT 5mm plain repeat", "dose": "Dose Report",
}  # fmt: skip
#: The kinds of stacked axial CT images: they get image labels and may carry the RSNA quirks.
AXIAL_KINDS: tuple[str, ...] = ("thick", "thin", "bone", "contrast", "repeat")
#: Series kinds only some studies have, with the ClinicalConfig field giving their share.
OPTIONAL_KINDS: dict[str, str] = {"thin": "thin_fraction", "reformat": "reformat_fraction",
                                  "contrast": "contrast_fraction", "repeat": "repeat_fraction"}  # fmt: skip
#: Share of the axial series given each quirk value (at least one series each when quirks are on); a
#: series without one stores its pixels the vendor's way, with one window pair, explicit VR.
QUIRK_SHARES: dict[str, dict[str, float]] = {
    "pixels": {"wrapped12": 0.1},
    "window": {"multi": 0.15, "absent": 0.1},
    "syntax": {"implicit": 0.15},
}
#: Share of the studies scanned with gantry tilt (all their axial series and the reformat follow it).
TILT_SHARE = 0.2
#: Number of scanner vendors (ich3d.synth.clinical_series.VENDORS); patients cycle through them.
N_VENDORS = 3


@dataclass(frozen=True)
class ClinicalConfig:
    """Settings of a synthetic clinical export.

    Attributes:
        n_studies: studies (one exam each; some patients have two).
        image_size: rows == columns of the axial and reformatted images (the dose report is 512 x 512).
        seed: everything is drawn from it.
        thin_fraction, reformat_fraction, contrast_fraction, repeat_fraction: share of the studies with a
            1.25 mm thin series, a coronal reformat, a contrast series, a short motion repeat (each kind
            in at least one study when its share is above 0).
        positive_fraction: share of the studies with hemorrhage (exact, at least one when above 0).
        follow_up_fraction: share of the studies that are a patient's second study (at most 0.5).
        subtype_probability: chance of each subtype in a positive study, LABELS[1:] order (the RSNA
            layout's mix by default).
        reader_disagreement: share of the exams where one of the three readers reads one subtype
            differently (the majority stays the truth).
        quirks: write the RSNA quirks (QUIRK_SHARES, TILT_SHARE).
    """

    n_studies: int = 8
    image_size: int = 512
    seed: int = 0
    thin_fraction: float = 0.75
    reformat_fraction: float = 0.25
    contrast_fraction: float = 0.25
    repeat_fraction: float = 0.15
    positive_fraction: float = 0.5
    follow_up_fraction: float = 0.2
    subtype_probability: tuple[float, ...] = SynthConfig.subtype_probability
    reader_disagreement: float = 0.2
    quirks: bool = True

    def __post_init__(self) -> None:
        shares = ("thin_fraction", "reformat_fraction", "contrast_fraction", "repeat_fraction", "positive_fraction",
                  "reader_disagreement")  # fmt: skip
        problems = [f"{name} must be in [0, 1]" for name in shares if not _number(getattr(self, name), 0.0, 1.0)]
        if not _number(self.follow_up_fraction, 0.0, 0.5):
            problems.append("follow_up_fraction must be in [0, 0.5] (a patient has at most two studies)")
        for name, low, high in (("n_studies", 1, 9999), ("image_size", 32, 1024), ("seed", 0, 2**63 - 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                problems.append(f"{name} must be an integer in [{low}, {high}]")
        probs = self.subtype_probability
        if len(probs) != len(LABELS) - 1 or not all(_number(p, 0.0, 1.0) for p in probs) or not any(probs):
            problems.append(f"subtype_probability needs {len(LABELS) - 1} values in [0, 1], not all 0")
        if problems:
            raise ConfigError(f"Invalid clinical-export setting: {'; '.join(problems)} (got {self}).")


def _number(value: object, low: float, high: float) -> bool:
    """Whether `value` is a real number (not a bool) in [low, high]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class StudyPlan:
    """What one study will be, decided before any pixel is drawn (see `plan_export`).

    Attributes:
        index: 0-based position in the export. patient: patient number (heads are drawn per patient).
        patient_id: PACS-style PatientID ("SYN" + 7 digits; no names, no birth dates).
        vendor: index into ich3d.synth.clinical_series.VENDORS.
        category: the CQ500-style batch of the reads, "B1" or "B2".
        positive: has hemorrhage. tilted: scanned with gantry tilt.
        days: study date, days after 2019-01-01 (a patient's second study comes later).
        kinds: its series kinds, in SeriesNumber order (ROLES' order).
        quirks: kind -> {QUIRK_SHARES key: value}, only for the series given a quirk.
    """

    index: int
    patient: int
    patient_id: str
    vendor: int
    category: str
    positive: bool
    tilted: bool
    days: int
    kinds: tuple[str, ...]
    quirks: dict[str, dict[str, str]]

    @property
    def name(self) -> str:
        """The reads' name, CQ500 style: "SYN-CT-1" for the first study."""
        return f"SYN-CT-{self.index + 1}"

    @property
    def folder(self) -> str:
        """The study's folder in the export: "S0001_SYN0123456"."""
        return f"S{self.index + 1:04d}_{self.patient_id}"


def plan_export(config: ClinicalConfig) -> list[StudyPlan]:
    """Decide the patients, vendors, series kinds, positives and quirks of every study."""
    rng = np.random.default_rng([config.seed, 1000])
    n = config.n_studies
    follow_up = _follow_ups(rng, n, config.follow_up_fraction)
    has = {kind: pick_exactly(rng, n, getattr(config, share)) for kind, share in OPTIONAL_KINDS.items()}
    positive = pick_exactly(rng, n, config.positive_fraction)
    tilted = pick_exactly(rng, n, TILT_SHARE if config.quirks else 0.0)
    category = rng.permutation(n) % 2
    vendor_offset = int(rng.integers(N_VENDORS))
    kinds = [tuple(k for k in ROLES if k not in has or has[k][i]) for i in range(n)]
    quirks = _series_quirks(rng, kinds, config.quirks)
    plans: list[StudyPlan] = []
    ids: list[str] = []
    for i in range(n):
        if follow_up[i]:
            days = plans[-1].days + int(rng.integers(1, 30))
        else:
            ids.append(_patient_id(rng, ids))
            days = int(rng.integers(0, 1800))
        patient = len(ids) - 1
        plans.append(StudyPlan(i, patient, ids[patient], (vendor_offset + patient) % N_VENDORS, f"B{category[i] + 1}",
                               bool(positive[i]), bool(tilted[i]), days, kinds[i], quirks[i]))  # fmt: skip
    return plans


def pick_exactly(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """(n,) bool, True for round(share * n) random studies (at least one when share > 0)."""
    count = 0 if share == 0 else min(n, max(1, round(share * n)))
    return rng.permutation(n) < count


def _follow_ups(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """(n,) bool: study i is the second study of the patient of study i - 1 (never a third)."""
    wanted = 0 if share == 0 or n < 2 else max(1, round(share * n))
    follow_up = np.zeros(n, dtype=bool)
    for i in rng.permutation(np.arange(1, n)):
        if follow_up.sum() == wanted:
            break
        neighbours = follow_up[i - 1] or (i + 1 < n and follow_up[i + 1])
        follow_up[i] = not neighbours
    return follow_up


def _series_quirks(rng: np.random.Generator, kinds: list[tuple[str, ...]], on: bool) -> list[dict[str, dict[str, str]]]:
    """Per study, kind -> quirks: each QUIRK_SHARES value on its share of the axial series (at least one)."""
    slots = [(study, kind) for study, present in enumerate(kinds) for kind in present if kind in AXIAL_KINDS]
    quirks: list[dict[str, dict[str, str]]] = [{} for _ in kinds]
    for key, shares in QUIRK_SHARES.items() if on else ():
        order, start = rng.permutation(len(slots)), 0
        for value, share in shares.items():
            count = min(len(slots) - start, max(1, round(share * len(slots))))
            for slot in order[start : start + count]:
                study, kind = slots[slot]
                quirks[study].setdefault(kind, {})[key] = value
            start += count
    return quirks


def _patient_id(rng: np.random.Generator, used: list[str]) -> str:
    """A fresh PatientID "SYN" + 7 digits."""
    while True:
        value = f"SYN{int(rng.integers(10**7)):07d}"
        if value not in used:
            return value
