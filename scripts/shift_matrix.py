"""The shift matrix of ``bench_quality.py --matrix``: train on each generator setting, score on every one.

For each recipe (overrides on top of the config: ``views``, the config as it is; ``elastic``, the same
with the anatomy warp; ``smoothing``, ``views`` without the sequence head's augmented embedding views;
``recipe``, that with the slice stage's
label smoothing off (the acquisition recipe of issue 22);
``no-acquisition``, that with every acquisition augmentation off; ``before``, the recipe before the
acquisition augmentations and the longer slice stage; and any ``--recipe NAME=key=value,...``, e.g. an
ablation ``minus-kernel=augment.kernel.p=0,stages.slice.label_smoothing=0``) and each training
setting, the model is trained on that setting's training split and predicts (GRU + calibration, as
``ich3d predict``) the test split of every setting; each cell is the test weighted log loss divided by
that of the training set's prevalence prior on the same test set. The diagonal is the recipe on data
like its training data; the off-diagonal cells are scanner/population shifts. The test-only columns
(``other``: the second generator, scripts/other_phantom.py) are data of another phantom, noise and lesion
appearance, which no recipe was developed or trained on. Every cell is appended to
``DATA/matrix/cells.jsonl`` as soon as it is scored, and a rerun skips finished cells and runs.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import ich3d
from ich3d.augment_config import ACQUISITION
from ich3d.constants import LABELS
from ich3d.inference.submission import write_submission
from ich3d.layout import InferFolder, RunFolder, SynthFolder
from ich3d.metrics import prior_predictions
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig

from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)
from other_phantom import write_dataset  # noqa: E402

#: Generator settings of the matrix: each moves several acquisition and population factors.
MATRIX_SETTINGS: dict[str, dict[str, Any]] = {
    "tuned": {},
    "shifted": {"seed": 11, "noise_sd": (5.0, 9.0), "lesion_contrast": 0.7, "lesion_size": 0.8, "head_size": 0.9,
                "slice_spacings": (3.0, 4.0, 5.0)},
    "sharp": {"seed": 23, "kernel": -1.0, "noise_sd": (4.0, 7.0), "lesion_contrast": 0.85, "lesion_size": 1.2,
              "head_size": 1.1, "slice_spacings": (2.5, 3.0)},
    "smooth": {"seed": 37, "kernel": 1.0, "noise_sd": (6.0, 10.0), "lesion_contrast": 1.2, "head_size": 0.85,
               "slice_spacings": (5.0, 6.0)},
}
#: The second generator's setting (scripts/other_phantom.py: another phantom, noise and lesion appearance):
#: in the matrix a column only, data no recipe was developed or trained on.
OTHER = "other"
_NO_ACQUISITION = [f"augment.{name}.p=0" for name in ACQUISITION]
_PLAIN_TARGETS = ["stages.slice.label_smoothing=0"]
_PLAIN_VIEWS = ["stages.sequence.augmented_views=0", "augment.elastic=0"]
#: The recipes every matrix run compares, as overrides of the config (cpu_small: the cells of BENCHMARKS.md).
RECIPES: dict[str, list[str]] = {
    "elastic": ["augment.elastic=0.015"],
    "views": [],
    "smoothing": _PLAIN_VIEWS,
    "recipe": [*_PLAIN_TARGETS, *_PLAIN_VIEWS],
    "no-acquisition": [*_NO_ACQUISITION, *_PLAIN_TARGETS, *_PLAIN_VIEWS],
    "before": ["stages.slice.epochs=6", *_NO_ACQUISITION, *_PLAIN_TARGETS, *_PLAIN_VIEWS],
}
SECTION = "## Shift matrix"


def synth_set(data: Path, setting: str, sizes: tuple[int, int], image_size: int) -> Path:
    """The synthetic set of a setting (train and test split), written once."""
    folder = data / "matrix" / f"{setting}-{sizes[0]}-{sizes[1]}-{image_size}"
    write_set(folder, setting, sizes, image_size)
    return folder


def write_set(folder: Path, setting: str, sizes: tuple[int, int], image_size: int) -> None:
    """Write a setting's set (``sizes``: training and test series) into ``folder`` unless it is there;
    ``other`` is the second generator (scripts/other_phantom.py), every other setting ich3d's own."""
    if (folder / "synth.json").is_file():
        return
    if setting == OTHER:
        write_dataset(folder, *sizes, image_size=image_size)
    else:
        config = SynthConfig(n_train_series=sizes[0], n_test_series=sizes[1], image_size=image_size,
                             **({"seed": 0} | MATRIX_SETTINGS[setting]))
        make_synthetic_dataset(folder, config, workers=2)


def built(folder: Path, split: str, image_size: int) -> Path:
    """The ``build-series`` dataset of a split (training labels joined), built once."""
    dataset = folder / f"dataset-{split}-{image_size}"
    labels = folder / "stage_2_train.csv" if split == "train" else None
    ich3d.build_series([folder / f"stage_2_{split}"], dataset, labels_csv=labels,
                       options=ich3d.BuildOptions(image_size=image_size, workers=2, progress=False))
    return dataset


