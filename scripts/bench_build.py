"""Benchmark of ``build_series`` against the seed notebook's per-file pipeline and the raw decode floor.

Usage: python scripts/bench_build.py --data /tmp/ich3d-bench [--workers 2] [--repeats 3] [--write]

The synthetic dataset (512x512 slices, >= 1,000 files) is generated once into --data and reused.
All three pipelines run in the same process run on the same files, after every file was read once
(warm page cache); each figure is the median of --repeats runs.

* seed: the seed notebook's ``_read`` per file, one process: pydicom read, 12-bit fix, three float
  windows, stacked, resized to S. cv2 is not installed here, so the resize is PIL's bilinear on each
  float channel (PIL antialiases when shrinking, cv2's INTER_LINEAR does not: slightly more work).
* raw floor: ``pydicom.dcmread(path).pixel_array`` per file, one process.
* build: ``build_series`` with --workers processes into a fresh folder (header pass, index, pixel
  pass, cache files written), wall time of the whole call.
* compressed: ``build_series`` on --compressed-files of those files stored as JPEG 2000 lossless
  (written once into DATA/j2k by ich3d.synth.formats) against the same files uncompressed, and one
  process's decode rate (``read_pixels``) of each, in the same run (docs/design.md §12).
* selection: in every build, the series selection and identity steps that ``make_index`` runs
  (``assign_image_ids``, ``assign_roles``, ``choose_series``) timed again on that build's header
  table, as a share of the whole build (docs/design.md §11).

--write replaces the "build-series" section of BENCHMARKS.md with the table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
from benchmarks_md import write_section  # noqa: E402  (scripts/ is on sys.path when run)
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from ich3d.constants import Status
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.dicom import read_header
from ich3d.dataset.identity import assign_image_ids
from ich3d.dataset.labels import join_labels
from ich3d.dataset.pixels import read_pixels
from ich3d.dataset.roles import SeriesRules, assign_roles, choose_series
from ich3d.dataset.series import order_slices, series_table
from ich3d.layout import DatasetFolder
from ich3d.synth.formats import write_compressed
from ich3d.synth.generate import make_synthetic_dataset
from ich3d.synth.plan import SynthConfig

SECTION = "## build-series"
RSNA_FILES = 752_803


def dataset_files(data: Path, min_files: int) -> list[Path]:
    """The readable files of the train split of the synthetic dataset in ``data`` (generated if absent).

    The seed and raw pipelines run on these; ``build_series`` gets the whole folder, with its corrupt
    and junk files, and is credited with all of them."""
    folder = data / "stage_2_train"
    if not folder.is_dir():
        n_series = max(1, min_files // 25 + 1)  # synth series hold ~34 slices here
        make_synthetic_dataset(data, SynthConfig(n_train_series=n_series, n_test_series=1, image_size=512,
                                                 min_slices=30, max_slices=50, seed=0))
    files = [path for path in sorted(folder.iterdir()) if read_header(path)["status"] == Status.OK]
    if len(files) < min_files:
        raise SystemExit(f"{folder} holds {len(files)} files, fewer than {min_files}: use another --data")
    return files


def seed_read(path: Path, size: int | None) -> np.ndarray:
    """The seed notebook's ``_read(path, (size, size))`` (In [31]-[33]), PIL standing in for cv2.resize;
    ``size`` None skips the resize (the seed's cost if cv2.resize were free)."""
    dcm = pydicom.dcmread(path)

    def window(dcm: pydicom.Dataset, center: int, width: int) -> np.ndarray:
        if (dcm.BitsStored == 12) and (dcm.PixelRepresentation == 0) and (int(dcm.RescaleIntercept) > -100):
            x = dcm.pixel_array + 1000
            x[x >= 4096] = x[x >= 4096] - 4096
            dcm.PixelData = x.tobytes()
            dcm.RescaleIntercept = -1000
        img = dcm.pixel_array * dcm.RescaleSlope + dcm.RescaleIntercept
        return np.clip(img, center - width // 2, center + width // 2)

    try:
        brain = (window(dcm, 40, 80) - 0) / 80
        subdural = (window(dcm, 80, 200) - (-20)) / 200
        soft = (window(dcm, 40, 380) - (-150)) / 380
        img = np.array([brain, subdural, soft]).transpose(1, 2, 0)
    except Exception:  # noqa: BLE001 - as the seed does
        img = np.zeros((size or 512, size or 512, 3))
    if size is None:
        return img
    channels = [np.asarray(Image.fromarray(img[..., c].astype(np.float32)).resize((size, size), Image.BILINEAR))
                for c in range(3)]
    return np.stack(channels, axis=-1)


def raw_read(path: Path, size: int) -> np.ndarray:
    """The floor: pydicom read and decode of the pixel bytes."""
    return pydicom.dcmread(path).pixel_array


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rates(n: int, start: tuple[float, float]) -> tuple[float, float]:
    """(files per wall second, files per CPU second) since ``start``."""
    wall, cpu = _clock()
    return n / (wall - start[0]), n / max(cpu - start[1], 1e-9)


def time_per_file(fn, files: list[Path], size: int | None) -> tuple[float, float]:
    start = _clock()
    for path in files:
        fn(path, size)
    return _rates(len(files), start)


def time_build(folder: Path, size: int, workers: int) -> tuple[tuple[float, float], dict]:
    """(files per wall and CPU second, the build's summary with ``selection_s`` added: the selection and
    identity steps of ``make_index`` timed again on this build's header table)."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as temp:
        start = _clock()
        summary = build_series([folder], Path(temp) / "dataset",
                               options=BuildOptions(image_size=size, workers=workers, progress=False))
        rates = _rates(summary["n_files"], start)
        summary["selection_s"] = selection_seconds(pd.read_parquet(DatasetFolder(Path(temp) / "dataset").headers))
        return rates, summary


def selection_seconds(header: pd.DataFrame) -> float:
    """Seconds of the steps ``make_index`` adds for identity and series selection (image keys with the
    duplicate check, roles, the per-study choice), on ``header``; the steps between them (labels,
    ordering, series table) are run untimed, as make_index runs them."""
    began = time.perf_counter()
    slices = assign_image_ids(header)
    spent = time.perf_counter() - began
    slices = order_slices(join_labels(slices, None)[0])
    table = series_table(slices)
    began = time.perf_counter()
    choose_series(assign_roles(table), SeriesRules())
    return spent + time.perf_counter() - began


def compressed_files(files: list[Path], data: Path, n: int) -> tuple[Path, Path]:
    """Folders holding the first ``n`` files uncompressed and as JPEG 2000 lossless (written once)."""
    plain, j2k = data / "plain", data / "j2k"
    if not j2k.is_dir() or len(list(j2k.iterdir())) != n:
        for folder in (plain, j2k):
            if folder.is_dir():
                for path in folder.iterdir():
                    path.unlink()
        plain.mkdir(exist_ok=True)
        for path in files[:n]:
            (plain / path.name).write_bytes(path.read_bytes())
        write_compressed(sorted(plain.iterdir()), j2k, JPEG2000Lossless)
    return plain, j2k


def time_decode(folder: Path) -> tuple[float, float]:
    """One process's ``read_pixels`` rate over the files of ``folder`` (headers read before the clock)."""
    rows = [SimpleNamespace(**read_header(path)) for path in sorted(folder.iterdir())]
    start = _clock()
    for row in rows:
        read_pixels(row)
    return _rates(len(rows), start)


def run(data: Path, size: int, workers: int, repeats: int, min_files: int, n_compressed: int) -> dict:
    files = dataset_files(data, min_files)
    plain, j2k = compressed_files(files, data, n_compressed)
    for path in [*files, *j2k.iterdir()]:  # warm the page cache
        path.read_bytes()
    names = ("seed", "seed_no_resize", "raw", "build", "build_plain", "build_j2k", "decode_plain", "decode_j2k")
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    phases: list[dict] = []
    loads = [os.getloadavg()[0]]
    for _ in range(repeats):
        rates["seed"].append(time_per_file(seed_read, files, size))
        rates["seed_no_resize"].append(time_per_file(seed_read, files, None))
        rates["raw"].append(time_per_file(raw_read, files, size))
        rate, summary = time_build(files[0].parent, size, workers)
        rates["build"].append(rate)
        phases.append(summary["timings"] | {"selection_s": summary["selection_s"]})
        for name, folder in (("plain", plain), ("j2k", j2k)):
            rates[f"build_{name}"].append(time_build(folder, size, workers)[0])
            rates[f"decode_{name}"].append(time_decode(folder))
        loads.append(os.getloadavg()[0])
    wall = {name: statistics.median(r[0] for r in values) for name, values in rates.items()}
    cpu = {name: statistics.median(r[1] for r in values) for name, values in rates.items()}
    timing = {key: statistics.median(p[key] for p in phases) for key in phases[0]}
    shares = [p["selection_s"] / p["total_s"] for p in phases]
    return {"files": len(files), "size": size, "workers": workers, "repeats": repeats, "wall": wall, "cpu": cpu,
            "runs": rates, "timings": timing, "load": (min(loads), max(loads)),
            "n_compressed": len(list(j2k.iterdir())), "selection_share": (statistics.median(shares), max(shares))}


def table(result: dict) -> str:
    w, c = result["wall"], result["cpu"]
    rows = [("seed notebook per-file pipeline (pydicom, 12-bit fix, 3 float windows, PIL bilinear resize)", 1, "seed"),
            ("same without the resize (bound for a free cv2.resize)", 1, "seed_no_resize"),
            ("raw floor: pydicom read + decode of the pixel bytes", 1, "raw"),
            ("`build_series` (headers, index, pixel pass, cache files written)", result["workers"], "build")]
    machine = f"{os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    load = "{:.1f}-{:.1f}".format(*result["load"])
    lines = [
        f"Machine: {machine}, {datetime.date.today().isoformat()}; {result['files']} synthetic 512x512 int16 files "
        f"(ich3d.synth.generate), S = {result['size']}, page cache warm, median of {result['repeats']} runs. Load average "
        f"during the runs {load}: other jobs shared the 2 cores, so wall-clock rates are pessimistic, most of all "
        f"for the 2-process build; files per CPU-second (all processes) are less affected by the sharing.",
        "",
        "| pipeline | processes | files/s (wall) | files per CPU-s | build speed-up (wall) | build speed-up (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for label, processes, key in rows:
        speedup = ("-", "-") if key == "build" else (f"{w['build'] / w[key]:.1f}x", f"{c['build'] / c[key]:.1f}x")
        lines.append(f"| {label} | {processes} | {w[key]:.0f} | {c[key]:.0f} | {speedup[0]} | {speedup[1]} |")
    seed, bound, floor = w["build"] / w["seed"], w["build"] / w["seed_no_resize"], w["build"] / w["raw"]
    minutes = RSNA_FILES / c["build"] / 60  # CPU-minutes
    share, worst = result["selection_share"]
    lines += [
        "",
        "build phases (s, median): " + ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()),
        "",
        f"Series selection and identity checks (`assign_image_ids`, `assign_roles`, `choose_series`, timed again "
        f"on each build's header table): {100 * share:.1f} % of the whole build (median; worst run "
        f"{100 * worst:.1f} %); target < 5 %: {_met(worst < 0.05)}.",
        "",
        *compressed_table(result),
        "",
        f"Targets (wall): build >= 5x seed: {_met(seed >= 5)} ({seed:.1f}x; {bound:.1f}x against the seed without "
        f"its resize); build >= 0.5x raw floor: {_met(floor >= 0.5)} ({floor:.2f}x).",
        "",
        f"Projection (not measured): at {1e3 / c['build']:.2f} ms of CPU per file, RSNA stage 2 train "
        f"({RSNA_FILES:,} files) needs {RSNA_FILES / c['build'] / 3600:.2f} CPU-hours: about "
        f"{minutes / 2:.0f} min on 2 free cores, {minutes / 16:.0f} min on 16, "
        f"if the workers scale linearly (the ~0.2 s fixed cost per build is included here, so this is pessimistic).",
    ]
    return "\n".join(lines)


def compressed_table(result: dict) -> list[str]:
    """The rows of the compressed-input comparison (same files, same run)."""
    w, c, n = result["wall"], result["cpu"], result["n_compressed"]
    rows = [(f"`build_series`, {n} files uncompressed", result["workers"], "build_plain"),
            (f"`build_series`, the same {n} files as JPEG 2000 lossless", result["workers"], "build_j2k"),
            ("`read_pixels` per file, uncompressed (one `readinto`)", 1, "decode_plain"),
            ("`read_pixels` per file, JPEG 2000 lossless (pylibjpeg-openjpeg)", 1, "decode_j2k")]
    lines = ["Compressed input (512x512 int16, JPEG 2000 lossless written by `ich3d.synth.formats.write_compressed`), "
             "same run:", "", "| input | processes | files/s (wall) | files per CPU-s |", "|---|---|---|---|"]
    lines += [f"| {label} | {processes} | {w[key]:.0f} | {c[key]:.0f} |" for label, processes, key in rows]
    lines += ["", f"JPEG 2000 decoding costs {c['decode_plain'] / c['decode_j2k']:.0f}x the CPU of an uncompressed "
                  f"read per file; the build on J2K input runs at {w['build_j2k'] / w['build_plain']:.2f}x the "
                  f"uncompressed rate (wall). The decode happens in the pixel pass's workers."]
    return lines


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder for the synthetic dataset (reused).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-files", type=int, default=1000)
    parser.add_argument("--compressed-files", type=int, default=100, help="Files compared as JPEG 2000.")
    parser.add_argument("--write", action="store_true", help="Write the table into BENCHMARKS.md.")
    args = parser.parse_args()
    result = run(args.data, args.image_size, args.workers, args.repeats, args.min_files, args.compressed_files)
    body = table(result)
    print(body)
    if args.write:
        write_section(f"{SECTION}\n\n`python scripts/bench_build.py --data DIR --workers 2 --write`\n\n{body}\n")


if __name__ == "__main__":
    main()
