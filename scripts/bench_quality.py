"""Model quality on synthetic sets the recipe was not tuned on: prior, slice-only, GRU, GRU + calibration.

Usage: python scripts/bench_quality.py --data /tmp/ich3d-quality [--setting shifted] [--size 40/12]
       [--config cpu_small] [--folds single|all] [--set key=value ...] [--also-on other] [--write]
       python scripts/bench_quality.py --matrix [--settings tuned shifted sharp smooth] [--recipe NAME=k=v,...] ...

For a generator setting (``tuned``: the defaults ich3d was developed on; ``shifted``: another seed and
other noise, lesion contrast and size, head size and slice spacings, see MATRIX_SETTINGS in scripts/shift_matrix.py;
``other``: the second generator, scripts/other_phantom.py, another phantom altogether) and a size
(training/test series), a synthetic RSNA-layout set is written once into --data, its training split
built and trained with the given config through the public API (``ich3d.fit``), and its test split
predicted from the raw DICOM folder (``ich3d.predict``) by the slice-only model(s), the sequence
model without and with calibration, and the prevalence prior. Test weighted log loss (RSNA metric)
and the mean expected calibration error over labels are reported; --write adds the row to the
"## Model quality" table of BENCHMARKS.md.

--matrix trains on each of several settings and scores on all of them and on the test-only --columns
(default: ``other``, data no recipe was developed on), for the config as it is, without its acquisition
augmentations and as it was before them (scripts/shift_matrix.py); --write replaces "## Shift matrix".
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

import ich3d
from ich3d.inference.run import InferOptions
from ich3d.training.fit import TrainOptions
from ich3d.layout import InferFolder, RunFolder, SynthFolder

from benchmarks_md import BENCHMARKS, write_section  # noqa: E402  (scripts/ is on sys.path when run)
from shift_matrix import MATRIX_SETTINGS, OTHER, built, prior_submission, score_cell, write_set  # noqa: E402

SECTION = "## Model quality"
HEADER = ("| setting | train / test series | config | folds | prior | slice-only | GRU | GRU + calibration | "
          "GRU + cal. / prior | ECE GRU → calibrated | train s |")


def synthesize(data: Path, setting: str, n_train: int, n_test: int, image_size: int) -> Path:
    """The synthetic set of (setting, size), written once."""
    folder = data / f"{setting}-{n_train}-{n_test}"
    write_set(folder, setting, (n_train, n_test), image_size)
    return folder


def score(out: InferFolder, labels: Path) -> tuple[float, float]:
    """(weighted log loss, mean ECE over labels with positives) of a prediction folder."""
    result = ich3d.score_submission(out.submission, labels)
    eces = [v for v in result["ece"].values() if v is not None]
    return result["weighted_log_loss"], float(np.mean(eces))


def evaluate(folder: Path, run: RunFolder, work: Path) -> dict[str, float]:
    """Test scores of the prior, the slice-only model(s), the GRU raw and calibrated."""
    synth = SynthFolder(folder)
    sample, labels = folder / "stage_2_sample_submission.csv", synth.test_labels
    test = [folder / "stage_2_test"]
    raw, calibrated, slices = InferFolder(work / "gru"), InferFolder(work / "gru_cal"), InferFolder(work / "slice")
    ich3d.predict([run.root], calibrated.root, dicom_dirs=test, sample_submission=sample, progress=False)
    ich3d.predict([run.root], raw.root, dataset=calibrated.dataset, sample_submission=sample,
                  options=InferOptions(calibrate=False), progress=False)
    encoders = [run.fold(k).encoder for k in run.folds_present()]
    ich3d.predict(encoders, slices.root, dataset=calibrated.dataset, sample_submission=sample, progress=False)
    prior_path = prior_submission(run, sample, InferFolder(work / "prior"))
    out = {}
    for name, where in (("prior", prior_path), ("slice", slices), ("gru", raw), ("gru_cal", calibrated)):
        out[name], out[f"{name}_ece"] = score(where, labels)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/ich3d-quality"))
    parser.add_argument("--setting", choices=[*MATRIX_SETTINGS, OTHER], default="shifted")
    parser.add_argument("--size", default="40/12", help="training/test series")
    parser.add_argument("--image-size", type=int, default=256, help="pixel size of the synthetic DICOMs")
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--folds", choices=["single", "all"], default="single")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--tag", default="", help="a name for the run folder (several runs of one set)")
    parser.add_argument("--write", action="store_true", help="add the row to BENCHMARKS.md")
    parser.add_argument("--also-on", nargs="*", default=[], choices=[*MATRIX_SETTINGS, OTHER],
                        help="also score the run on these settings' test splits (GRU + calibration / prior)")
    parser.add_argument("--matrix", action="store_true", help="the shift matrix (train on each setting, score on all)")
    parser.add_argument("--settings", nargs="+", default=list(MATRIX_SETTINGS), help="--matrix settings")
    parser.add_argument("--recipe", action="append", default=[],
                        help="--matrix: another recipe NAME=key=value,... (overrides of the config)")
    parser.add_argument("--columns", nargs="*", default=[OTHER],
                        help="--matrix: settings scored but never trained on (default: the second generator)")
    parser.add_argument("--train-settings", nargs="+", help="--matrix: train only on these (ablation rows)")
    parser.add_argument("--only-recipes", action="store_true", help="--matrix: only the --recipe ones")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.matrix:
        from shift_matrix import run_matrix

        run_matrix(args)
        return
    n_train, n_test = map(int, args.size.split("/"))
    folder = synthesize(args.data, args.setting, n_train, n_test, args.image_size)
    config = ich3d.load_config(args.config, args.overrides)
    name = f"{args.config}-{args.folds}{'-' + args.tag if args.tag else ''}"
    work = folder / "runs" / name
    dataset = folder / f"dataset-{config.data.image_size}"
    ich3d.build_series([folder / "stage_2_train"], dataset, labels_csv=folder / "stage_2_train.csv",
                       options=ich3d.BuildOptions(image_size=config.data.image_size, progress=False))
    run = RunFolder(work / "run")
    began = time.perf_counter()
    if not run.info.is_file():
        ich3d.fit(dataset, run.root, config, options=TrainOptions(folds="all" if args.folds == "all" else None))
    seconds = time.perf_counter() - began
    result = evaluate(folder, run, work)
    row = (f"| {args.setting} | {n_train} / {n_test} | {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''} "
           f"| {args.folds} | {result['prior']:.4f} | {result['slice']:.4f} | {result['gru']:.4f} | "
           f"**{result['gru_cal']:.4f}** | {result['gru_cal'] / result['prior']:.2f} | "
           f"{result['gru_ece']:.3f} → {result['gru_cal_ece']:.3f} | {seconds:.0f} |")
    print(row)
    transfer = {}
    for setting in args.also_on:  # the trained run on another setting's test split of the same size
        other = synthesize(args.data, setting, n_train, n_test, args.image_size)
        test = built(other, "test", config.data.image_size)
        transfer[setting] = score_cell(run, other, test, work / f"on-{setting}")
        print(f"on {setting}: {transfer[setting]['wll']:.4f}, prior {transfer[setting]['prior']:.4f}, "
              f"{transfer[setting]['ratio']:.3f} x the prior")
    (work / "quality.json").write_text(json.dumps(result | {"seconds": seconds, "row": row, "also_on": transfer},
                                                  indent=1))
    if args.write:
        add_row(row)


def add_row(row: str) -> None:
    """Adds ``row`` to the Model quality table (created with its header when absent), replacing a row
    of the same setting, size, config and folds."""
    text = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
    match = re.search(rf"^{re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    rows = [line for line in (match.group(1).splitlines() if match else []) if line.startswith("| ") and
            not line.startswith("| setting") and not line.startswith("|---")]
    key = "|".join(row.split("|")[1:5])
    rows = [r for r in rows if "|".join(r.split("|")[1:5]) != key] + [row]
    intro = (f"`python scripts/bench_quality.py --setting S --size N/M --config C --folds F --write` on a 2-core "
             f"CPU VM (updated {datetime.date.today().isoformat()}). Test weighted log loss (lower is better) of "
             f"synthetic sets: `tuned` is the generator ich3d was developed on, `shifted` another seed with other "
             f"noise, lesion contrast and size, head size and slice spacings (MATRIX_SETTINGS in "
             f"scripts/shift_matrix.py), `other` the second generator (scripts/other_phantom.py: another phantom, "
             f"noise and lesion appearance, written apart from ich3d's). ECE: mean expected calibration error "
             f"over the labels.")
    write_section("\n".join([SECTION, "", intro, "", HEADER, "|" + "---|" * (HEADER.count("|") - 1), *rows]) + "\n")


if __name__ == "__main__":
    main()