def prior_submission(run: RunFolder, sample: Path, out: InferFolder) -> InferFolder:
    """``out`` holding the submission of the run's training prevalence (mean over folds) for ``sample``'s images."""
    per_fold = json.loads(run.info.read_text())["per_fold"]
    prevalence = np.mean([list(fold["prevalence"].values()) for fold in per_fold.values()], axis=0)
    ids = pd.unique(pd.read_csv(sample)["ID"].str.rsplit("_", n=1).str[0])
    out.root.mkdir(parents=True, exist_ok=True)
    write_submission(out.submission, pd.DataFrame(prior_predictions(prevalence, len(ids)), index=ids), sample)
    return out


def score_cell(run: RunFolder, test: Path, test_dataset: Path, work: Path) -> dict[str, float]:
    """Test weighted log loss of a run and of its training prevalence prior on one setting's test split."""
    sample, labels = test / "stage_2_sample_submission.csv", SynthFolder(test).test_labels
    out = InferFolder(work / "pred")
    if not out.submission.is_file():
        ich3d.predict([run.root], out.root, dataset=test_dataset, sample_submission=sample, progress=False)
    prior = prior_submission(run, sample, InferFolder(work / "prior"))
    model, base = ich3d.score_submission(out.submission, labels), ich3d.score_submission(prior.submission, labels)
    return {"wll": model["weighted_log_loss"], "prior": base["weighted_log_loss"],
            "ratio": model["weighted_log_loss"] / base["weighted_log_loss"],
            "labels": {label: [model["log_loss"][label], base["log_loss"][label]] for label in LABELS}}


def run_matrix(args: Any) -> None:
    """Trains every (recipe, setting) and scores every cell, appending to ``cells.jsonl``; then the table."""
    sizes = tuple(map(int, args.size.split("/")))
    root = args.data / "matrix"
    root.mkdir(parents=True, exist_ok=True)
    cells_path = root / "cells.jsonl"
    done = {(c["recipe"], c["train"], c["test"]) for c in read_cells(cells_path)}
    recipes = {} if args.only_recipes else dict(RECIPES)
    recipes |= dict(parse_recipe(r) for r in args.recipe)
    columns = [*args.settings, *args.columns]
    folders = {s: synth_set(args.data, s, sizes, args.image_size) for s in columns}
    config = ich3d.load_config(args.config, args.overrides)
    size = config.data.image_size
    tests = {s: built(folders[s], "test", size) for s in columns}
    for train in args.train_settings or args.settings:
        dataset = built(folders[train], "train", size)
        for name, overrides in recipes.items():
            if all((name, train, t) in done for t in columns):
                continue
            work = root / "runs" / f"{args.config}-{name}" / train
            run = RunFolder(work / "run")
            began = time.perf_counter()
            if not run.info.is_file():
                ich3d.fit(dataset, run.root, ich3d.load_config(args.config, args.overrides + overrides))
            seconds = time.perf_counter() - began
            for test in columns:
                if (name, train, test) in done:
                    continue
                cell = {"recipe": name, "train": train, "test": test, "config": args.config,
                        "overrides": args.overrides + overrides, "size": args.size, "train_s": round(seconds)}
                cell |= score_cell(run, folders[test], tests[test], work / f"on-{test}")
                with cells_path.open("a") as stream:
                    stream.write(json.dumps(cell) + "\n")
                print(f"{name:>12} {train:>8} → {test:<8} {cell['ratio']:.3f} × prior", flush=True)
    table = matrix_tables(read_cells(cells_path), args)
    print(table)
    if args.write:
        write_section(table)


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value`` → (NAME, overrides of the config)."""
    name, _, rest = text.partition("=")
    return name, [item for item in rest.split(",") if item]


def _diagonal(group: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(diagonal, off-diagonal) ratios of some cells."""
    if group.empty:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    same = group["train"] == group["test"]
    return group[same]["ratio"], group[~same]["ratio"]


