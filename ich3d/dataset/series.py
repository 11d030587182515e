"""Series from slices: grouping, ordering along the slice normal, and per-series sanity flags.

Works on a whole index at once with pandas/numpy (no Python loop over slices or series), in the
manner of dicom-numpy: each slice's position is its ImagePositionPatient projected on the series'
slice normal (cross product of the ImageOrientationPatient cosines); ties are broken by
InstanceNumber, then SOPInstanceUID. Needs only the index columns, never a DICOM file.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ich3d.constants import Status
from ich3d.layout import DatasetFolder, cache_file_name

log = logging.getLogger(__name__)

IPP_COLUMNS = ("ipp_x", "ipp_y", "ipp_z")
IOP_COLUMNS = ("iop_rx", "iop_ry", "iop_rz", "iop_cx", "iop_cy", "iop_cz")
#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A step larger than this many median spacings is a gap (missing slices).
GAP_FACTOR = 1.9
#: Orientation cosines differing by more than this within a series mean mixed orientations.
ORIENTATION_TOLERANCE = 1e-3
#: Angles (degrees) above which a plane is oblique or the slice stack is sheared.
TILT_TOLERANCE_DEG = 1.0


def slice_normals(iop: np.ndarray) -> np.ndarray:
    """Unit normals of slices from their orientation cosines.

    Args:
        iop: (N, 6) float ImageOrientationPatient (row cosine x, y, z, then column cosine x, y, z).

    Returns:
        (N, 3) float64, cross(row, column) normalised (NaN where the cosines are NaN or parallel).
    """
    normal = np.cross(iop[:, :3], iop[:, 3:])
    with np.errstate(invalid="ignore", divide="ignore"):
        return normal / np.linalg.norm(normal, axis=1, keepdims=True)


def _series_keys(slices: pd.DataFrame) -> pd.Series:
    """The series_uid of each row, made unique per (study_uid, series_uid).

    DICOM makes series UIDs globally unique; should one appear in several studies anyway, the
    second and later studies (in study_uid order) get ``~2``, ``~3``... appended, and a warning.
    """
    series = slices["series_uid"]
    series_code, _ = pd.factorize(series)
    study_code, _ = pd.factorize(slices["study_uid"], sort=True)
    known = (series_code >= 0) & (study_code >= 0)
    stride = study_code.max(initial=-1) + 2
    pairs = np.unique(series_code[known].astype(np.int64) * stride + study_code[known] + 1)
    pair_series = pairs // stride
    if not (pair_series[1:] == pair_series[:-1]).any():
        return series
    rank = slices.groupby("series_uid")["study_uid"].rank(method="dense")
    clash = rank > 1
    log.warning("%d series UIDs appear in more than one study; renamed with a ~k suffix", series[clash].nunique())
    return series.where(~clash, series + "~" + rank.astype("Int64").astype(str))


def _reference_normals(series: pd.Series, normals: np.ndarray) -> np.ndarray:
    """(N, 3) each row's series normal: the normalised mean of its series' slice normals."""
    frame = pd.DataFrame(normals, columns=["x", "y", "z"], index=series.index)
    mean = frame.groupby(series.to_numpy()).transform("mean").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def order_slices(slices: pd.DataFrame) -> pd.DataFrame:
    """Groups slices into series and sorts each along its normal.

    A slice belongs to a series when it has a series UID and a complete geometry (IPP and IOP),
    whatever its status: a slice whose pixels are corrupt keeps its place in the series.

    Args:
        slices: one row per file with ``study_uid``, ``series_uid`` (None when unknown),
            ``instance_number``, ``sop_uid``, ``ipp_*`` (mm) and ``iop_*`` columns.

    Returns:
        A copy with ``series_uid`` disambiguated (see :func:`_series_keys`), ``position`` (float mm
        along the series normal, NaN outside series) and ``slice_index`` (Int64, 0..N-1 in sorted
        order, <NA> outside series); rows sorted by (series_uid, slice_index), slices outside any
        series last.
    """
    out = slices.copy()
    geometry = out[list(IPP_COLUMNS + IOP_COLUMNS)].to_numpy(np.float64)
    in_series = out["series_uid"].notna().to_numpy() & np.isfinite(geometry).all(axis=1)
    out["series_uid"] = _series_keys(out)
    normals = _reference_normals(out["series_uid"][in_series], slice_normals(geometry[in_series, 3:]))
    position = np.full(len(out), np.nan)
    position[in_series] = np.einsum("ij,ij->i", geometry[in_series, :3], normals)
    in_series &= np.isfinite(position)
    out["position"] = np.where(in_series, position, np.nan)
    out["_outside"] = ~in_series
    keys = ["_outside", "series_uid", "position", "instance_number", "sop_uid", "frame", "path"]
    out = out.sort_values([k for k in keys if k in out], kind="stable", na_position="last")
    index = out.groupby(out["series_uid"].where(~out["_outside"])).cumcount()
    out["slice_index"] = pd.array(index.where(~out["_outside"]), dtype="Int64")
    return out.drop(columns="_outside").reset_index(drop=True)


def _step_stats(series: np.ndarray, positions: np.ndarray) -> pd.DataFrame:
    """Per series (index): has_duplicate_positions, slice_spacing (median mm), has_gaps."""
    same = series[1:] == series[:-1]
    steps = pd.DataFrame({"series": series[1:][same], "step": np.diff(positions)[same]})
    steps["duplicate"] = steps["step"].abs() < DUPLICATE_TOLERANCE_MM
    spacing = steps[~steps["duplicate"]].groupby("series")["step"].median()
    steps["gap"] = steps["step"] > GAP_FACTOR * steps["series"].map(spacing)
    stats = steps.groupby("series").agg(has_duplicate_positions=("duplicate", "any"), has_gaps=("gap", "any"))
    stats["slice_spacing"] = spacing
    return stats


def _tilt(grouped: pd.core.groupby.DataFrameGroupBy) -> pd.Series:
    """Per series: True when its plane is oblique to the patient axes or its stack is sheared
    (the step between first and last ImagePositionPatient not parallel to the normal)."""
    normal = grouped[["nx", "ny", "nz"]].mean().to_numpy()
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    cos_tol = np.cos(np.deg2rad(TILT_TOLERANCE_DEG))
    oblique = np.abs(normal).max(axis=1) < cos_tol
    step = (grouped[list(IPP_COLUMNS)].last() - grouped[list(IPP_COLUMNS)].first()).to_numpy()
    length = np.linalg.norm(step, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        along = np.abs(np.einsum("ij,ij->i", step, normal)) / length
    sheared = (length > DUPLICATE_TOLERANCE_MM) & (along < cos_tol)
    return pd.Series(oblique | sheared, index=grouped.size().index)


def _mode(frame: pd.DataFrame, column: str) -> pd.Series:
    """Most common value of ``column`` per series (smallest value on ties)."""
    counts = frame.groupby(["series_uid", column]).size().rename("n").reset_index()
    counts = counts.sort_values(["series_uid", "n", column], ascending=[True, False, True])
    return counts.drop_duplicates("series_uid").set_index("series_uid")[column]


def series_table(slices: pd.DataFrame) -> pd.DataFrame:
    """One row per series, with the checks a volume needs before it is trusted.

    Args:
        slices: output of :func:`order_slices` (plus ``status``, ``patient_id``, ``source``,
            ``rows``, ``cols`` and optionally ``label_any``).

    Returns:
        Columns series_uid, study_uid, patient_id, source, n_slices, n_ok, rows, cols (most common),
        slice_spacing (median mm, NaN for one slice), has_duplicate_positions, has_gaps,
        mixed_orientation, mixed_size, gantry_tilt (bool), n_labeled, n_any, cache_file; then what
        decides the series' role: the most common value of each of :data:`ROLE_COLUMNS` present in
        ``slices`` (``slice_thickness``: the median), ``coverage_mm`` (extent along the normal, one
        spacing included) and ``axial_cosine`` (|z| of the series normal: 1 for axial planes); sorted
        by series_uid.
    """
    frame = slices[slices["slice_index"].notna()].copy()
    frame[["nx", "ny", "nz"]] = slice_normals(frame[list(IOP_COLUMNS)].to_numpy(np.float64))
    labels = frame["label_any"] if "label_any" in frame else pd.Series(np.nan, index=frame.index)
    frame["_ok"] = frame["status"] == str(Status.OK)
    frame["_labeled"], frame["_any"] = labels.notna(), labels == 1
    grouped = frame.groupby("series_uid", sort=True)
    table = grouped.agg(
        study_uid=("study_uid", "first"), patient_id=("patient_id", "first"), source=("source", "first"),
        n_slices=("slice_index", "size"), n_ok=("_ok", "sum"), n_labeled=("_labeled", "sum"), n_any=("_any", "sum"),
    )
    table["rows"], table["cols"] = _mode(frame, "rows"), _mode(frame, "cols")
    spread = grouped[list(IOP_COLUMNS)].max() - grouped[list(IOP_COLUMNS)].min()
    table["mixed_orientation"] = (spread > ORIENTATION_TOLERANCE).any(axis=1)
    table["mixed_size"] = (grouped["rows"].nunique() > 1) | (grouped["cols"].nunique() > 1)
    table["gantry_tilt"] = _tilt(grouped)
    table = table.join(_step_stats(frame["series_uid"].to_numpy(), frame["position"].to_numpy()))
    for flag in ("has_duplicate_positions", "has_gaps"):
        table[flag] = table[flag].fillna(False).astype(bool)
    table = table.join(_role_facts(frame, grouped, table["slice_spacing"]))
    table = table.reset_index()
    table["cache_file"] = DatasetFolder.CACHE + "/" + table["series_uid"].map(cache_file_name)
    columns = ["series_uid", "study_uid", "patient_id", "source", "n_slices", "n_ok", "rows", "cols",
               "slice_spacing", "has_duplicate_positions", "has_gaps", "mixed_orientation", "mixed_size",
               "gantry_tilt", "n_labeled", "n_any", "cache_file"]
    return table[columns + [c for c in table.columns if c not in columns]]


#: Per-slice header values that decide a series' role (ich3d.dataset.roles).
ROLE_COLUMNS = ("modality", "sop_class_uid", "image_type", "series_description", "series_number",
                "convolution_kernel", "slice_thickness", "contrast_agent", "body_part")


def _role_facts(frame: pd.DataFrame, grouped: pd.core.groupby.DataFrameGroupBy, spacing: pd.Series) -> pd.DataFrame:
    """Per series: the role columns' common values, coverage (mm) and how axial its planes are."""
    facts = pd.DataFrame(index=grouped.size().index)
    for column in ROLE_COLUMNS:
        if column not in frame:
            continue
        facts[column] = grouped[column].median() if column == "slice_thickness" else _mode(frame, column)
    extent = grouped["position"].max() - grouped["position"].min()
    facts["coverage_mm"] = extent + spacing.reindex(facts.index).fillna(0.0)
    normal = grouped[["nx", "ny", "nz"]].mean().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        facts["axial_cosine"] = np.abs(normal[:, 2]) / np.linalg.norm(normal, axis=1)
    return facts
