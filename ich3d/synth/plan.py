"""What a synthetic dataset will hold, decided before any pixel is drawn: settings, series plans, quirks.

Every identifier, patient, slice count and quirk comes from one generator seeded with the config's
seed, so the same config plans the same dataset; each series then renders from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ich3d.constants import LABELS
from ich3d.errors import ConfigError

SPLITS = ("train", "test")
#: Share of the series of a split given each quirk (at least one series each when quirks are on).
QUIRK_SHARES: dict[str, dict[str, float]] = {
    "pixels": {"unsigned": 0.15, "unsigned12": 0.07, "wrapped12": 0.08},  # default "signed"
    "window": {"multi": 0.25, "absent": 0.1},  # default "single"
    "tilt": {"tilted": 0.15},
    "size": {"odd": 0.05},
    "instances": {"shuffled": 0.05, "missing": 0.03},  # default "ordered"
    "syntax": {"implicit": 0.2},  # default "explicit"
}
_DEFAULTS = {"pixels": "signed", "window": "single", "tilt": "none", "size": "standard",
             "instances": "ordered", "syntax": "explicit"}  # fmt: skip
#: Slice spacings (mm) and their shares; a series has about 155 mm / spacing + 1 slices.
_SPACINGS = {5.0: 0.7, 4.0: 0.1, 3.0: 0.1, 2.5: 0.05, 6.0: 0.05}


@dataclass(frozen=True)
class SynthConfig:
    """Settings of a synthetic dataset.

    Attributes:
        n_train_series, n_test_series: series per split (one study each; some patients have two studies).
        image_size: rows == columns of most series (a few "odd" series are 1.23x or 1.5x larger).
        min_slices, max_slices: range of slices per series (most have 29-35, 5 mm apart; thinner series more).
        seed: everything is drawn from it.
        positive_fraction: share of the series of each split with hemorrhage (rounded; exact, so small
            datasets have positives too).
        subtype_probability: chance of each subtype in a positive series, in LABELS[1:] order
            (epidural, intraparenchymal, intraventricular, subarachnoid, subdural).
        quirks: write the RSNA quirks (QUIRK_SHARES, corrupt and junk files, duplicate label rows).
        noise_sd: range of the CT noise's standard deviation (HU) a series draws from.
        lesion_contrast: blood's HU difference from grey matter (40 HU) is multiplied by this (1 = as drawn;
            0.6 makes bleeds fainter, as in subacute or anaemic patients).
        lesion_size: lesions' extents and thicknesses are scaled by this.
        head_size: heads' axes are scaled by this (0.85: a smaller population).
        slice_spacings: spacings (mm) a series draws from uniformly; empty: the RSNA-like mix
            (mostly 5 mm, some 2.5-6 mm).
        kernel: the reconstruction kernel relative to the standard soft-tissue one, applied to image and
            noise alike: 0 = standard; > 0 smoother (a Gaussian of sigma ``kernel`` mm, as a smooth
            brain kernel); < 0 sharper (unsharp masking adding ``-kernel`` times the detail above a 1 mm
            Gaussian, as a sharper or iterative-reconstruction kernel: edges and noise both stronger).
        The appearance settings move the generator away from what a model was tuned on: evaluation
        sets made with other settings test how well a recipe holds on data it was not tuned on.
    """

    n_train_series: int = 40
    n_test_series: int = 10
    image_size: int = 512
    min_slices: int = 20
    max_slices: int = 60
    seed: int = 0
    positive_fraction: float = 0.4
    subtype_probability: tuple[float, ...] = (0.04, 0.6, 0.45, 0.5, 0.38)
    quirks: bool = True
    noise_sd: tuple[float, float] = (3.0, 6.0)
    lesion_contrast: float = 1.0
    lesion_size: float = 1.0
    head_size: float = 1.0
    slice_spacings: tuple[float, ...] = ()
    kernel: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (self.n_train_series >= 1 and self.n_test_series >= 1, "n_train_series and n_test_series must be >= 1"),
            (32 <= self.image_size <= 1024, "image_size must be between 32 and 1024"),
            (8 <= self.min_slices <= self.max_slices <= 300, "need 8 <= min_slices <= max_slices <= 300"),
            (self.seed >= 0, "seed must be >= 0"),
            (0.0 <= self.positive_fraction <= 1.0, "positive_fraction must be in [0, 1]"),
            (len(self.subtype_probability) == len(LABELS) - 1, f"subtype_probability needs {len(LABELS) - 1} values"),
            (all(0.0 <= p <= 1.0 for p in self.subtype_probability), "subtype_probability values must be in [0, 1]"),
            (sum(self.subtype_probability) > 0, "subtype_probability must not be all zero"),
            (len(self.noise_sd) == 2 and 0 <= self.noise_sd[0] <= self.noise_sd[1], "noise_sd must be (low, high) >= 0"),
            (0.1 <= self.lesion_contrast <= 3.0 and 0.3 <= self.lesion_size <= 3.0, "lesion settings out of range"),
            (0.6 <= self.head_size <= 1.4, "head_size must be in [0.6, 1.4]"),
            (all(0.5 <= s <= 10.0 for s in self.slice_spacings), "slice_spacings must be in [0.5, 10] mm"),
            (-2.0 <= self.kernel <= 3.0, "kernel must be in [-2, 3] (sharpening amount < 0, smoothing mm > 0)"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid synthetic-data setting: {message} (got {self}).")


@dataclass(frozen=True)
class SeriesPlan:
    """What one series will be, decided before any pixel is drawn (see `plan_dataset`)."""

    split: str
    index: int  # within its split
    patient: int  # patient number, unique over both splits
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    spacing: float  # nominal slice spacing, mm
    positive: bool  # has hemorrhage
    quirks: dict[str, str]  # QUIRK_SHARES key -> value


def plan_dataset(config: SynthConfig) -> tuple[list[SeriesPlan], dict[str, tuple[str, str]]]:
    """Decide IDs, patients, slice counts and quirks of every series, and the corrupt and junk files.

    Returns:
        The series plans (train then test) and, per split when quirks are on, (corrupt image id, junk id).
    """
    rng = np.random.default_rng([config.seed, 1000])
    used: set[str] = set()
    plans: list[SeriesPlan] = []
    extras: dict[str, tuple[str, str]] = {}
    patient = -1
    for split, n in zip(SPLITS, (config.n_train_series, config.n_test_series)):
        quirks = {key: _assign(rng, n, shares, _DEFAULTS[key], config.quirks) for key, shares in QUIRK_SHARES.items()}
        positive = rng.permutation(np.arange(n) < round(config.positive_fraction * n))
        follow_up = rng.random(n) < 0.12
        if n >= 3 and not follow_up[1:].any():
            follow_up[int(rng.integers(1, n))] = True
        for i in range(n):
            if i == 0 or not follow_up[i] or follow_up[i - 1]:
                patient, patient_id = patient + 1, _new_id(rng, used, 8)
            spacing = (float(rng.choice(config.slice_spacings)) if config.slice_spacings
                       else float(rng.choice(list(_SPACINGS), p=list(_SPACINGS.values()))))
            n_slices = int(np.clip(round(rng.uniform(140, 170) / spacing) + 1, config.min_slices, config.max_slices))
            sops = tuple(_new_id(rng, used, 9) for _ in range(n_slices))
            study, series = _new_id(rng, used, 10), _new_id(rng, used, 10)
            q = {key: values[i] for key, values in quirks.items()}
            plans.append(SeriesPlan(split, i, patient, patient_id, study, series, sops, spacing, bool(positive[i]), q))
        if config.quirks:
            first = len(plans) - n
            victim = plans[first + int(rng.integers(n))]
            extras[split] = (victim.sop_uids[len(victim.sop_uids) // 2], _new_id(rng, used, 9))
    return plans, extras


def _assign(rng: np.random.Generator, n: int, shares: dict[str, float], default: str, on: bool) -> list[str]:
    """Quirk values for n series: round(share * n), at least 1, of each value (when on), shuffled."""
    values: list[str] = []
    for value, share in shares.items():
        values += [value] * (max(1, round(share * n)) if on else 0)
    values = (values[:n] + [default] * n)[:n]
    return [str(v) for v in rng.permutation(np.array(values, dtype=object))]


def _new_id(rng: np.random.Generator, used: set[str], digits: int) -> str:
    """A fresh RSNA-style identifier "ID_<digits lowercase hex>"."""
    while True:
        value = "ID_" + "".join(f"{x:x}" for x in rng.integers(0, 16, size=digits))
        if value not in used:
            used.add(value)
            return value
