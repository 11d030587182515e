"""RSNA submission files (``ID,Label`` with ``ID_<image>_<label>``): writing, validation, scoring.

Torch-free, so ``ich3d score`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ich3d.atomic import atomic_write, write_json_atomic
from ich3d.constants import LABELS
from ich3d.dataset.labels import patient_slice_keys, read_label_file, read_long
from ich3d.errors import InputError
from ich3d.layout import InferFolder
from ich3d.metrics import evaluate


def read_sample(path: Path) -> pd.DataFrame:
    """The rows of a sample submission (:func:`ich3d.dataset.labels.read_long`), each ID once.

    Raises:
        InputError: an unreadable file, or an ID listed twice: a submission with the repeats would be
            rejected by the scorer (``ich3d score`` and Kaggle's), and which of two rows was meant cannot be
            known, so the file is refused rather than silently de-duplicated.
    """
    rows = read_long(path, "sample submission")
    repeated = rows["ID"][rows["ID"].duplicated()].unique()
    if len(repeated):
        raise InputError(f"{path}: {len(repeated)} ID(s) are listed more than once ({_listing(repeated)}); a sample "
                         f"submission lists each ID once: remove the repeated rows")
    return rows


def read_submission_ids(path: Path) -> np.ndarray:
    """The image IDs a sample submission asks for, in order of first appearance.

    Raises:
        InputError: as :func:`read_sample`.
    """
    return pd.unique(read_sample(path)["image_id"])


def write_submission(path: Path, probs: pd.DataFrame, sample: Path | None = None) -> None:
    """Writes six rows per image, the probabilities as ``%.6g``.

    Args:
        probs: (n_images, 6) probabilities indexed by image_id, columns in ``LABELS`` order.
        sample: when given, exactly its rows in its order; otherwise every image in ``probs`` order.

    Raises:
        InputError: the sample asks for images that ``probs`` lacks, or lists an ID twice.
    """
    values = probs.to_numpy(np.float64)
    if sample is not None:
        rows = read_sample(sample)
        position = probs.index.get_indexer(rows["image_id"])
        if (position < 0).any():
            absent = pd.unique(rows["image_id"][position < 0])
            raise InputError(f"{sample}: {len(absent)} image(s) of the sample submission have no prediction: "
                             f"{_listing(absent)}")
        ids, labels = pa.array(rows["ID"], type=pa.string()), values[position, rows["label"].to_numpy()]
    else:
        ids, labels = _long_ids(probs.index), values.ravel()
    with atomic_write(Path(path)) as file:
        _write_rows(file, ids, format_g6(labels))


def _long_ids(images: pd.Index) -> pa.Array:
    """(6 n,) ``<image>_<label>`` IDs of ``images``, image by image, labels in ``LABELS`` order."""
    row = np.arange(len(images) * len(LABELS))
    image = pc.take(pa.array(images, type=pa.string()), row // len(LABELS))
    return pc.binary_join_element_wise(image, pc.take(pa.array(LABELS), row % len(LABELS)), "_")


#: Characters that make the CSV writer quote a field (RFC 4180: the separator, the quote, CR and LF).
_NEEDS_QUOTES = '[,"\r\n]'


def _write_rows(file: BinaryIO, ids: pa.Array, labels: np.ndarray) -> None:
    """The ``ID,Label`` CSV of ``ids`` and formatted ``labels`` (bytes): LF line ends, no quotes, as
    Kaggle's sample submission.

    pyarrow writes it in one pass. An ID that holds a comma, a quote, a CR or a LF (never in RSNA; a
    damaged header can hold one) is quoted, its quotes doubled (RFC 4180), so every image keeps its six
    rows: pandas' ``to_csv`` would leave a lone CR unquoted, and a reader would see a new row there.
    """
    text = pa.array(labels, type=pa.binary()).cast(pa.string())
    needs = pc.match_substring_regex(ids, _NEEDS_QUOTES)
    if pc.any(needs).as_py():
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(ids, '"', '""'), '"', "")
        lines = pc.binary_join_element_wise(pc.if_else(needs, quoted, ids), text, ",")
        file.write("".join(["ID,Label\n", "\n".join(lines.to_pylist()), "\n"]).encode("utf-8"))
        return
    file.write(b"ID,Label\n")  # pyarrow quotes a header even in quoting style "none"
    pacsv.write_csv(pa.table({"ID": ids, "Label": text}), file,
                    pacsv.WriteOptions(include_header=False, quoting_style="none"))


#: 10**k for k = 0..22: exact doubles.
_POW10 = np.array([float(10 ** k) for k in range(23)])
#: The zeros after the point of 0.000ddd (``np.strings.multiply`` fails on an empty selection).
_ZEROS = np.array([b"0" * k for k in range(4)])
#: A scaled value whose fraction is closer than this to 0.5 is rounded by Python's ``%`` instead.
_TIE = 1e-7


def format_g6(values: np.ndarray) -> np.ndarray:
    """``"%.6g" % v`` of each value, vectorised; NaN gives ``""`` (pandas' empty cell).

    |v| is scaled into [1e5, 1e6) by an exact power of ten: one float multiplication, off by less
    than 1.2e-10, so rounding it to an integer gives the six digits exactly unless its fraction is
    within ``_TIE`` of one half. Those rare values, zeros, infinities and magnitudes outside
    [1e-17, 1e6) are formatted by Python's ``%`` (``np.char.mod``).

    Args:
        values: (n,) float.

    Returns:
        (n,) bytes (``S``) array.
    """
    x = np.asarray(values, dtype=np.float64)
    mag = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = 5 - np.floor(np.log10(mag))
    scale = np.where(np.isfinite(guess), guess, -1).astype(np.int64)
    scaled = mag * _POW10[np.clip(scale, 0, len(_POW10) - 1)]
    scale += (scaled < 1e5).astype(np.int64) - (scaled >= 1e6)  # log10 can be one off near a power of ten
    scaled = mag * _POW10[np.clip(scale, 0, len(_POW10) - 1)]
    with np.errstate(invalid="ignore"):
        fraction = scaled - np.floor(scaled)
    exact = ((scale >= 0) & (scale < len(_POW10)) & (scaled >= 1e5) & (scaled < 1e6)
             & (np.abs(fraction - 0.5) > _TIE))
    out = np.empty(len(x), dtype="S16")
    out[~exact] = np.char.mod("%.6g", x[~exact]).astype("S16")
    out[np.isnan(x)] = b""
    digits = np.rint(scaled[exact]).astype(np.int64)
    carry = digits == 10 ** 6  # 999999.5 and up round to 1e6: one more in the exponent
    digits = np.where(carry, 10 ** 5, digits).astype("S6")
    exponent = 5 - scale[exact] + carry
    kept = np.strings.rstrip(digits, b"0")  # the significant digits (the first is never 0)
    text = np.empty(len(digits), dtype="S16")
    point = (exponent >= 0) & (exponent < 6)  # d.ddd or ddd.dd
    head = np.strings.slice(digits[point], 0, exponent[point] + 1)
    tail = np.strings.slice(kept[point], exponent[point] + 1, 6)
    text[point] = np.strings.add(head, np.where(tail == b"", b"", np.strings.add(b".", tail)))
    small = (exponent < 0) & (exponent >= -4)  # 0.000ddd
    text[small] = np.strings.add(np.strings.add(b"0.", _ZEROS[-exponent[small] - 1]), kept[small])
    scientific = ~(point | small)  # d.ddde-05, d.ddde+06
    first, rest = np.strings.slice(kept[scientific], 0, 1), np.strings.slice(kept[scientific], 1, 6)
    mantissa = np.strings.add(first, np.where(rest == b"", b"", np.strings.add(b".", rest)))
    size = np.abs(exponent[scientific])
    power = np.strings.add(np.where(size < 10, b"0", b""), size.astype("S3"))  # two digits at least
    text[scientific] = np.strings.add(mantissa, np.strings.add(np.where(exponent[scientific] < 0, b"e-", b"e+"), power))
    out[exact] = np.strings.add(np.where(x[exact] < 0, b"-", b""), text)
    return out


def _listing(ids: pd.Series | np.ndarray | pd.Index) -> str:
    ids = list(ids)
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return ", ".join(map(str, ids[:10])) + more


def _id_keys(ids: pd.Series, known: pa.Array) -> np.ndarray:
    """(len(ids),) int64 key of each ID: its row in ``known``, or for an ID not there ``len(known)`` plus
    its rank of first appearance among those; equal IDs get equal keys. One hash pass over the strings
    (pyarrow), so the 4.5 million rows of a full RSNA training set take seconds."""
    row = pc.index_in(pa.array(ids, type=pa.string()), value_set=known)
    row = row.to_numpy(zero_copy_only=False)  # float64, NaN where not found
    unknown = np.isnan(row)
    key = np.where(unknown, 0, row).astype(np.int64)
    key[unknown] = len(known) + pd.factorize(ids[unknown], use_na_sentinel=False)[0]
    return key


def validate_submission(sub: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Rejects duplicate, missing or unknown IDs and probabilities that are NaN or outside [0, 1].

    Args:
        sub: the submission's rows (``ID``, ``Label``).
        truth: the expected IDs (``ID``, each once).

    Raises:
        InputError: listing the offending IDs (duplicates in order of appearance, the others sorted).
    """
    _checked_keys(sub, pa.array(truth["ID"], type=pa.string()))


def _checked_keys(sub: pd.DataFrame, truth: pa.Array) -> np.ndarray:
    """(len(sub),) int64 row in ``truth`` (the expected IDs, each once) of each submission row, once
    :func:`validate_submission`'s checks passed: then every expected ID has exactly one row.

    Raises:
        InputError: as :func:`validate_submission`.
    """
    problems = []
    key = _id_keys(sub["ID"], truth)
    duplicated = sub["ID"][pd.Index(key).duplicated()]
    if len(duplicated):
        problems.append(f"duplicate IDs: {_listing(duplicated.unique())}")
    covered = np.zeros(len(truth), dtype=bool)
    covered[key[key < len(truth)]] = True
    missing = pd.Index(truth.filter(pa.array(~covered)).to_pandas()).unique().sort_values()
    if len(missing):
        problems.append(f"missing IDs: {_listing(missing)}")
    unknown = pd.Index(sub["ID"][key >= len(truth)]).unique().sort_values()
    if len(unknown):
        problems.append(f"unknown IDs (not in the labels): {_listing(unknown)}")
    label = pd.to_numeric(sub["Label"], errors="coerce")
    bad = sub.loc[label.isna() | (label < 0) | (label > 1), "ID"]
    if len(bad):
        problems.append(f"Label NaN or outside [0, 1]: {_listing(bad)}")
    if problems:
        raise InputError("submission rejected: " + "; ".join(problems))
    return key


def score_submission(submission: Path, labels: Path, series_of: pd.Series | None = None,
                     labels_format: str = "rsna") -> dict[str, Any]:
    """Scores a submission against image labels.

    The labels are read as ``build-series`` reads them (:func:`ich3d.dataset.labels.read_label_file`):
    labels must be 0 or 1, exact duplicate rows are dropped, and rows that give an ID both 0 and 1
    resolve to 1 (counted in the result's ``labels`` report). CT-ICH labels (``labels_format
    "ct-ich"``, keyed by patient number and slice) are joined to the submission's NIfTI slice keys
    through the ``predictions.parquet`` beside it.

    Args:
        series_of: image_id → series_uid, for the series-level AUC of ``any`` (optional).
        labels_format: ``rsna`` (long ``ID,Label``) or ``ct-ich``.

    Returns:
        :func:`ich3d.metrics.evaluate`'s dict (weighted log loss, per-label log loss and AUC, ...) and
        ``labels``, the label file's report.

    Raises:
        InputError: unreadable files, labels that are not 0/1 (e.g. a submission given as labels),
            images lacking a label, submissions with duplicate, missing or unknown IDs or bad values.
    """
    table = read_label_file(Path(labels), labels_format)
    if table.n_incomplete:
        raise InputError(f"labels CSV {labels}: {table.n_incomplete} images lack one of the six labels")
    if table.key == "patient_slice":
        table.labels = _by_image_id(table.labels, Path(submission))
    y_true = table.labels
    sub = read_long(submission, "submission")
    key = _checked_keys(sub, _long_ids(y_true.index))  # the row of y_true.ravel() each submission row fills
    y_pred = np.empty(y_true.size)
    y_pred[key] = pd.to_numeric(sub["Label"]).to_numpy(np.float64)
    series = series_of.reindex(y_true.index).fillna("unknown").to_numpy() if series_of is not None else None
    return evaluate(y_true.to_numpy(), y_pred.reshape(y_true.shape), series_ids=series) | {"labels": table.report()}


def _by_image_id(labels: pd.DataFrame, submission: Path) -> pd.DataFrame:
    """CT-ICH labels (index ``<patient>#<slice>``) re-indexed by the image keys of the predictions
    beside ``submission``; labels of slices that were not predicted are dropped."""
    predictions = InferFolder(Path(submission).parent).predictions
    if not predictions.is_file():
        raise InputError(f"{submission}: CT-ICH labels are joined through the predictions.parquet beside the "
                         f"submission; none in {predictions.parent}")
    rows = pd.read_parquet(predictions, columns=["image_id", "patient_id", "frame"])
    key_of = pd.Series(rows["image_id"].to_numpy(), index=patient_slice_keys(rows).to_numpy())
    key_of = key_of[key_of.index.notna()]
    kept = labels[labels.index.isin(key_of.index)]
    return kept.set_axis(pd.Index(key_of.reindex(kept.index).to_numpy(), name="image_id"))


def save_score(result: dict[str, Any], path: Path) -> None:
    """Writes the score as JSON (atomically)."""
    write_json_atomic(path, result)


def series_lookup(submission: Path, dataset: Path | None) -> pd.Series | None:
    """image_id → series_uid from a dataset index, or from ``predictions.parquet`` beside the submission."""
    if dataset is not None:
        from ich3d.dataset.opened import Dataset

        slices = Dataset.open(dataset).slices
    else:
        predictions = InferFolder(Path(submission).parent).predictions
        if not predictions.is_file():
            return None
        slices = pd.read_parquet(predictions, columns=["image_id", "series_uid"])
    known = slices.dropna(subset=["series_uid"]).drop_duplicates("image_id")
    return known.set_index("image_id")["series_uid"]
