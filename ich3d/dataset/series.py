"""Series from slices: stacks, ordering along the slice normal, and per-stack sanity flags.

Works on a whole index at once with pandas/numpy (a Python loop runs only over the rare series that
hold several stacks or slices without geometry), in the manner of dicom-numpy: each slice's position
is its ImagePositionPatient projected on its stack's normal (cross product of the
ImageOrientationPatient cosines); ties are broken by InstanceNumber, then SOPInstanceUID. Needs only
the index columns, never a DICOM file.

A SeriesInstanceUID is split into stacks as dcm2niix splits a series: by image size and by
orientation, slices whose normals lie within :data:`STACK_ANGLE_DEG` of each other sharing a stack
(so a gantry tilt changed by a few degrees mid-series stays one stack, and an axial stack stays
readable when a sagittal reformat shares its UID). Each stack is a series of the index, keyed by a
``series_id`` made in :mod:`ich3d.dataset.identity`. A slice of the series without a usable geometry
(absent, NaN, or cosines that are not orthonormal) is ``missing_geometry``: it joins the series'
largest stack at the place its InstanceNumber gives, and is predicted from its neighbours.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ich3d.constants import Status
from ich3d.dataset.geometry import slice_normals, usable_geometry
from ich3d.dataset.identity import series_ids
from ich3d.layout import DatasetFolder, cache_file_name

log = logging.getLogger(__name__)

IPP_COLUMNS = ("ipp_x", "ipp_y", "ipp_z")
IOP_COLUMNS = ("iop_rx", "iop_ry", "iop_rz", "iop_cx", "iop_cy", "iop_cz")
#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A step larger than this many median spacings is a gap (missing slices).
GAP_FACTOR = 1.9
#: Orientation cosines differing by more than this within a stack: its orientation varies (a tilt change).
ORIENTATION_TOLERANCE = 1e-3
#: Angles (degrees) above which a plane is oblique or the slice stack is sheared.
TILT_TOLERANCE_DEG = 1.0
#: Slices of one series whose planes differ by more than this angle (degrees) are different stacks: above
#: the 21.6 deg (cosine 0.93) seen between slices of one real RSNA series whose tilt changed, well below
#: the 45 deg of an oblique reformat and the 90 deg of a sagittal or coronal one.
STACK_ANGLE_DEG = 25.0


def _greedy_stacks(normals: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Stack labels of one series' slices: same size, and normals within :data:`STACK_ANGLE_DEG` of the
    stack's first slice (either sign); labels numbered by stack size, largest first (ties: first slice)."""
    cos_tol = np.cos(np.deg2rad(STACK_ANGLE_DEG))
    label = np.full(len(normals), -1)
    while (label < 0).any():
        first = int(np.flatnonzero(label < 0)[0])
        close = np.abs(normals @ normals[first]) >= cos_tol
        label[(label < 0) & close & (sizes == sizes[first]).all(axis=1)] = label.max() + 1
    counts = np.bincount(label)
    rank = np.argsort(-counts, kind="stable")
    return np.argsort(rank)[label]


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """(max code + 1,) the first row of each code (codes 0..K-1)."""
    first = np.zeros(codes.max(initial=-1) + 1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # the last write of each code is its first row
    return first


def _stack_numbers(group: np.ndarray, normals: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N,) stack number of each slice within its series ``group`` (0: the largest stack)."""
    anchor = _first_rows(group)
    cos = np.abs(np.einsum("ij,ij->i", normals, normals[anchor[group]]))
    same = (cos >= np.cos(np.deg2rad(STACK_ANGLE_DEG))) & (sizes == sizes[anchor[group]]).all(axis=1)
    stack = np.zeros(len(group), dtype=np.int64)
    for g in np.unique(group[~same]):
        rows = np.flatnonzero(group == g)
        stack[rows] = _greedy_stacks(normals[rows], sizes[rows])
    return stack


def _oriented(normals: np.ndarray, stack_code: np.ndarray) -> np.ndarray:
    """(N, 3) each slice's stack normal: the mean of its stack's normals, each turned to the first's side."""
    first = _first_rows(stack_code)
    sign = np.where(np.einsum("ij,ij->i", normals, normals[first[stack_code]]) < 0, -1.0, 1.0)
    turned = normals * sign[:, None]
    summed = np.stack([np.bincount(stack_code, turned[:, k], len(first)) for k in range(3)], axis=1)
    mean = summed[stack_code]
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _place_without_geometry(out: pd.DataFrame, lost: np.ndarray, group: np.ndarray) -> None:
    """Gives slices of a series without usable geometry (``lost``) the largest stack of their series and a
    position interpolated from their InstanceNumber among its slices; those that cannot be placed stay
    outside (``position`` NaN). They become ``missing_geometry`` (not read, predicted from the context)."""
    position, stack = out["position"].to_numpy(copy=True), out["stack"].to_numpy(copy=True)
    number = out["instance_number"].astype("Float64").fillna(np.nan).to_numpy(float)
    placed = np.zeros(len(out), dtype=bool)
    for g in np.unique(group[lost]):
        members = (group == g) & ~lost & (stack == 0) & np.isfinite(number) & np.isfinite(position)
        mine = np.flatnonzero(lost & (group == g) & np.isfinite(number))
        if not members.any() or not len(mine):
            continue
        xp, first = np.unique(number[members], return_index=True)
        position[mine] = np.interp(number[mine], xp, position[members][first])
        stack[mine], placed[mine] = 0, True
    out["position"], out["stack"] = position, stack
    if not placed.any():
        return
    ok = placed & (out["status"] == str(Status.OK)).to_numpy()
    error = out["error"] if "error" in out else pd.Series("", index=out.index)
    out.loc[ok, "status"] = str(Status.MISSING_GEOMETRY)
    out.loc[placed, "error"] = error[placed].fillna("").astype(str).where(~ok[placed], "no usable geometry") \
        + "; placed by its InstanceNumber, predicted from its neighbours"


def order_slices(slices: pd.DataFrame) -> pd.DataFrame:
    """Splits series into stacks, keys each stack and sorts it along its normal.

    A slice belongs to a stack when it has a series UID, is not a ``duplicate``, and has a usable
    geometry (or an InstanceNumber that places it among the slices of its series), whatever its
    status: a slice whose pixels are corrupt keeps its place in the series.

    Stacks never mix patients or studies: a series UID found in two studies (or for two patients) gives
    a stack in each.

    Args:
        slices: one row per image with ``patient_id``, ``study_uid``, ``series_uid`` (None when unknown), ``status``,
            ``error``, ``instance_number``, ``sop_uid``, ``rows``, ``cols``, ``ipp_*`` (mm) and
            ``iop_*`` columns.

    Returns:
        A copy with ``series_id`` (the stack's key, :func:`ich3d.dataset.identity.series_ids`; NA outside
        stacks), ``stack`` (Int64: 0 for the largest stack of a series UID), ``n_stacks`` (Int64: stacks
        of its series UID), ``position`` (float mm along the stack normal, NaN outside) and
        ``slice_index`` (Int64, 0..N-1 in sorted order); rows sorted by (series_id, slice_index),
        slices outside any stack last. ``series_uid`` and the other header values are unchanged.
    """
    out = slices.copy()
    geometry = out[list(IPP_COLUMNS + IOP_COLUMNS)].to_numpy(np.float64)
    grouped = (out["series_uid"].notna() & (out["status"] != str(Status.DUPLICATE))).to_numpy()
    usable = grouped & usable_geometry(geometry)
    group = np.full(len(out), -1, dtype=np.int64)
    group[grouped] = _pair_codes(*(pd.factorize(out[column][grouped], use_na_sentinel=False)[0]
                                   for column in ("patient_id", "study_uid", "series_uid")))
    normals = slice_normals(geometry[:, 3:])
    sizes = out[["rows", "cols"]].astype("Float64").fillna(-1).to_numpy(float)
    out["stack"] = np.where(usable, 0, -1)
    out.loc[usable, "stack"] = _stack_numbers(group[usable], normals[usable], sizes[usable])
    code = _pair_codes(group[usable], out["stack"].to_numpy()[usable])
    position = np.full(len(out), np.nan)
    position[usable] = np.einsum("ij,ij->i", geometry[usable, :3], _oriented(normals[usable], code))
    out["position"] = position
    lost = grouped & ~usable
    if lost.any():
        _place_without_geometry(out, lost, group)
    inside = np.isfinite(out["position"].to_numpy())
    _key_stacks(out, inside, group)
    out["_outside"] = ~inside
    keys = ["_outside", "series_id", "position", "instance_number", "sop_uid", "frame", "path"]
    out = out.sort_values([k for k in keys if k in out], kind="stable", na_position="last")
    index = out.groupby(out["series_id"].where(~out["_outside"])).cumcount()
    out["slice_index"] = pd.array(index.where(~out["_outside"]), dtype="Int64")
    return out.drop(columns="_outside").reset_index(drop=True)


def _pair_codes(*codes: np.ndarray) -> np.ndarray:
    """(N,) dense codes 0..K-1 of the tuples of non-negative integer ``codes``, in order of first appearance."""
    combined = np.zeros(len(codes[0]), dtype=np.int64)
    for code in codes:
        combined = pd.factorize(combined * (int(code.max(initial=0)) + 1) + code)[0]
    return combined


def _key_stacks(out: pd.DataFrame, inside: np.ndarray, group: np.ndarray) -> None:
    """Sets ``series_id``, ``stack`` and ``n_stacks`` (NA outside stacks) of the rows ``inside``."""
    stack = out["stack"].to_numpy()[inside].astype(np.int64)
    code = _pair_codes(group[inside], stack)
    first = np.flatnonzero(inside)[_first_rows(code)]  # one row of each stack
    keys = series_ids(out.iloc[first][["patient_id", "study_uid", "series_uid"]].assign(stack=out["stack"].iloc[first]))
    counts = np.bincount(group[first])[group[inside]]  # stacks of each row's series
    series_id = np.full(len(out), None, dtype=object)
    series_id[inside] = keys.to_numpy()[code]
    out["series_id"] = pd.Series(series_id, index=out.index, dtype=object)
    full = np.zeros(len(out), dtype=np.int64)
    full[inside] = counts
    out["stack"] = pd.Series(out["stack"].to_numpy(), index=out.index, dtype="Int64").where(inside)
    out["n_stacks"] = pd.Series(full, index=out.index, dtype="Int64").where(inside)
    if (counts > 1).any():
        log.info("%d series UIDs hold several stacks (orientation or image size): each stack is a series",
                 len(np.unique(group[inside][counts > 1])))


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
    """Most common value of ``column`` per stack (smallest value on ties)."""
    counts = frame.groupby(["series_id", column]).size().rename("n").reset_index()
    counts = counts.sort_values(["series_id", "n", column], ascending=[True, False, True])
    return counts.drop_duplicates("series_id").set_index("series_id")[column]


def series_table(slices: pd.DataFrame) -> pd.DataFrame:
    """One row per stack (a series of the index), with the checks a volume needs before it is trusted.

    Args:
        slices: output of :func:`order_slices` (plus ``status``, ``patient_id``, ``source``,
            ``rows``, ``cols`` and optionally ``label_any``).

    Returns:
        Columns series_id, series_uid, study_uid, patient_id, source, stack, n_stacks, n_slices, n_ok,
        rows, cols (most common), slice_spacing (median mm, NaN for one slice), has_duplicate_positions,
        all_one_position (more than one slice, all at one position: the stack cannot be ordered),
        has_gaps, mixed_orientation (orientations vary within the stack's tolerance: a tilt change),
        gantry_tilt (bool), n_labeled, n_any, cache_file; then what decides the role: the most common
        value of each of :data:`ROLE_COLUMNS` present in ``slices`` (``slice_thickness``: the median),
        ``coverage_mm`` (extent along the normal, one spacing included) and ``axial_cosine`` (|z| of the
        stack normal: 1 for axial planes); sorted by series_id.
    """
    frame = slices[slices["slice_index"].notna()].copy()
    frame[["nx", "ny", "nz"]] = _turned_normals(frame)
    labels = frame["label_any"] if "label_any" in frame else pd.Series(np.nan, index=frame.index)
    frame["_ok"] = frame["status"] == str(Status.OK)
    frame["_labeled"], frame["_any"] = labels.notna(), labels == 1
    grouped = frame.groupby("series_id", sort=True)
    table = grouped.agg(
        series_uid=("series_uid", "first"), study_uid=("study_uid", "first"), patient_id=("patient_id", "first"),
        source=("source", "first"), stack=("stack", "first"), n_stacks=("n_stacks", "first"),
        n_slices=("slice_index", "size"), n_ok=("_ok", "sum"), n_labeled=("_labeled", "sum"), n_any=("_any", "sum"),
    )
    table["rows"], table["cols"] = _mode(frame, "rows"), _mode(frame, "cols")
    spread = grouped[list(IOP_COLUMNS)].max() - grouped[list(IOP_COLUMNS)].min()
    table["mixed_orientation"] = (spread > ORIENTATION_TOLERANCE).any(axis=1)
    table["gantry_tilt"] = _tilt(grouped)
    table = table.join(_step_stats(frame["series_id"].to_numpy(), frame["position"].to_numpy()))
    for flag in ("has_duplicate_positions", "has_gaps"):
        table[flag] = table[flag].fillna(False).astype(bool)
    extent = grouped["position"].max() - grouped["position"].min()
    table["all_one_position"] = (table["n_slices"] > 1) & (extent < DUPLICATE_TOLERANCE_MM)
    table = table.join(_role_facts(frame, grouped, table["slice_spacing"]))
    table = table.reset_index()
    table["cache_file"] = DatasetFolder.CACHE + "/" + table["series_id"].map(cache_file_name)
    columns = ["series_id", "series_uid", "study_uid", "patient_id", "source", "stack", "n_stacks", "n_slices",
               "n_ok", "rows", "cols", "slice_spacing", "has_duplicate_positions", "all_one_position", "has_gaps",
               "mixed_orientation", "gantry_tilt", "n_labeled", "n_any", "cache_file"]
    return table[columns + [c for c in table.columns if c not in columns]]


def _turned_normals(frame: pd.DataFrame) -> np.ndarray:
    """(N, 3) slice normals, NaN for slices placed without geometry, each turned to its stack's first side."""
    geometry = frame[list(IPP_COLUMNS + IOP_COLUMNS)].to_numpy(np.float64)
    normals = np.where(usable_geometry(geometry)[:, None], slice_normals(geometry[:, 3:]), np.nan)
    code = pd.factorize(frame["series_id"])[0]
    found = np.isfinite(normals[:, 0])
    first = np.full((code.max(initial=-1) + 1, 3), np.nan)
    first[code[found][::-1]] = normals[found][::-1]  # the first usable normal of each stack
    with np.errstate(invalid="ignore"):
        sign = np.where(np.einsum("ij,ij->i", normals, first[code]) < 0, -1.0, 1.0)
    return normals * sign[:, None]


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
