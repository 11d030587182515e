"""CSV tables people open in a spreadsheet (``exams.csv``): safe to open, and read back as written.

* Every field holding a CR or a LF, a comma or a quote is quoted (RFC 4180; lines end in CRLF, as
  spreadsheets write them), so a line break in a header value never starts a new row.
* A text cell a spreadsheet would run as a formula — one starting with ``=``, ``+``, ``-``, ``@``, TAB
  or CR (OWASP, "CSV Injection") — gets a single quote in front, as OWASP recommends: the
  spreadsheet shows the text instead of running it. A text cell that already starts with a single
  quote gets one more, so :func:`read_table` undoes the change exactly (docs/design.md §9).
* Numbers are never changed: a negative position stays a number.

Machine formats (``submission.csv``, ``exams.json``, parquet) keep their values verbatim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.atomic import atomic_write

#: A text cell starting with one of these is prefixed with :data:`ESCAPE` (the last one: to stay reversible).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
ESCAPE = "'"


def _text_columns(frame: pd.DataFrame) -> list[str]:
    return list(frame.select_dtypes(include=["object", "string"]).columns)


def _starts_with(values: pd.Series, prefix: str | tuple[str, ...]) -> pd.Series:
    """(n,) bool: the cells of ``values`` that are text starting with ``prefix``."""
    text = values.map(lambda value: isinstance(value, str))
    return text & values.where(text, "").astype(str).str.startswith(prefix)


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells starting with :data:`FORMULA_START` get :data:`ESCAPE` in front."""
    out = frame.copy()
    for column in _text_columns(frame):
        values = out[column]
        risky = _starts_with(values, FORMULA_START)
        out.loc[risky, column] = ESCAPE + values[risky].astype(str)
    return out


def restore_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`neutralise_formulas` on a table read back (text cells lose one leading quote)."""
    out = frame.copy()
    for column in _text_columns(frame):
        values = out[column]
        escaped = _starts_with(values, ESCAPE)
        out.loc[escaped, column] = values[escaped].astype(str).str[len(ESCAPE):]
    return out


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Writes ``frame`` (no index) as a spreadsheet-safe CSV (module docstring), atomically."""
    with atomic_write(Path(path)) as file:
        neutralise_formulas(frame).to_csv(file, index=False, lineterminator="\r\n")


def read_table(path: Path, **read_csv: Any) -> pd.DataFrame:
    """Reads a table written by :func:`write_table` back to its values (``read_csv``: pandas' options)."""
    return restore_formulas(pd.read_csv(path, **read_csv))
