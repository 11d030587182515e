"""Grad-CAM quality on the demo: the pointing game and the heatmap mass inside the lesion masks.

Usage: python scripts/bench_explain.py --demo DIR [--tolerance 5 15] [--write]

DIR is the folder of ``ich3d demo --out DIR`` (its model, its held-out test split built from DICOM and
the generator's lesion masks in ``DIR/rsna/masks``). Every readable test slice labelled positive is
explained (``ich3d.app.explain.Explainer``: through the whole sequence model, on the original pixel grid)
and scored against its mask, for ``any`` (the mask of every subtype) and for each subtype (that
subtype's heatmap and bit, on the slices labelled with it):

* hit rate: the heatmap's maximum lies within a tolerance (pixels) of the mask (the pointing game);
  a point drawn at random in the head hits with the dilated mask's share of the head;
* mass share: the heatmap's sum inside the mask over its total; a heatmap spread evenly over the head
  gets the mask's share of the head (the head: pixels above -300 HU).

The default settings (``CamSettings()``) get the per-label table; ``any`` is also scored for the
alternatives they were chosen over (the last feature map, the local gradient, Grad-CAM weighting).
--write replaces the "## Grad-CAM pointing game" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from benchmarks_md import write_section  # scripts/ is on sys.path when run

from ich3d.constants import LABELS
from ich3d.dataset.labels import read_labels
from ich3d.app.explain import Explainer, dilate, pointing_game
from ich3d.inference.gradcam import CamSettings
from ich3d.layout import SynthFolder
from ich3d.synth.lesions import MASK_BITS
from ich3d.synth.series import load_mask

SECTION = "## Grad-CAM pointing game"
HEAD_HU = -300.0


def positive_slices(dataset: Path, labels: Path) -> pd.DataFrame:
    """The readable test slices labelled positive for ``any``, with their six labels."""
    from ich3d.dataset.index import load_index

    slices, _ = load_index(dataset)
    truth = read_labels(labels).labels
    slices = slices.drop(columns=list(truth.columns)).join(truth, on="image_id")
    return slices[(slices["status"] == "ok") & slices["series_uid"].notna() & (slices["label_any"] == 1)]


def score(explainer: Explainer, slices: pd.DataFrame, synth: SynthFolder, tolerances: list[float]) -> pd.DataFrame:
    """One row per (slice, label labelled positive there): hits and random hits per tolerance, mass
    share, area share, whether the map is all zero."""
    rows = []
    explained = explainer.explain(slices["image_id"].tolist())
    masks = {uid: load_mask(synth.mask_file(uid)) for uid in slices["series_uid"].unique()}
    for (_, row), explanation in zip(slices.iterrows(), explained):
        volume, ids = masks[row["series_uid"]]
        bits = volume[int(np.flatnonzero(ids == row["image_id"])[0])]
        head = explanation.hu > HEAD_HU
        for j, name in enumerate(LABELS):
            if row[f"label_{name}"] != 1:
                continue
            mask = bits != 0 if name == "any" else (bits & MASK_BITS[name]) != 0
            heat = explanation.heatmaps[j]
            total = float(heat.sum())
            entry = {"label": name, "mass_share": float(heat[mask].sum() / total) if total > 0 else 0.0,
                     "area_share": float((mask & head).sum() / head.sum()), "empty": int(total == 0)}
            for tolerance in tolerances:
                entry[f"hit_{tolerance:g}"] = pointing_game(heat, mask, tolerance)
                entry[f"random_{tolerance:g}"] = float((dilate(mask, tolerance) & head).sum() / head.sum())
            rows.append(entry)
    return pd.DataFrame(rows)


def describe(settings: CamSettings) -> str:
    side = "the last feature map" if settings.min_side == 1 else f"the last map of >= {settings.min_side} cells a side"
    path = (f"gradient integrated from the missing slice ({settings.steps} steps)" if settings.steps
            else "local gradient")
    return f"{settings.weighting}, {side}, {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="The --out folder of `ich3d demo`.")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[5.0, 15.0], help="Pixels of the original grid.")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    synth = SynthFolder(args.demo / "rsna")
    dataset, run = args.demo / "predictions" / "dataset", args.demo / "run"
    slices = positive_slices(dataset, synth.test_labels)
    tol = [f"{t:g}" for t in args.tolerance]
    compared = [CamSettings(), CamSettings(weighting="gradcam"), CamSettings(steps=0),
                CamSettings(min_side=1, steps=0, weighting="gradcam")]
    hits = " | ".join(f"hit rate ({t} px) | random point ({t} px)" for t in tol)
    lines = [f"| settings | {hits} | mass in the mask | mask share of the head | ms per slice |",
             "|---|" + "---:|" * (2 * len(tol) + 3)]
    for k, settings in enumerate(compared):
        began = time.perf_counter()
        table = score(Explainer([run], dataset, device="cpu", settings=settings), slices, synth, args.tolerance)
        ms = (time.perf_counter() - began) / len(slices) * 1000
        if k == 0:
            default = table.groupby("label", sort=False).mean(numeric_only=True).assign(
                slices=table.groupby("label", sort=False).size())
        any_ = table[table["label"] == "any"].mean(numeric_only=True)
        cells = " | ".join(f"{any_[f'hit_{t}']:.3f} | {any_[f'random_{t}']:.3f}" for t in tol)
        lines.append(f"| {'**' if k == 0 else ''}{describe(settings)}{'** (default)' if k == 0 else ''} | {cells} | "
                     f"{any_['mass_share']:.3f} | {any_['area_share']:.3f} | {ms:.0f} |")
        print(lines[-1], flush=True)
    labels = [f"| label | slices | {hits} | mass in the mask | mask share of the head | empty maps |",
              "|---|---:|" + "---:|" * (2 * len(tol) + 3)]
    for label, r in default.iterrows():
        cells = " | ".join(f"{r[f'hit_{t}']:.3f} | {r[f'random_{t}']:.3f}" for t in tol)
        labels.append(f"| {label} | {int(r['slices'])} | {cells} | {r['mass_share']:.3f} | {r['area_share']:.3f} "
                      f"| {r['empty'] * r['slices']:.0f} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (f"{SECTION}\n\n`python scripts/bench_explain.py --demo DIR --tolerance {' '.join(tol)} --write` after "
            f"`ich3d demo --out DIR` — machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"CPU (one torch thread while explaining), torch {torch.__version__}, date {datetime.date.today()}, "
            f"load average at the end {load}. The demo's model (cpu_small: `small` encoder at 128 px, GRU head) on "
            f"its {len(slices)} readable test slices labelled positive (256 px synthetic DICOM, about 0.9 mm "
            "pixels), against the generator's lesion masks (`rsna/masks/`). Hit: the heatmap's maximum lies within "
            "the tolerance of the mask (15 px is the pointing game's usual tolerance at 224 px); a random point in "
            "the head hits with the dilated mask's share of the head. Mass: the heatmap's share inside the mask; "
            "an even spread over the head gets the mask's share of the head.\n\n"
            "`any` (heatmap of p(any), mask of every subtype), by settings:\n\n" + "\n".join(lines)
            + "\n\nThe default settings by label (a subtype: its own heatmap and mask bit, on the slices labelled "
            "with it):\n\n" + "\n".join(labels) + "\n")
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