def _change(frame: pd.DataFrame, group: pd.DataFrame, reference: str, rows: list[str]) -> str:
    """A recipe's diagonal and off-diagonal means against ``reference``'s on the same training rows and
    seed (a recipe named ``...-s1`` is set against ``reference-s1``): relative changes, "–" for the
    reference itself or where it has no cells."""
    seed = re.search(r"-s\d+$", group["recipe"].iloc[0])
    reference += seed.group() if seed else ""
    same, other = _diagonal(group)
    base_same, base_other = _diagonal(frame[(frame["recipe"] == reference) & frame["train"].isin(rows)])
    if group["recipe"].iloc[0] == reference or base_other.empty:
        return "–"
    return f"{same.mean() / base_same.mean() - 1:+.0%}, {other.mean() / base_other.mean() - 1:+.0%}"


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The scored cells so far."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_table(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Per-label ratios (mean log loss of the model over mean of the prior), diagonal, off-diagonal and on
    each test-only column, of the recipes whose every cell was scored per label; no lines when none was."""
    if "labels" not in frame:
        return []
    parts = " / ".join(["diagonal", "off-diagonal", *(f"`{c}`" for c in columns)])
    lines = ["", f"Per label ({parts}: the model's mean log loss of the label over the prior's; "
             "`any` weighs twice in the total)", "", "| recipe | " + " | ".join(LABELS) + " |",
             "|---|" + "---|" * len(LABELS)]
    for recipe, group in frame.groupby("recipe", sort=False):
        if group["labels"].isna().any():
            continue
        same = (group["train"] == group["test"]).to_numpy()
        column = {c: (group["test"] == c).to_numpy() for c in columns}
        shifted = ~same & ~group["test"].isin(columns).to_numpy()
        losses = np.array([[cell[label] for label in LABELS] for cell in group["labels"]])  # (cells, 6, 2)

        def ratio(rows: np.ndarray) -> list[str]:
            if not rows.any():
                return ["–"] * len(LABELS)
            return [f"{v:.2f}" for v in losses[rows, :, 0].mean(0) / losses[rows, :, 1].mean(0)]

        parts_per_label = zip(*(ratio(rows) for rows in (same, shifted, *column.values())))
        lines.append(f"| {recipe} | " + " | ".join(" / ".join(p) for p in parts_per_label) + " |")
    return lines


def matrix_tables(cells: list[dict[str, Any]], args: Any) -> str:
    """The BENCHMARKS section: a summary row per recipe (set against ``before``, ``recipe`` and
    ``smoothing`` on the same rows and seed), the per-label ratios, then each recipe's matrix of ratios.
    The diagonal and off-diagonal figures cover ``args.settings``; the test-only ``args.columns`` (the
    second generator) get columns of their own."""
    columns = [*args.settings, *args.columns]
    full = pd.DataFrame([c for c in cells if c["train"] in args.settings and c["test"] in columns])
    frame = full[full["test"].isin(args.settings)]
    lines = [SECTION, "", f"`python scripts/bench_quality.py --matrix --size {args.size} --image-size "
             f"{args.image_size} --config {args.config}{''.join(' --set ' + o for o in args.overrides)}"
             f" --settings {' '.join(args.settings)} --columns {' '.join(args.columns)}` on a 2-core CPU VM "
             f"(updated {datetime.date.today().isoformat()}). "
             f"Each cell: test weighted log loss of the model trained on the row's generator setting, scored on "
             f"the column's test split, divided by that of the training prevalence prior (lower is better; "
             f"settings in scripts/shift_matrix.py). Diagonal: same setting; off-diagonal: shifted; "
             f"{', '.join(f'`{c}`' for c in args.columns)}: the second generator (scripts/other_phantom.py), "
             f"scored only.", "",
             "| recipe | trained on | diagonal mean | off-diagonal mean | off-diagonal median | off-diagonal worst | "
             + "".join(f"`{c}` mean, worst | " for c in args.columns)
             + "diagonal, off-diagonal mean vs `before` (same rows and seed) | vs `recipe` | vs `smoothing` | "
             "train s (mean) |",
             "|---|---|---|---|---|---|" + "---|" * len(args.columns) + "---|---|---|---|"]
    for recipe, group in frame.groupby("recipe", sort=False):
        rows = [s for s in args.settings if s in set(group["train"])]
        same, other = _diagonal(group)
        changes = [_change(frame, group, reference, rows) for reference in ("before", "recipe", "smoothing")]
        scored = full[(full["recipe"] == recipe)]
        extra = []
        for column in args.columns:
            ratios = scored[scored["test"] == column]["ratio"]
            extra.append(f"{ratios.mean():.3f}, {ratios.max():.3f}" if len(ratios) else "–")
        lines.append(f"| {recipe} | {', '.join(rows)} | {same.mean():.3f} | **{other.mean():.3f}** | "
                     f"{other.median():.3f} | {other.max():.3f} | {''.join(e + ' | ' for e in extra)}"
                     f"{' | '.join(changes)} | {group['train_s'].mean():.0f} |")
    lines += label_table(full, args.columns)
    for recipe, group in full.groupby("recipe", sort=False):
        grid = group.pivot(index="train", columns="test", values="ratio")
        cols = [s for s in columns if s in grid.columns]
        lines += ["", f"`{recipe}` (rows: trained on, columns: tested on)", "",
                  "| train \\ test | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for train in [s for s in args.settings if s in grid.index]:
            lines.append(f"| {train} | " + " | ".join(f"{grid.loc[train, c]:.3f}" if pd.notna(grid.loc[train, c])
                                                      else "–" for c in cols) + " |")
    return "\n".join(lines) + "\n"
