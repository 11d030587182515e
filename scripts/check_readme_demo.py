"""Keeps README's demo table true: compares it with what `ich3d demo` wrote, and prints the table to paste.

Usage (CI runs it after the test suite, on a fresh `ich3d demo --out DIR` with default settings, as the
README's Quickstart runs it):

    python scripts/check_readme_demo.py DIR [--readme README.md] [--tolerance 0.003]

It reads ``DIR/demo.json`` and the fenced block of README.md that holds the "demo summary: weighted log
loss" table, and compares the eight figures (validation and held-out test weighted log loss of the
prior, the slice-only CNN, CNN + GRU and the calibrated CNN + GRU). Exit 0 when every figure is within
the tolerance, 1 with the differences listed otherwise (2 when a file or the table cannot be read).
Either way it prints the table exactly as `ich3d demo` prints it, ready to paste into README.md.

The tolerance (absolute, in weighted log loss) allows for a CPU with other vector units changing the
last digits of a CPU training run; two torch builds on the same machine printed identical figures. A
stale table differs by far more (the one this check replaced was 0.017 off).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from rich.console import Console

from ich3d.app.console import DEMO_ROWS, demo_rows, demo_table

TOLERANCE = 0.003
TITLE = "demo summary: weighted log loss"
_NUMBER = re.compile(r"\d+\.\d+")


def readme_figures(readme: Path) -> dict[str, tuple[float, float]]:
    """model → (validation, test) of README's demo table.

    Raises:
        ValueError: no demo table in the README, or a row missing or without two figures.
    """
    text = readme.read_text()
    start = text.find(TITLE)
    if start < 0:
        raise ValueError(f"{readme}: no '{TITLE}' table")
    block = text[start:text.find("```", start)]
    figures = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if cells and cells[0] in DEMO_ROWS:
            numbers = [float(_NUMBER.search(cell).group()) for cell in cells[1:] if _NUMBER.search(cell)]
            if len(numbers) != 2:
                raise ValueError(f"{readme}: the row {cells[0]!r} of the demo table has no two figures: {line.strip()}")
            figures[cells[0]] = (numbers[0], numbers[1])
    missing = [name for name in DEMO_ROWS if name not in figures]
    if missing:
        raise ValueError(f"{readme}: the demo table lacks the rows {missing}")
    return figures


def differences(readme: dict[str, tuple[float, float]], demo: dict, tolerance: float) -> list[str]:
    """One line per figure of the README further than ``tolerance`` from the demo's."""
    lines = []
    for name, valid, test in demo_rows(demo):
        for column, stated, measured in (("validation", readme[name][0], valid), ("test", readme[name][1], test)):
            if measured is None:
                lines.append(f"  {name}, {column}: README {stated:.4f}, demo none")
            elif abs(stated - measured) > tolerance:
                lines.append(f"  {name}, {column}: README {stated:.4f}, demo {measured:.4f} "
                             f"(off by {abs(stated - measured):.4f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path, help="the --out folder of `ich3d demo` (holds demo.json)")
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="absolute, weighted log loss")
    args = parser.parse_args(argv)
    try:
        demo = json.loads((args.demo_dir / "demo.json").read_text())
        stated = readme_figures(args.readme)
    except (OSError, ValueError) as exc:
        print(f"check_readme_demo: {exc}", file=sys.stderr)
        return 2
    console = Console(width=100, highlight=False, soft_wrap=False)
    print(f"The demo table as `ich3d demo` printed it ({demo.get('seconds', 0) / 60:.1f} minutes), to paste into "
          f"{args.readme.name}:\n")
    with console.capture() as table:
        console.print(demo_table(demo))
    print("\n".join(line.rstrip() for line in table.get().splitlines()))
    wrong = differences(stated, demo, args.tolerance)
    if wrong:
        print(f"\n{args.readme}: {len(wrong)} figure(s) of the demo table differ from {args.demo_dir / 'demo.json'} "
              f"by more than {args.tolerance:g}:\n" + "\n".join(wrong)
              + "\npaste the table above into the README (and BENCHMARKS.md where it quotes it)", file=sys.stderr)
        return 1
    print(f"\n{args.readme.name}: the demo table matches demo.json within {args.tolerance:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
