"""Label CSVs: validation, wide table, join. RSNA (long ``ID,Label`` format, ID = ``ID_<hex>_<label>``),
joined by image key; PhysioNet CT-ICH (``hemorrhage_diagnosis_raw_ct.csv``: one row per
``PatientNumber, SliceNumber`` with 0/1 subtype columns and ``No_Hemorrhage``), joined by the NIfTI
file stem (``049.nii`` is patient 49) and slice number (docs/design.md §12).

Exact duplicate rows (the RSNA stage 2 CSV has some) are dropped and counted. Rows that give the same
ID different labels are conflicts: they are listed in the report and resolved by taking the maximum,
i.e. a hemorrhage marked by any row counts as present. For a screening model a missed positive is
the costlier error, and the alternative (dropping the image) would silently shrink the rare classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ich3d.constants import LABEL_COLUMNS, LABELS
from ich3d.errors import InputError

log = logging.getLogger(__name__)

EXPECTED_HEADER = ("ID", "Label")
_EXAMPLES = 5
LABEL_FORMATS = ("rsna", "ct-ich")
#: CT-ICH columns of the six labels (``any`` is ``not No_Hemorrhage``), in LABELS order after ``any``.
CT_ICH_KEYS = ("PatientNumber", "SliceNumber")
CT_ICH_SUBTYPES = ("Epidural", "Intraparenchymal", "Intraventricular", "Subarachnoid", "Subdural")
CT_ICH_NONE = "No_Hemorrhage"


@dataclass
class LabelTable:
    """Labels of a CSV in wide form, with what was found while reading it.

    Attributes:
        labels: index ``image_id`` (str), columns ``LABEL_COLUMNS``, float32 1.0/0.0, NaN where the
            CSV has no row for that (image, label).
        n_rows: data rows in the CSV.
        n_exact_duplicates: rows dropped as exact copies of an earlier row.
        conflicts: ``ID_<hex>_<label>`` IDs given both 0 and 1 (resolved to 1).
        n_incomplete: images with fewer than six labels.
        key: what ``labels`` is indexed by: ``image_id`` (RSNA), or ``patient_slice``
            (``<PatientNumber>#<SliceNumber>``, CT-ICH: see :func:`patient_slice_keys`).
    """

    labels: pd.DataFrame
    n_rows: int
    n_exact_duplicates: int
    conflicts: list[str] = field(default_factory=list)
    n_incomplete: int = 0
    key: str = "image_id"

    def report(self) -> dict:
        """JSON-ready summary (counts plus a few example IDs)."""
        return {
            "n_rows": self.n_rows,
            "n_images": len(self.labels),
            "n_exact_duplicates": self.n_exact_duplicates,
            "n_conflicts": len(self.conflicts),
            "conflict_examples": self.conflicts[:_EXAMPLES],
            "conflict_resolution": "max (positive wins)",
            "n_incomplete_images": self.n_incomplete,
        }


def _read_csv(csv: Path, what: str) -> pd.DataFrame:
    """The CSV (ID as str, Label as parsed), with its header checked."""
    try:
        frame = pd.read_csv(csv, dtype={"ID": str}, keep_default_na=False, engine="pyarrow")
    except FileNotFoundError:
        raise InputError(f"{csv}: {what} not found") from None
    except (ValueError, pd.errors.ParserError, pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"{csv}: not a readable CSV ({exc}); expected the header ID,Label") from None
    if tuple(frame.columns) != EXPECTED_HEADER:
        raise InputError(f"{csv}: columns {list(frame.columns)}, expected the header ID,Label "
                         f"(RSNA long format, ID = ID_<hex>_<label>)")
    return frame


def _split_ids(csv: Path, ids: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """``ID_<hex>_<label>`` → (image IDs, (N,) int64 label codes in ``LABELS`` order)."""
    parts = pc.split_pattern(pa.array(ids, type=pa.string()), "_", max_splits=1, reverse=True)
    bad = pc.fill_null(pc.less(pc.list_value_length(parts), 2), True).to_numpy(zero_copy_only=False)
    if bad.any():
        raise InputError(f"{csv}: IDs must look like ID_<hex>_<label>, got e.g. {ids[bad].head(_EXAMPLES).tolist()}")
    names = pc.list_element(parts, 1)
    code = pc.index_in(names, value_set=pa.array(LABELS)).to_numpy(zero_copy_only=False)
    unknown = np.isnan(code)
    if unknown.any():
        found = sorted(set(names.filter(pa.array(unknown)).to_pylist()))[:_EXAMPLES]
        raise InputError(f"{csv}: unknown label names {found}; expected one of {list(LABELS)}")
    images = pd.Series(pc.list_element(parts, 0).to_pandas(), dtype=str)
    return images, code.astype(np.int64)


def _label_values(csv: Path, labels: pd.Series) -> np.ndarray:
    """(N,) int64 0/1 labels; anything else is an error."""
    values = labels if pd.api.types.is_numeric_dtype(labels) else pd.to_numeric(labels, errors="coerce")
    bad = ~np.isin(values.to_numpy(np.float64, na_value=np.nan), (0.0, 1.0))
    if bad.any():
        lines = (np.flatnonzero(bad)[:_EXAMPLES] + 2).tolist()
        raise InputError(f"{csv}: Label must be 0 or 1 (lines {lines}: {labels[bad].head(_EXAMPLES).tolist()}); "
                         f"is this a submission file rather than labels?")
    return values.to_numpy(np.int64)


def read_long(csv: Path, what: str = "labels file") -> pd.DataFrame:
    """Reads an RSNA long-format CSV (labels, sample submission or submission) and splits its IDs.

    Args:
        csv: path of a CSV with the header ``ID,Label`` and IDs ``ID_<hex>_<label>``.
        what: how error messages name the file.

    Returns:
        The rows with columns ``ID``, ``Label`` (as read), ``image_id`` (str) and ``label`` (int64
        code in ``LABELS`` order).

    Raises:
        InputError: missing file, wrong header, no rows, malformed IDs, unknown label names.
    """
    frame = _read_csv(csv, what)
    if frame.empty:
        raise InputError(f"{csv}: the {what} has its header but no rows; expected six ID_<image>_<label> rows per image")
    images, label = _split_ids(csv, frame["ID"])
    return frame.assign(image_id=images.to_numpy(), label=label)


def read_labels(csv: Path) -> LabelTable:
    """Reads and validates an RSNA long-format label CSV.

    Deduplication and the wide pivot run on integer keys (image code * 6 + label), so the
    4.5 million rows of RSNA stage 2 take seconds.

    Args:
        csv: path of a CSV with the header ``ID,Label``.

    Returns:
        The :class:`LabelTable` (one row per image, sorted by image_id, conflicts resolved by max).

    Raises:
        InputError: missing file, wrong header, malformed IDs, unknown label names, labels not 0/1.
    """
    frame = read_long(csv)
    images, label = frame["image_id"], frame["label"].to_numpy()
    value = _label_values(csv, frame["Label"])
    image_code, image_ids = pd.factorize(images, sort=True)
    key = image_code.astype(np.int64) * len(LABELS) + label
    rows = np.sort(key * 2 + value)  # a key's rows together, its max value last
    rows = rows[np.append(True, rows[1:] != rows[:-1])]  # exact duplicates gone
    row_key, row_value = rows // 2, rows % 2
    last = np.append(row_key[1:] != row_key[:-1], True)
    conflict_keys = row_key[:-1][~last[:-1]]
    conflicts = [f"{image_ids[k // len(LABELS)]}_{LABELS[k % len(LABELS)]}" for k in conflict_keys]
    if conflicts:
        log.warning("%s: %d IDs have conflicting labels (resolved to 1), e.g. %s", csv, len(conflicts), conflicts[:3])
    wide = np.full(len(image_ids) * len(LABELS), np.nan, dtype=np.float32)
    wide[row_key[last]] = row_value[last]
    wide = wide.reshape(len(image_ids), len(LABELS))
    labels = pd.DataFrame(wide, index=pd.Index(image_ids, name="image_id"), columns=list(LABEL_COLUMNS))
    return LabelTable(labels, n_rows=len(frame), n_exact_duplicates=len(frame) - len(rows), conflicts=conflicts,
                      n_incomplete=int(np.isnan(wide).any(axis=1).sum()))


def read_label_file(csv: Path, labels_format: str = "rsna") -> LabelTable:
    """The labels of ``csv`` in ``labels_format`` (:data:`LABEL_FORMATS`).

    Raises:
        InputError: an unknown format, or a CSV that is not valid in it.
    """
    if labels_format == "rsna":
        return read_labels(csv)
    if labels_format == "ct-ich":
        return read_ct_ich_labels(csv)
    raise InputError(f"--labels-format {labels_format}: expected one of {', '.join(LABEL_FORMATS)}")


def read_ct_ich_labels(csv: Path) -> LabelTable:
    """Reads PhysioNet CT-ICH per-slice labels (``hemorrhage_diagnosis_raw_ct.csv``).

    ``any`` = 1 - ``No_Hemorrhage``, the subtypes from their columns (other columns, such as
    ``Fracture_Yes_No``, are ignored); exact duplicate rows are dropped and conflicting ones resolved
    by the maximum, as for RSNA.

    Returns:
        A :class:`LabelTable` keyed ``patient_slice``: ``<PatientNumber>#<SliceNumber>`` (integers).

    Raises:
        InputError: missing file or columns, values other than 0/1, non-integer patient or slice numbers.
    """
    try:
        frame = pd.read_csv(csv)
    except FileNotFoundError:
        raise InputError(f"{csv}: labels file not found") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{csv}: not a readable CSV ({exc})") from None
    needed = [*CT_ICH_KEYS, *CT_ICH_SUBTYPES, CT_ICH_NONE]
    missing = [column for column in needed if column not in frame.columns]
    if missing or frame.empty:
        raise InputError(f"{csv}: CT-ICH labels need the columns {', '.join(needed)} and rows; missing {missing}")
    values = frame[needed].apply(pd.to_numeric, errors="coerce")
    keys, flags = values[list(CT_ICH_KEYS)], values[[*CT_ICH_SUBTYPES, CT_ICH_NONE]]
    bad = ~(keys.notna() & (keys == keys.round())).all(axis=1) | ~flags.isin([0, 1]).all(axis=1)
    if bad.any():
        lines = (np.flatnonzero(bad)[:_EXAMPLES] + 2).tolist()
        raise InputError(f"{csv}: PatientNumber and SliceNumber must be integers and the label columns 0 or 1 "
                         f"(lines {lines})")
    wide = pd.DataFrame({LABEL_COLUMNS[0]: 1 - flags[CT_ICH_NONE]}
                        | {column: flags[name] for column, name in zip(LABEL_COLUMNS[1:], CT_ICH_SUBTYPES)})
    keys = keys.astype(np.int64).astype(str)
    wide.index = pd.Index(keys[CT_ICH_KEYS[0]] + "#" + keys[CT_ICH_KEYS[1]], name="image_id")
    exact = wide.reset_index().duplicated().to_numpy()
    wide = wide[~exact]
    conflicts = sorted(set(wide.index[wide.index.duplicated()]))
    if conflicts:
        log.warning("%s: %d slices have conflicting labels (resolved to 1), e.g. %s", csv, len(conflicts),
                    conflicts[:3])
    labels = wide.groupby(level=0, sort=True).max().astype(np.float32)
    return LabelTable(labels, n_rows=len(frame), n_exact_duplicates=int(exact.sum()), conflicts=conflicts,
                      key="patient_slice")


def patient_slice_keys(slices: pd.DataFrame) -> pd.Series:
    """``<patient number>#<frame>`` of each row (NA without a frame): the CT-ICH label key of a NIfTI
    slice, its patient the file stem read as an integer where it is one (``049`` → ``49``)."""
    patient = slices["patient_id"].astype("string")
    number = patient.where(~patient.str.fullmatch(r"\d+").fillna(False), patient.str.lstrip("0").replace("", "0"))
    frame = slices["frame"].astype("Int64")
    return (number + "#" + frame.astype("string")).where(frame.notna())


def join_labels(slices: pd.DataFrame, table: LabelTable | None) -> tuple[pd.DataFrame, dict]:
    """Adds ``LABEL_COLUMNS`` (float32, NaN = unlabeled) to the index by ``image_id`` (or by
    :func:`patient_slice_keys` for CT-ICH labels).

    Args:
        slices: the index, with an ``image_id`` column (and ``patient_id``, ``frame`` for a
            ``patient_slice`` table).
        table: labels from :func:`read_label_file`, or None (every slice unlabeled).

    Returns:
        (slices with label columns, report): the report adds to :meth:`LabelTable.report` the
        number of labeled slices and the label rows whose image has no file (count and examples).
    """
    out = slices.copy()
    if table is None:
        for column in LABEL_COLUMNS:
            out[column] = np.float32(np.nan)
        return out, {"labels_csv": None}
    keys = out["image_id"] if table.key == "image_id" else patient_slice_keys(out)
    position = table.labels.index.get_indexer(keys.fillna(""))
    values = table.labels.to_numpy()
    found = position >= 0
    for j, column in enumerate(LABEL_COLUMNS):
        out[column] = np.where(found, values[position, j], np.nan).astype(np.float32)
    has_image = np.zeros(len(table.labels), dtype=bool)
    has_image[position[found]] = True
    missing = table.labels.index[~has_image]
    if len(missing):
        log.warning("%d labeled images have no file among the inputs, e.g. %s", len(missing), list(missing[:3]))
    report = table.report() | {
        "n_labeled_images": int(out[LABEL_COLUMNS[0]].notna().sum()),
        "n_labels_without_image": len(missing),
        "labels_without_image_examples": list(missing[:_EXAMPLES]),
    }
    return out, report
