"""How long ``ich3d report`` takes for a 40-series test set, by section.

Usage: python scripts/bench_report.py --demo DIR [--data /tmp/ich3d-bench-report] [--series 40] [--write]

DIR is the folder of ``ich3d demo --out DIR``: its run predicts a fresh synthetic test split of
``--series`` series (256 px DICOM, generated once into --data with another seed) straight from its
DICOM folder, then ``write_report`` runs three times on that output with the labels and the run
(every section, Grad-CAM in the error gallery and on the exams' key slices); the median is reported.
--write replaces the "## Report" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

import pandas as pd
import torch
from benchmarks_md import write_section  # scripts/ is on sys.path when run

from ich3d.inference.run import predict
from ich3d.layout import InferFolder, SynthFolder
from ich3d.app.report import write_report
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig

SECTION = "## Report"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="The --out folder of `ich3d demo`.")
    parser.add_argument("--data", type=Path, default=Path("/tmp/ich3d-bench-report"))
    parser.add_argument("--series", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    synth, run = SynthFolder(args.data / "rsna"), args.demo / "run"
    if not (synth.root / "stage_2_test").is_dir():
        make_synthetic_dataset(synth.root, SynthConfig(n_train_series=1, n_test_series=args.series, image_size=256,
                                                       seed=7), workers=os.cpu_count() or 1)
    out = InferFolder(args.data / "predictions")
    if not out.predictions.is_file():
        predict([run], out.root, dicom_dirs=[synth.root / "stage_2_test"], progress=False)
    results = [write_report(out.root, args.data / "report.html", labels=synth.test_labels, runs=[run])
               for _ in range(args.repeats)]
    median = sorted(results, key=lambda r: r["seconds"])[len(results) // 2]
    n_images = len(pd.read_parquet(out.predictions))
    size = Path(median["report"]).stat().st_size / 1e6
    steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in median["timings"].items())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    runs = ", ".join(f"{r['seconds']:.1f}" for r in results)
    text = (f"{SECTION}\n\n`python scripts/bench_report.py --demo DIR --series {args.series} --write` after "
            f"`ich3d demo --out DIR` — machine: {platform.machine()}, {os.cpu_count()} cores, CPU, torch "
            f"{torch.__version__}, date {datetime.date.today()}, load average at the end {load}. The demo's run "
            f"predicted a fresh synthetic test split of {args.series} series ({n_images} images, 256 px DICOM); "
            f"`write_report` with its labels and the run (all {len(median['sections'])} sections: "
            f"{', '.join(median['sections'])}; Grad-CAM of p(any) on the 8 gallery slices and on the key slices of the "
            f"exams called positive), "
            f"median of {args.repeats} runs in one process (the first pays the imports):\n\n"
            f"| report | seconds (median) | runs (s) | page size |\n|---|---:|---|---:|\n"
            f"| {args.series} series | {median['seconds']:.1f} | "
            f"{runs} | {size:.1f} MB |\n\n"
            f"By step (the median run): {steps}. Target: under 30 s on 2 cores.\n")
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
