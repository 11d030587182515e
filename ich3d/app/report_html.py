"""The HTML of ``ich3d report``: the page template and escaped tables and images (no files, no torch).

Plain ``string.Template`` and stdlib ``html.escape``: every value from the data is escaped, images are
PNGs embedded as ``data:`` URIs, the page holds no script and loads nothing.
"""

from __future__ import annotations

import base64
import html
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

PAGE = string.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ich3d report: $title</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  max-width:1340px;margin:0 auto;padding:0 16px 48px}
header{border-bottom:1px solid #ddd;margin-bottom:8px}
h1{font-size:26px;margin:14px 0 4px}
nav a{margin-right:14px}
h2{margin-top:36px;border-bottom:1px solid #eee}
table{border-collapse:collapse;font-size:13px;margin:6px 0 16px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f3f3f3}
img{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto;max-height:420px}
.gallery{display:flex;flex-wrap:wrap;gap:14px}
.strip{display:flex;align-items:flex-end;gap:8px;margin-bottom:10px}
.strip figure{flex:none}
.strip .title{font-size:13px;margin:0 0 2px 0}
.wide{overflow-x:auto}
td img{max-width:none}
figure{margin:0;max-width:530px}
figcaption{font-size:12px;color:#555}
.note{color:#555;font-size:13px}
table.exams{width:100%}
table.exams td:first-child{white-space:nowrap;width:150px}
table.exams td img{margin-right:4px;height:72px;width:auto}
tr.flagged td{background:#fdecea}
.uid{font-family:ui-monospace,monospace;font-size:12px}
details code{font-size:11px;word-break:break-all}
details summary{cursor:pointer}
.facts{display:flex;flex-wrap:wrap;gap:0 18px;align-items:flex-start}
.facts table{margin-top:2px}
.facts h4{margin:8px 0 0;font-size:13px}
</style></head>
<body><header><h1>ich3d report</h1><p class="note">$meta</p><nav>$nav</nav></header>
$sections
</body></html>
""")


def page(title: str, meta: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: a header with ``meta`` and links to the sections, then each (id, title, HTML body)."""
    nav = "".join(f"<a href='#{key}'>{html.escape(heading)}</a>" for key, heading, _ in sections)
    body = "\n".join(f"<section id='{key}'><h2>{html.escape(heading)}</h2>\n{content}</section>"
                     for key, heading, content in sections)
    return PAGE.substitute(title=html.escape(title), meta=html.escape(meta), nav=nav, sections=body)


def img(png: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` holding ``png`` as a base64 ``data:`` URI."""
    size = f" width='{width}'" if width else ""
    return f"<img alt='{html.escape(alt)}'{size} src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], escape: bool = True) -> str:
    """An HTML table; cells are escaped unless ``escape`` is False (then they are HTML already)."""
    cell = html.escape if escape else str
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def facts(mapping: dict[str, Any]) -> str:
    """A JSON summary (build.json, run.json) as tables: the plain values in one table, each mapping in
    its own small table, each list of records as a table with a column per key; side by side."""
    plain = [[key, text(value)] for key, value in mapping.items() if not isinstance(value, dict)
             and not _records(value)]
    blocks = [table(["key", "value"], plain)] if plain else []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            blocks.append(f"<div><h4>{html.escape(key)}</h4>"
                          + table(["key", "value"], [[k, text(v)] for k, v in value.items()]) + "</div>")
        elif _records(value):
            columns = list(dict.fromkeys(k for record in value for k in record))
            rows = [[text(record.get(c)) for c in columns] for record in value[:50]]
            blocks.append(f"<div><h4>{html.escape(key)} ({len(value)})</h4>" + table(columns, rows) + "</div>")
    return "<div class='facts'>" + "".join(blocks) + "</div>"


def _records(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of mappings."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def text(value: Any) -> str:
    """A value as table text: mappings and lists compactly (20 items at most), floats with 4 digits."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(text, value[:20])) + (f" ... ({len(value)})" if len(value) > 20 else "") if value else "-"
    if isinstance(value, float):
        return num(value)
    return "n/a" if value is None or value is pd.NA else str(value)


def num(value: float | None, digits: int = 4) -> str:
    """A float with ``digits`` decimals; "n/a" for None, NaN and infinities."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"
