"""Which series of a study to read: a role for every series, with its reason, and written-down rules
that choose the series to predict (docs/design.md §11).

A clinical export holds, per study, a topogram, soft-tissue and bone-kernel reconstructions, thin and
thick series, sometimes a contrast series, and a dose report. The model was trained on thick,
soft-kernel, non-contrast axial CT, so that is what it should read. Roles come from the headers
(Modality, SOPClassUID, ImageType, ConvolutionKernel, ContrastBolusAgent, SeriesDescription), the
orientation of the planes and the coverage; the first rule that matches gives the role:

========== ==========================================================================================
non_ct     Modality other than CT, or a SOP class other than (enhanced) CT image: dose reports, SR,
           secondary captures
localizer  ImageType LOCALIZER, or a description such as topogram / scout / surview
reformat   ImageType DERIVED or SECONDARY, an MPR/MIP description, or planes more than 45° from axial
unordered  more than one slice, all at one position: the stack cannot be ordered, and is not read
           (reading it as a volume would average its slices into one slab)
too_short  fewer than 3 readable slices or less than 20 mm of coverage
bone_kernel a sharp (bone/lung) reconstruction kernel, or a bone/lung description
contrast   a ContrastBolusAgent, or a contrast description (C+, contrast, angio, CTA)
axial      everything else: original axial CT
========== ==========================================================================================

Roles belong to stacks: a SeriesInstanceUID holding an axial stack and a sagittal one gives two rows,
an ``axial`` and a ``reformat`` (:mod:`ich3d.dataset.series`). Per study, ``auto`` chooses one series
among the roles of :data:`PREFERENCE` (in that order), then the slice thickness nearest the model's
training thickness, then the most coverage, the most readable slices, the lowest SeriesNumber, the
series UID and the stack key (deterministic). ``all`` predicts every series of an axial CT role
(:data:`AXIAL_LIKE`). A rule file or a list of series UIDs overrides both.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ich3d.constants import RSNA_SLICE_SPACING_MM
from ich3d.errors import InputError
from ich3d.yaml_unique import safe_load_unique


class Role(StrEnum):
    """What a series is, as far as reading it for hemorrhage goes."""

    AXIAL = "axial"
    LOCALIZER = "localizer"
    REFORMAT = "reformat"
    BONE_KERNEL = "bone_kernel"
    CONTRAST = "contrast"
    NON_CT = "non_ct"
    TOO_SHORT = "too_short"
    UNORDERED = "unordered"


#: Roles whose series are stacks of axial CT slices (what ``--series all`` predicts).
AXIAL_LIKE: tuple[Role, ...] = (Role.AXIAL, Role.CONTRAST, Role.BONE_KERNEL, Role.TOO_SHORT)
#: Roles ``auto`` may choose, best first: a study with only a contrast or a short series is read from it.
PREFERENCE: tuple[Role, ...] = (Role.AXIAL, Role.CONTRAST, Role.TOO_SHORT)
SERIES_MODES = ("auto", "all")

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2": "CT Image", "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
                  "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image"}
SOP_CLASS_NAMES = {"1.2.840.10008.5.1.4.1.1.7": "Secondary Capture", "1.2.840.10008.5.1.4.1.1.88.67": "Dose SR",
                   "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR", "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
                   "1.2.840.10008.5.1.4.1.1.4": "MR Image", "1.2.840.10008.5.1.4.1.1.1": "CR Image"}
MIN_SLICES = 3
MIN_COVERAGE_MM = 20.0
MAX_AXIAL_ANGLE_DEG = 45.0
#: Sharp kernels: GE BONE/BONEPLUS/LUNG/EDGE/DETAIL, Siemens H/B/J/Q (optionally r) with a number >= 50
#: (H60s, H70h, Br64, J70h; soft: H31s, Hr40), Philips YC/YD/YE, D, E, L.
BONE_KERNEL_PATTERN = re.compile(r"^(?:bone\w*|lung|edge|detail|sharp\w*|[hbjq]r?[5-9]\d\w*|y[c-e]|[del])$",
                                 re.IGNORECASE)
BONE_DESCRIPTION = re.compile(r"\b(?:bone|knochen|osseous|lung|sharp)\b", re.IGNORECASE)
LOCALIZER_DESCRIPTION = re.compile(r"\b(?:topogram|scout|locali[sz]er|surview|scanogram|pilot)\b", re.IGNORECASE)
REFORMAT_DESCRIPTION = re.compile(r"\b(?:mpr|mip|minip|reformat\w*|sag\w*|cor(?:onal)?|3d|vrt|curved)\b",
                                  re.IGNORECASE)
CONTRAST_DESCRIPTION = re.compile(r"(?:\bc\+|\bcontrast\b|\bangio\w*|\bcta\b|\bpost[- ]?contrast\b|\bkm\b)",
                                  re.IGNORECASE)
NO_CONTRAST_DESCRIPTION = re.compile(r"(?:non[- ]?contrast|without contrast|\bnativ\w*|\bplain\b|\bc-)",
                                     re.IGNORECASE)
NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "-"}


def _tokens(value: Any) -> list[str]:
    """The upper-case values of a multi-valued string (``ORIGINAL\\PRIMARY\\AXIAL``)."""
    return [part.strip().upper() for part in str(value).split("\\")] if isinstance(value, str) else []


def _first(index: pd.Index, cases: list[tuple[Any, Any]]) -> pd.Series:
    """Per series, the reason of the first case whose condition holds ("" when none does).

    Args:
        cases: (condition, reason) pairs: a bool Series/array and a str or a str Series.
    """
    out = pd.Series("", index=index, dtype=object)
    for condition, reason in reversed(cases):
        hit = np.asarray(condition, dtype=bool)
        out = out.where(~hit, reason)
    return out


def _text(series: pd.DataFrame, column: str) -> pd.Series:
    return series[column].fillna("").astype(str) if column in series else pd.Series("", index=series.index)


def _non_ct(series: pd.DataFrame) -> pd.Series:
    modality, sop_class = _text(series, "modality").str.upper(), _text(series, "sop_class_uid")
    other_class = (sop_class != "") & ~sop_class.isin(list(CT_SOP_CLASSES))
    names = sop_class.map(lambda uid: SOP_CLASS_NAMES.get(uid, uid))
    other_modality = (modality != "") & (modality != "CT")
    return _first(series.index, [(other_class, "SOP class " + names + " is not a CT image"),
                                 (other_modality, "Modality " + modality + ", not CT")])


def _localizer(series: pd.DataFrame) -> pd.Series:
    image_type, description = _text(series, "image_type"), _text(series, "series_description")
    tagged = image_type.map(lambda value: "LOCALIZER" in _tokens(value))
    named = description.str.contains(LOCALIZER_DESCRIPTION)
    return _first(series.index, [(tagged, "ImageType LOCALIZER"), (named, "description '" + description + "'")])


def _reformat(series: pd.DataFrame) -> pd.Series:
    image_type, description = _text(series, "image_type"), _text(series, "series_description")
    derived = image_type.map(lambda value: bool({"DERIVED", "SECONDARY"} & set(_tokens(value)[:2])))
    angle = np.degrees(np.arccos(np.clip(series["axial_cosine"].fillna(1.0).to_numpy(), 0.0, 1.0)))
    oblique = angle > MAX_AXIAL_ANGLE_DEG
    named = description.str.contains(REFORMAT_DESCRIPTION)
    tilted = pd.Series(angle, index=series.index).map(lambda a: f"planes {a:.0f} deg from axial")
    return _first(series.index, [(oblique, tilted), (derived, "ImageType " + image_type),
                                 (named, "description '" + description + "'")])


def _unordered(series: pd.DataFrame) -> pd.Series:
    if "all_one_position" not in series:
        return pd.Series("", index=series.index, dtype=object)
    one = series["all_one_position"].fillna(False).astype(bool)
    return _first(series.index, [(one, series["n_slices"].map(
        lambda n: f"all {n} slices at one position: they cannot be ordered into a volume"))])


def _too_short(series: pd.DataFrame) -> pd.Series:
    few = series["n_ok"] < MIN_SLICES
    narrow = series["coverage_mm"].fillna(0.0) < MIN_COVERAGE_MM
    return _first(series.index, [
        (few, series["n_ok"].map(lambda n: f"{n} readable slices (< {MIN_SLICES})")),
        (narrow, series["coverage_mm"].map(lambda mm: f"{mm:.0f} mm coverage (< {MIN_COVERAGE_MM:.0f} mm)"))])


def _bone_kernel(series: pd.DataFrame) -> pd.Series:
    kernel, description = _text(series, "convolution_kernel"), _text(series, "series_description")
    sharp = kernel.map(lambda value: bool(_tokens(value)) and bool(BONE_KERNEL_PATTERN.match(_tokens(value)[0])))
    named = description.str.contains(BONE_DESCRIPTION)
    return _first(series.index, [(sharp, "kernel " + kernel), (named, "description '" + description + "'")])


def _contrast(series: pd.DataFrame) -> pd.Series:
    agent, description = _text(series, "contrast_agent").str.strip(), _text(series, "series_description")
    given = ~agent.str.upper().isin(NO_AGENT)
    named = description.str.contains(CONTRAST_DESCRIPTION) & ~description.str.contains(NO_CONTRAST_DESCRIPTION)
    return _first(series.index, [(given, "ContrastBolusAgent " + agent), (named, "description '" + description + "'")])


_RULES = ((Role.NON_CT, _non_ct), (Role.LOCALIZER, _localizer), (Role.REFORMAT, _reformat),
          (Role.UNORDERED, _unordered), (Role.TOO_SHORT, _too_short), (Role.BONE_KERNEL, _bone_kernel),
          (Role.CONTRAST, _contrast))


def assign_roles(series: pd.DataFrame) -> pd.DataFrame:
    """Adds ``role`` and ``role_reason`` to a series table (:func:`ich3d.dataset.series.series_table`).

    Returns:
        A copy with the two string columns; the first rule of the module docstring that matches wins.
    """
    out = series.copy()
    if out.empty:
        return out.assign(role=pd.Series(dtype=object), role_reason=pd.Series(dtype=object))
    role = pd.Series(str(Role.AXIAL), index=out.index)
    reason = pd.Series("original axial CT", index=out.index)
    decided = pd.Series(False, index=out.index)
    for name, rule in _RULES:
        why = rule(out)
        hit = (why != "") & ~decided
        role, reason, decided = role.where(~hit, str(name)), reason.where(~hit, why), decided | hit
    out["role"], out["role_reason"] = role, reason
    return out


@dataclass(frozen=True)
class SeriesRules:
    """How to choose the series to predict (written to the index, so a build records what it applied).

    Attributes:
        mode: ``auto`` (one series per study) or ``all`` (every axial CT series).
        target_thickness: the slice thickness (mm) ``auto`` prefers: the model's training thickness.
        series_uids: when given, exactly these series are predicted (the other rules do not apply): a
            SeriesInstanceUID selects its stacks of an axial CT role (all its stacks if none has one), a
            ``series_id`` its stack.
        include: ``{column: regex}``; only series matching all of them may be chosen.
        exclude: ``{column: regex}``; series matching any of them are not chosen.
        roles: the roles ``auto`` may choose, best first (default :data:`PREFERENCE`).
    """

    mode: str = "auto"
    target_thickness: float = RSNA_SLICE_SPACING_MM
    series_uids: tuple[str, ...] = ()
    include: dict[str, str] = field(default_factory=dict)
    exclude: dict[str, str] = field(default_factory=dict)
    roles: tuple[str, ...] = tuple(str(role) for role in PREFERENCE)

    def __post_init__(self) -> None:
        if self.mode not in SERIES_MODES:
            raise InputError(f"--series {self.mode}: must be one of {', '.join(SERIES_MODES)}")
        if not (self.target_thickness > 0 and math.isfinite(self.target_thickness)):
            raise InputError(f"target thickness {self.target_thickness}: must be a positive number of mm")
        unknown = sorted(set(self.roles) - {str(role) for role in Role})
        if unknown:
            raise InputError(f"series rules: unknown roles {unknown}; known: {', '.join(map(str, Role))}")
        for where in (self.include, self.exclude):
            for column, pattern in where.items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise InputError(f"series rules: {column}: bad regular expression {pattern!r} ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "target_thickness": self.target_thickness, "series_uids": list(self.series_uids),
                "include": dict(self.include), "exclude": dict(self.exclude), "roles": list(self.roles)}


def load_rules(path: Path | None, mode: str = "auto", target_thickness: float = RSNA_SLICE_SPACING_MM,
               series_uids: tuple[str, ...] = ()) -> SeriesRules:
    """The :class:`SeriesRules` of the CLI: ``--series``, ``--series-rules FILE`` (YAML or JSON with the
    keys ``include``, ``exclude``, ``roles``, ``target_thickness``, ``series_uids``), ``--series-uid``.

    Raises:
        InputError: an unreadable rule file, unknown keys, bad values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = (json.loads if Path(path).suffix == ".json" else safe_load_unique)(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise InputError(f"--series-rules {path}: cannot read it ({' '.join(str(exc).split())})") from None
        known = {"include", "exclude", "roles", "target_thickness", "series_uids"}
        if not isinstance(data, dict) or set(data) - known:
            raise InputError(f"--series-rules {path}: expected a mapping with keys among {sorted(known)}")
    return SeriesRules(mode=mode, target_thickness=float(data.get("target_thickness", target_thickness)),
                       series_uids=tuple(series_uids) + tuple(data.get("series_uids", ())),
                       include={str(k): str(v) for k, v in (data.get("include") or {}).items()},
                       exclude={str(k): str(v) for k, v in (data.get("exclude") or {}).items()},
                       roles=tuple(data.get("roles", [str(role) for role in PREFERENCE])))


def _matches(series: pd.DataFrame, patterns: dict[str, str]) -> pd.DataFrame:
    """(n_series, n_patterns) bool: does each series' column match each rule's regex."""
    hits = {}
    for column, pattern in patterns.items():
        if column not in series:
            raise InputError(f"series rules: no column {column!r} in the series table; "
                             f"columns: {', '.join(map(str, series.columns))}")
        hits[column] = series[column].astype(str).str.contains(pattern, regex=True, na=False)
    return pd.DataFrame(hits, index=series.index)


def choose_series(series: pd.DataFrame, rules: SeriesRules) -> pd.DataFrame:
    """Decides which series to predict, with the reason, per study (see the module docstring).

    Args:
        series: a series table with ``role`` (:func:`assign_roles`).
        rules: the choice rules.

    Returns:
        A copy with ``chosen`` (bool: the study's best series under ``auto``), ``predict`` (bool: the
        series the requested mode predicts) and ``choice`` (str: why, for every series).

    Raises:
        InputError: ``rules.series_uids`` names a series that is not in the table.
    """
    out = series.copy()
    if out.empty:
        return out.assign(chosen=pd.Series(dtype=bool), predict=pd.Series(dtype=bool), choice=pd.Series(dtype=object))
    eligible = out["role"].isin(rules.roles)
    reason = pd.Series("", index=out.index, dtype=object)
    reason[~eligible] = "not read: " + out["role"] + " (" + out["role_reason"] + ")"
    if rules.exclude:
        excluded = _matches(out, rules.exclude).any(axis=1) & eligible
        reason[excluded] = "excluded by --series-rules"
        eligible &= ~excluded
    if rules.include:
        outside = ~_matches(out, rules.include).all(axis=1) & eligible
        reason[outside] = "not included by --series-rules"
        eligible &= ~outside
    out["chosen"] = _best_per_study(out, eligible, rules)
    others = eligible & ~out["chosen"]
    reason[out["chosen"]] = "chosen: " + out["role"] + ", " + _thickness(out).map(lambda mm: f"{mm:g} mm") + \
        f" (target {rules.target_thickness:g} mm), " + out["coverage_mm"].map(lambda mm: f"{mm:.0f} mm coverage")
    reason[others] = "another series of the study is preferred"
    out["predict"] = _predicted(out, rules)
    if rules.series_uids:
        reason[out["predict"]] = "chosen by --series-uid"
    elif rules.mode == "all":
        reason[out["predict"] & ~out["chosen"]] = "predicted too (--series all)"
    out["choice"] = reason
    return out


def _thickness(series: pd.DataFrame) -> pd.Series:
    """Each series' SliceThickness (median), or its slice spacing when the tag is absent (mm)."""
    thickness = series["slice_thickness"] if "slice_thickness" in series else pd.Series(np.nan, index=series.index)
    return thickness.where(thickness > 0, series["slice_spacing"]).fillna(0.0)


def _best_per_study(series: pd.DataFrame, eligible: pd.Series, rules: SeriesRules) -> pd.Series:
    """True for the one preferred eligible series of each study."""
    rank = {role: i for i, role in enumerate(rules.roles)}
    keys = pd.DataFrame({
        "study": series["study_uid"], "role": series["role"].map(rank), "thickness": (_thickness(series) -
                                                                                    rules.target_thickness).abs(),
        "coverage": -series["coverage_mm"].fillna(0.0), "ok": -series["n_ok"],
        "number": series["series_number"].astype("Float64").fillna(np.inf) if "series_number" in series else 0.0,
        "uid": series["series_uid"].fillna(""), "key": series["series_id"]})[eligible]
    order = keys.sort_values(["study", "role", "thickness", "coverage", "ok", "number", "uid", "key"], kind="stable")
    best = order.drop_duplicates("study").index
    return pd.Series(series.index.isin(best), index=series.index)


def _predicted(series: pd.DataFrame, rules: SeriesRules) -> pd.Series:
    if rules.series_uids:
        return _named(series, rules.series_uids)
    if rules.mode == "all":
        return series["role"].isin([str(role) for role in AXIAL_LIKE])
    return series["chosen"].copy()


def _named(series: pd.DataFrame, names: tuple[str, ...]) -> pd.Series:
    """The stacks ``--series-uid`` names: by ``series_id``, or by SeriesInstanceUID (its stacks of an
    axial CT role, or all its stacks when none has one); never an unordered stack.

    Raises:
        InputError: a name that is neither.
    """
    unknown = sorted(set(names) - set(series["series_uid"]) - set(series["series_id"]))
    if unknown:
        raise InputError(f"--series-uid: {len(unknown)} series not in the index, e.g. {', '.join(unknown[:5])}")
    by_uid = series["series_uid"].isin(names)
    axial = series["role"].isin([str(role) for role in AXIAL_LIKE])
    has_axial = axial.groupby([series["study_uid"].fillna(""), series["series_uid"]]).transform("any")
    return (series["series_id"].isin(names) | (by_uid & (axial | ~has_axial))) & (series["role"] != Role.UNORDERED)


#: Columns of :func:`choice_table`, as build.json and the printed summary show them.
CHOICE_COLUMNS = ("study_uid", "series_uid", "series_id", "series_description", "role", "predict", "choice")


def choice_table(series: pd.DataFrame, limit: int = 1000) -> dict[str, Any]:
    """The series choice of the studies where there was one to make (several series, or a series not
    predicted), as JSON-ready rows: ``{"n_studies": int, "rows": [...], "truncated": bool}``."""
    per_study = series.groupby("study_uid")["predict"].agg(["size", "all"])
    studies = per_study.index[(per_study["size"] > 1) | ~per_study["all"]]
    shown = series[series["study_uid"].isin(studies)].sort_values(["study_uid", "series_uid", "series_id"])
    columns = [c for c in CHOICE_COLUMNS if c in shown]
    rows = shown[columns].head(limit).astype(object).where(shown[columns].head(limit).notna(), None)
    return {"n_studies": len(studies), "rows": rows.to_dict("records"), "truncated": len(shown) > limit}
