"""Writes one ``## `` section of BENCHMARKS.md, shared by the ``scripts/bench_*.py`` scripts."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(section: str, path: Path = BENCHMARKS) -> None:
    """Replaces the section headed by ``section``'s first line (up to the next ``## ``), or appends it."""
    heading = section.splitlines()[0]
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    block = section.rstrip("\n") + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")
